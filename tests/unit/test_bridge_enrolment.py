"""A MailConfig with googleServiceAccount: the API's rules, the credentials kcmail derives for the bridge, its
registry entry, and a whole pass that writes the bridge (never the key) into the realm."""

from __future__ import annotations

import json
from typing import Any

import pytest
from reconcile_fakes import NOW, FakeClients, FakeKeycloak, FakeKube, mailconfig, ready

from kcmail.bridge import enrolment, registry
from kcmail.controller import Reconciler, secret_is_news
from kcmail.devenv.google_oauth import key_file
from kcmail.kube import Secret, secret_version
from kcmail.observe import Inputs
from kcmail.options import BridgeOptions
from kcmail.spec import GOOGLE_MAIL_SCOPE, Credentials, MailConfigSpec, SpecError
from kcmail.store import MailConfigObject

pytestmark = pytest.mark.unit

# Made at run time (no private key is committed), naming a token endpoint of the tenant's own.
KEY = {**key_file("mailer@p.iam.gserviceaccount.com", "1", "https://attacker.example/token")[0],
       "private_key_id": "k1"}
PEM = KEY["private_key"]
MAILBOX = "no-reply@workspace.example"
GOOGLE_AUTH = {"type": "XOAUTH2", "username": MAILBOX,
               "xoauth2": {"googleServiceAccount": {"keySecretRef": {"name": "gmail-key"}}}}
BASE = {"connectionRef": {"kind": "KeycloakConnection", "name": "kc"}, "realm": "acme",
        "smtp": {"host": "smtp.gmail.com"}, "sender": {"from": MAILBOX}}
OPTIONS = BridgeOptions("https://kcmail-bridge.kcmail.svc:8443/token", "kcmail", "kcmail-bridge-registry")


def test_the_google_form_reads_the_key_reference_and_the_gmail_scope():
    spec = MailConfigSpec.parse({**BASE, "auth": GOOGLE_AUTH})
    assert spec.auth.xoauth2 is not None
    assert spec.auth.xoauth2.google_key_ref is not None
    assert (spec.auth.xoauth2.google_key_ref.name, spec.auth.xoauth2.google_key_ref.key) == ("gmail-key", "key.json")
    assert spec.auth.xoauth2.scope == GOOGLE_MAIL_SCOPE
    assert spec.auth.secret_name == "gmail-key"  # its rotation wakes the MailConfig


@pytest.mark.parametrize(("auth", "words"), [
    ({**GOOGLE_AUTH, "xoauth2": {**GOOGLE_AUTH["xoauth2"], "tokenURL": "https://t"}}, "either googleServiceAccount"),
    ({**GOOGLE_AUTH, "xoauth2": {**GOOGLE_AUTH["xoauth2"], "scope": "openid"}}, "https://mail.google.com/"),
    ({**GOOGLE_AUTH, "username": "no-reply"}, "Workspace mailbox"),
])
def test_the_google_form_refuses_what_the_crd_refuses(auth, words):
    with pytest.raises(SpecError, match=words):
        MailConfigSpec.parse({**BASE, "auth": auth})


def test_the_derived_secret_is_stable_per_client_and_differs_across_clients_and_seeds():
    seed = bytes(range(32))
    client = enrolment.client_id("uid-1", MAILBOX, "k1")
    secret = enrolment.client_secret(seed, client)
    assert secret == enrolment.client_secret(seed, client)
    assert secret != enrolment.client_secret(seed, enrolment.client_id("uid-2", MAILBOX, "k1"))
    assert secret != enrolment.client_secret(bytes(32), client)
    assert len(secret) >= 43  # 256 bits


def test_a_mailbox_and_a_key_are_a_client_of_their_own():
    assert enrolment.client_id("uid-1", MAILBOX, "k1") == enrolment.client_id("uid-1", MAILBOX.upper(), "k1")
    other = enrolment.client_id("uid-1", "alerts@workspace.example", "k1")
    assert other != enrolment.client_id("uid-1", MAILBOX, "k1")
    assert enrolment.client_id("uid-1", MAILBOX, "k2") != enrolment.client_id("uid-1", MAILBOX, "k1")
    data = {enrolment.entry_key(other): "{}", enrolment.entry_key(enrolment.client_id("uid-1", MAILBOX, "k1")): "{}",
            enrolment.entry_key(enrolment.client_id("uid-10", MAILBOX, "k1")): "{}", registry.SEED_KEY: "00"}
    assert len(enrolment.entries_of("uid-1", data)) == 2


def test_a_key_that_is_not_googles_is_refused_without_quoting_it():
    assert registry.parse_key(json.dumps(KEY)) == KEY
    for text in ("hunter2-not-json", json.dumps({**KEY, "type": "authorized_user"}),
                 json.dumps({**KEY, "private_key": "hunter2"})):
        problem = registry.parse_key(text)
        assert isinstance(problem, str)
        assert "hunter2" not in problem


def test_an_entry_is_what_the_bridge_reads_for_that_mailconfig_only():
    obj = mailconfig(auth=GOOGLE_AUTH)
    client_id = enrolment.client_id(obj.uid, MAILBOX, "k1")
    text = enrolment.entry(obj, client_id, MAILBOX, KEY, "the-secret")
    document, problems = registry.secret_document({enrolment.entry_key(client_id): text, registry.SEED_KEY: "00"})
    clients, more = registry.parse(document)
    assert problems == more == []
    client = clients[client_id]
    assert client.mailbox == MAILBOX
    assert client.secret_sha256 == registry.secret_digest("the-secret")
    assert "the-secret" not in text


def test_a_pass_without_a_bridge_says_the_bridge_is_missing():
    spec = MailConfigSpec.parse({**BASE, "auth": GOOGLE_AUTH})
    inputs = enrolment.unbridged(Inputs(spec=spec, credentials=Credentials("v", service_account_key="{}")))
    assert inputs.credentials.reason.value == "BridgeNotConfigured"  # type: ignore[union-attr]
    # Other MailConfigs pass as they are.
    plain = Inputs(spec=MailConfigSpec.parse({**BASE, "auth": {"type": "None"}}), credentials=Credentials(""))
    assert enrolment.unbridged(plain) is plain


def test_other_clients_go_only_once_the_realm_holds_the_current_generation():
    obj = MailConfigObject(**{**mailconfig().__dict__, "generation": 3})
    applied = {"type": "Applied", "status": "True"}
    assert enrolment.settled(obj, {"observedGeneration": 3, "conditions": [applied]})
    # A held change: the realm still holds the old settings, and with them the old client.
    held = {"type": "Applied", "status": "False", "reason": "ChangeHeld"}
    assert not enrolment.settled(obj, {"observedGeneration": 3, "conditions": [held]})
    assert not enrolment.settled(obj, {"observedGeneration": 2, "conditions": [applied]})


@pytest.mark.parametrize(("policy", "suspend", "applied", "withdrawn"), [
    ("Clear", False, True, True),
    ("Retain", False, True, False),   # the realm keeps sending through the bridge
    ("Clear", True, True, False),     # a suspended MailConfig clears nothing
    ("Retain", False, False, True),   # never written: no realm holds its credentials
])
def test_a_deleted_mailconfigs_entry_goes_unless_its_realm_keeps_using_it(policy, suspend, applied, withdrawn):
    spec = MailConfigSpec.parse({**BASE, "auth": GOOGLE_AUTH, "deletionPolicy": policy, "suspend": suspend})
    obj = MailConfigObject(**{**mailconfig().__dict__,
                              "status": {"lastAppliedTime": "2026-12-06T10:00:00Z"} if applied else {}})
    assert enrolment.withdrawn_on_deletion(obj, spec) is withdrawn


def test_a_secret_event_is_news_against_the_part_of_the_applied_version_that_is_the_secrets():
    applied = secret_version("uid-k", "3") + enrolment.BRIDGE_VERSION_MARK + "uid-r"
    assert not secret_is_news("uid-k", "3", applied)
    assert secret_is_news("uid-k", "4", applied)


class BridgeKube(FakeKube):
    """The tenant's key Secret, and the registry Secret in kcmail's namespace, created and patched."""

    def __init__(self, key: str) -> None:
        super().__init__()
        self.key = key
        self.registry: dict[str, str] | None = None
        self.patches: list[dict[str, Any]] = []

    async def secret(self, namespace: str, name: str) -> Secret | None:  # type: ignore[override]
        if (namespace, name) == ("kcmail", "kcmail-bridge-registry"):
            return None if self.registry is None else Secret(namespace, name, "uid-r", "1", dict(self.registry))
        if name == "gmail-key":
            return Secret(namespace, name, "uid-k", "7", {"key.json": self.key})
        return await super().secret(namespace, name)

    async def create_secret(self, namespace: str, name: str, string_data: dict[str, str], *,
                            labels: dict[str, str]) -> None:
        self.registry = dict(string_data)

    async def patch_secret(self, namespace: str, name: str, patch: dict[str, Any]) -> Secret:
        import base64

        self.patches.append(patch)
        assert self.registry is not None
        for key, value in patch["data"].items():
            if value is None:
                self.registry.pop(key, None)
            else:
                self.registry[key] = base64.b64decode(value).decode()
        return Secret(namespace, name, "uid-r", "2", dict(self.registry))


async def test_a_pass_writes_the_bridge_and_kcmails_credentials_into_the_realm_and_never_the_key():
    kube, keycloak = BridgeKube(json.dumps(KEY)), FakeKeycloak()
    reconciler = Reconciler(kube, FakeClients(keycloak), now=lambda: NOW,  # type: ignore[arg-type]
                            bridge=enrolment.Enrolment(kube, OPTIONS))  # type: ignore[arg-type]
    obj = mailconfig(auth=GOOGLE_AUTH)
    result = await reconciler.reconcile(obj)
    assert result.wrote, ready(result)
    smtp = keycloak.realm["smtpServer"]
    client = enrolment.client_id(obj.uid, MAILBOX, "k1")
    assert smtp["authTokenUrl"] == OPTIONS.url
    assert smtp["authTokenScope"] == GOOGLE_MAIL_SCOPE
    assert smtp["authTokenClientId"] == client
    assert kube.registry is not None
    seed = bytes.fromhex(kube.registry[registry.SEED_KEY])
    assert smtp["authTokenClientSecret"] == enrolment.client_secret(seed, client)
    assert PEM.splitlines()[1] not in json.dumps(keycloak.writes)
    assert PEM.splitlines()[1] not in json.dumps(result.status)
    entry = json.loads(kube.registry[enrolment.entry_key(client)])
    assert (entry["mailbox"], entry["serviceAccountKey"]) == (MAILBOX, KEY)
    assert result.status["appliedSecretVersion"] == f"uid-k/7{enrolment.BRIDGE_VERSION_MARK}uid-r"
    # The next pass finds its entry as it was: nothing written again.
    await reconciler.reconcile(obj)
    assert len(kube.patches) == 1
    # Another mailbox is another client; the first goes once the realm holds the new one.
    obj = mailconfig(auth={**GOOGLE_AUTH, "username": "alerts@workspace.example"})
    await reconciler.reconcile(obj)
    alerts = enrolment.client_id(obj.uid, "alerts@workspace.example", "k1")
    assert keycloak.realm["smtpServer"]["authTokenClientId"] == alerts
    assert enrolment.entries_of(obj.uid, kube.registry) == [enrolment.entry_key(alerts)]


async def test_a_broken_key_is_reported_and_nothing_is_enrolled():
    kube, keycloak = BridgeKube("hunter2"), FakeKeycloak()
    reconciler = Reconciler(kube, FakeClients(keycloak), now=lambda: NOW,  # type: ignore[arg-type]
                            bridge=enrolment.Enrolment(kube, OPTIONS))  # type: ignore[arg-type]
    result = await reconciler.reconcile(mailconfig(auth=GOOGLE_AUTH))
    status, reason, message = ready(result)
    assert (status, reason) == ("False", "InvalidSecretValue")
    assert "key.json" in message
    assert "hunter2" not in message
    assert kube.patches == []
    assert keycloak.writes == []
