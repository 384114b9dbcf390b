"""What the operator does for the token bridge (``kcmail run --bridge-url --bridge-registry``).

A MailConfig with ``auth.xoauth2.googleServiceAccount`` sends through the bridge: Keycloak presents client
credentials to the bridge, and the bridge uses the service account's key with Google. kcmail makes those
client credentials itself, so no person ever holds them:

- the client id is ``kcmail-<uid>-<digest of the mailbox and key id>`` and the secret an HMAC of that id
  under a random seed that only the registry Secret holds. Nothing is stored per MailConfig that could
  drift from it: kcmail derives the same secret on every pass, writes it into the realm and presents it in
  its own probe. A MailConfig made again under the same name has a new uid, so new credentials; deleting
  the registry Secret gives every MailConfig new ones (each realm is written again at its next pass).
- each client's entry in the registry Secret (one data key per client, patched on its own, so shards and
  passes never overwrite each other) holds the secret's digest, the mailbox (``auth.username``) and a copy
  of the key: the bridge reads that one Secret and no other. The key itself stays in the tenant's Secret
  and this registry, never in Keycloak, status or a log.
- a new mailbox or a rotated key is a new client, which the bridge looks up afresh when Keycloak or the probe
  first present it; the realm keeps the old client until it holds the new settings (a held change sends as
  before), and then the MailConfig's other clients go (:func:`settled`). Rotating the key rotates the
  credentials Keycloak presents to the bridge with it.

The registry Secret lives in the operator's namespace: a tenant can read neither it nor another tenant's
entry, and a tenant's key reaches the bridge only under that tenant's own MailConfig's uid and mailbox.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import logging
import secrets
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from kcmail.bridge.registry import SEED_KEY, parse_key, secret_digest
from kcmail.conditions import ConditionType, Failure, Reason, condition_true
from kcmail.kube import Kube, KubeError, Secret
from kcmail.observe import Inputs, kube_failure
from kcmail.options import BridgeOptions
from kcmail.spec import Credentials, DeletionPolicy, MailConfigSpec

if TYPE_CHECKING:
    from kcmail.store import MailConfigObject

log = logging.getLogger(__name__)

SEED_BYTES = 32
# What appliedSecretVersion carries after the Secret's version when the realm holds bridge credentials.
BRIDGE_VERSION_MARK = "+bridge:"


def _prefix(uid: str) -> str:
    return f"kcmail-{uid}-"


def client_id(uid: str, mailbox: str, key_id: str) -> str:
    """The client the MailConfig ``uid`` is to the bridge for ``mailbox`` with the key ``key_id`` (pure).

    The mailbox and the key are part of it: a new mailbox or a rotated key is a new client, with a secret of
    its own, which the bridge looks up afresh, while the realm keeps its own client (and the old mailbox or
    key) until it holds the new settings.
    """
    digest = hashlib.sha256(f"{mailbox.casefold()}\n{key_id}".encode()).hexdigest()[:12]
    return f"{_prefix(uid)}{digest}"


def client_secret(seed: bytes, client: str) -> str:
    """The secret Keycloak presents to the bridge as ``client`` (pure; 256 bits)."""
    digest = hmac.new(seed, f"kcmail-bridge-client/{client}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def entry_key(client: str) -> str:
    return f"{client}.json"


def entries_of(uid: str, data: Mapping[str, str]) -> list[str]:
    """The registry's data keys that hold the MailConfig ``uid``'s clients (pure)."""
    return sorted(name for name in data if name.startswith(_prefix(uid)) and name.endswith(".json"))


def entry(obj: MailConfigObject, client: str, mailbox: str, key: Mapping[str, Any], secret: str) -> str:
    """The registry entry of one MailConfig's client, as the bridge reads it (pure; stable text, so unchanged
    entries are not written again)."""
    return json.dumps({"clientID": client, "mailConfig": f"{obj.namespace}/{obj.name}",
                       "mailbox": mailbox, "secretSha256": secret_digest(secret), "serviceAccountKey": dict(key)},
                      sort_keys=True, separators=(",", ":"))


def seed_of(registry: Secret) -> bytes | None:
    text = registry.data.get(SEED_KEY, "")
    try:
        seed = bytes.fromhex(text)
    except ValueError:
        return None
    return seed if len(seed) >= SEED_BYTES else None


def uses_bridge(spec: MailConfigSpec) -> bool:
    return spec.auth.xoauth2 is not None and spec.auth.xoauth2.google_key_ref is not None


def unbridged(inputs: Inputs) -> Inputs:
    """The inputs of a pass when this kcmail runs without a bridge: a MailConfig that needs one fails."""
    if isinstance(inputs.spec, MailConfigSpec) and uses_bridge(inputs.spec) and inputs.credentials is not None:
        return dataclasses.replace(inputs, credentials=Failure(
            Reason.BRIDGE_NOT_CONFIGURED,
            "auth.xoauth2.googleServiceAccount needs kcmail's token bridge, and this kcmail runs without one "
            "(the chart's bridge.enabled; kcmail run --bridge-url and --bridge-registry)", needs_person=True))
    return inputs


class Enrolment:
    """The registry Secret, as this process last read it, and the writes of its MailConfigs' entries."""

    def __init__(self, kube: Kube, options: BridgeOptions) -> None:
        self._kube = kube
        self.options = options
        self._last: Secret | None = None
        self._read = False  # whether _last is what the API server said (None: no such Secret)

    @property
    def where(self) -> str:
        return f"Secret {self.options.namespace}/{self.options.secret}"

    async def enrol(self, obj: MailConfigObject, inputs: Inputs) -> Inputs:
        """The inputs with the bridge's URL and this MailConfig's bridge credentials, its entry written first;
        or with the failure met. Inputs that read no credentials pass unchanged."""
        spec, credentials = inputs.spec, inputs.credentials
        if not isinstance(spec, MailConfigSpec) or not isinstance(credentials, Credentials) or not uses_bridge(spec):
            return inputs
        assert spec.auth.xoauth2 is not None
        key = parse_key(credentials.service_account_key)
        if isinstance(key, str):
            ref = spec.auth.xoauth2.google_key_ref
            assert ref is not None
            return dataclasses.replace(inputs, credentials=Failure(
                Reason.INVALID_SECRET_VALUE,
                f"the value of key {ref.key!r} of Secret {obj.namespace}/{ref.name} {key}", needs_person=True))
        try:
            registry = await self._registry()
            seed = seed_of(registry)
            if seed is None:
                return dataclasses.replace(inputs, credentials=Failure(
                    Reason.BRIDGE_NOT_CONFIGURED,
                    f"the bridge's registry {self.where} has no usable seed: delete it and kcmail makes a new "
                    "one (every MailConfig using the bridge then gets new credentials)", needs_person=True))
            client = client_id(obj.uid, spec.auth.username, str(key["private_key_id"]))
            secret = client_secret(seed, client)
            document = entry(obj, client, spec.auth.username, key, secret)
            if registry.data.get(entry_key(client)) != document:
                await self._patch({entry_key(client): document})
                log.info("bridge registry: entry of %s/%s written (mailbox %s)", obj.namespace, obj.name,
                         spec.auth.username)
        except KubeError as error:
            return dataclasses.replace(inputs, credentials=kube_failure(error, f"write the bridge's registry "
                                                                                f"{self.where}"))
        bridged = dataclasses.replace(spec.auth.xoauth2, token_url=self.options.url)
        return dataclasses.replace(
            inputs, spec=dataclasses.replace(spec, auth=dataclasses.replace(spec.auth, xoauth2=bridged)),
            credentials=Credentials(secret_version=f"{credentials.secret_version}{BRIDGE_VERSION_MARK}{registry.uid}",
                                    client_id=client, client_secret=secret))

    async def prune(self, obj: MailConfigObject, keep: str | None = None) -> None:
        """Take the MailConfig's entries out of the registry (as last read), all but client ``keep``'s."""
        if not self._read:
            self._last = await self._kube.secret(self.options.namespace, self.options.secret)
            self._read = True
        if self._last is None:
            return
        stale = [name for name in entries_of(obj.uid, self._last.data)
                 if keep is None or name != entry_key(keep)]
        if stale:
            await self._patch(dict.fromkeys(stale))
            log.info("bridge registry: %d entries of %s/%s withdrawn", len(stale), obj.namespace, obj.name)

    async def _registry(self) -> Secret:
        """The registry Secret, made with a new seed when there is none."""
        found = await self._kube.secret(self.options.namespace, self.options.secret)
        if found is None:
            try:
                await self._kube.create_secret(self.options.namespace, self.options.secret,
                                               {SEED_KEY: secrets.token_hex(SEED_BYTES)},
                                               labels={"app.kubernetes.io/managed-by": "kcmail"})
                log.info("bridge registry: %s made, with a new seed", self.where)
            except KubeError as error:
                if error.status != 409:  # another process made it first: read theirs
                    raise
            found = await self._kube.secret(self.options.namespace, self.options.secret)
            if found is None:
                raise KubeError("GET", self.where, 404, "the registry Secret vanished right after it was made")
        self._last, self._read = found, True
        return found

    async def _patch(self, data: Mapping[str, str | None]) -> None:
        encoded = {name: None if text is None else base64.b64encode(text.encode()).decode()
                   for name, text in data.items()}
        self._last = await self._kube.patch_secret(self.options.namespace, self.options.secret, {"data": encoded})
        self._read = True


def settled(obj: MailConfigObject, status: Mapping[str, Any]) -> bool:
    """Whether the pass that ended with ``status`` left the realm holding the current spec's settings: then
    the MailConfig's other bridge clients serve no realm (a held change leaves the realm on the old one)."""
    return (condition_true(status, ConditionType.APPLIED.value)
            and status.get("observedGeneration", obj.status.get("observedGeneration")) == obj.generation)


def withdrawn_on_deletion(obj: MailConfigObject, spec: MailConfigSpec) -> bool:
    """Whether a deleted MailConfig's entry goes: unless the realm keeps sending through the bridge, which
    ``Retain`` and a suspended MailConfig leave it doing once kcmail has written it (docs/deletion.md)."""
    keeps_realm = spec.deletion_policy is DeletionPolicy.RETAIN or spec.suspend
    return not (keeps_realm and obj.status.get("lastAppliedTime"))
