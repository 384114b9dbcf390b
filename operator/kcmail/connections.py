"""KeycloakConnection and ClusterKeycloakConnection: who may use them, how to reach Keycloak, and one
admin client per connection kept for the operator's lifetime.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hashlib
import ssl
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kcmail.conditions import Failure, Reason
from kcmail.keycloak import AdminCredentials, KeycloakClient
from kcmail.kube import Kube, Secret
from kcmail.spec import ConnectionKind, realm_name_problem


class ConnectionFailure(Exception):
    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


@dataclass(frozen=True)
class ConnectionKey:
    kind: ConnectionKind
    name: str
    namespace: str | None

    def __str__(self) -> str:
        where = f"{self.namespace}/" if self.namespace else ""
        return f"{self.kind.value} {where}{self.name}"


@dataclass(frozen=True)
class ResolvedConnection:
    key: ConnectionKey
    url: str
    admin_realm: str
    credentials: AdminCredentials = field(repr=False)
    ca_pem: str = field(default="", repr=False)
    insecure_skip_verify: bool = False
    allowed_namespaces: Mapping[str, Any] | None = None
    allowed_realms: tuple[str, ...] = ("*",)
    # Changes whenever anything that shapes the admin client changes (URL, credentials, CA).
    fingerprint: str = ""
    # The version (kcmail.kube.secret_version) of each Secret read, by (namespace, name).
    secret_versions: Mapping[tuple[str, str], str] = field(default_factory=dict)


def normalized_url(url: str) -> str:
    """The Keycloak base URL in one spelling, so two Connections to one Keycloak compare equal."""
    return url.strip().rstrip("/").lower()


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """Kubernetes LabelSelector semantics: absent selects everything; all terms must hold."""
    if selector is None:
        return True
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        present = key in labels
        if operator == "In" and (not present or labels[key] not in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def realm_allowed(patterns: Sequence[str], realm: str) -> bool:
    """Whether a Connection's allowedRealms admit ``realm``: glob patterns matched against the whole name,
    case-sensitively (``*`` any run of characters, ``?`` one, ``[abc]``/``[!abc]`` sets).

    A ``*`` matches ``/`` as well; that is no way out, because a realm name kcmail addresses holds no ``/``
    (``spec.realm_name_problem``) and goes into a path as one encoded segment (``keycloak.realm_path``).
    """
    return any(fnmatch.fnmatchcase(realm, pattern) for pattern in patterns)


def secret_refs(kind: ConnectionKind, spec: Mapping[str, Any], namespace: str | None) -> set[tuple[str, str]]:
    """The (namespace, name) of every Secret a Connection reads: its admin credentials and its CA."""
    refs = [spec.get("credentialsSecretRef") or {}, (spec.get("tls") or {}).get("caSecretRef") or {}]
    found = set()
    for ref in refs:
        secret_ns = ref.get("namespace") if kind is ConnectionKind.CLUSTER else namespace
        if ref.get("name") and secret_ns:
            found.add((secret_ns, ref["name"]))
    return found


def _fingerprint(*parts: str) -> str:
    # Only a comparison key kept in memory; never written anywhere.
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


async def resolve(kube: Kube, kind: ConnectionKind, name: str, referrer_namespace: str) -> ResolvedConnection:
    """Read a Connection and its Secrets. Raises ConnectionFailure with a catalogue reason."""
    namespace = referrer_namespace if kind is ConnectionKind.NAMESPACED else None
    key = ConnectionKey(kind, name, namespace)
    obj = await kube.connection(kind, name, namespace)
    if obj is None:
        raise ConnectionFailure(Failure(Reason.CONNECTION_NOT_FOUND, f"{key} does not exist", needs_person=True))
    spec = obj.get("spec", {})
    ref = spec.get("credentialsSecretRef", {})
    secret_ns = ref.get("namespace") if kind is ConnectionKind.CLUSTER else namespace
    credentials_secret = await _secret(kube, secret_ns or "", ref.get("name", ""), f"{key} credentials")
    credentials = _admin_credentials(credentials_secret, key)
    tls = spec.get("tls") or {}
    secret_versions = {(credentials_secret.namespace, credentials_secret.name): credentials_secret.version}
    ca_pem, ca_version = "", ""
    if tls.get("caSecretRef"):
        ca_ref = tls["caSecretRef"]
        ca_ns = ca_ref.get("namespace") if kind is ConnectionKind.CLUSTER else namespace
        ca_secret = await _secret(kube, ca_ns or "", ca_ref["name"], f"{key} CA")
        ca_key = ca_ref.get("key", "ca.crt")
        if ca_key not in ca_secret.data:
            raise ConnectionFailure(Failure(
                Reason.SECRET_KEY_MISSING, f'Secret {ca_secret.namespace}/{ca_secret.name} has no key "{ca_key}" '
                f"(the CA of {key})", needs_person=True))
        ca_pem, ca_version = ca_secret.data[ca_key], ca_secret.version
        secret_versions[(ca_secret.namespace, ca_secret.name)] = ca_version
        _check_ca(ca_pem, f"Secret {ca_secret.namespace}/{ca_secret.name} key {ca_key!r} (the CA of {key})")
    url = spec.get("url", "")
    admin_realm = spec.get("adminRealm", "master")
    problem = realm_name_problem(admin_realm)
    if problem:
        raise ConnectionFailure(Failure(Reason.INVALID_SPEC, f"{key}: adminRealm {admin_realm!r} {problem}",
                                        needs_person=True))
    return ResolvedConnection(
        key=key, url=url, admin_realm=admin_realm, credentials=credentials, ca_pem=ca_pem,
        insecure_skip_verify=bool(tls.get("insecureSkipVerify", False)),
        allowed_namespaces=spec.get("allowedNamespaces") if kind is ConnectionKind.CLUSTER else None,
        allowed_realms=tuple(spec.get("allowedRealms") or ("*",)),
        fingerprint=_fingerprint(url, spec.get("adminRealm", "master"), credentials_secret.version, ca_version,
                                 str(tls.get("insecureSkipVerify", False))),
        secret_versions=secret_versions,
    )


class ResolvedConnections:
    """Resolved Connections kept between passes: a thousand MailConfigs sharing one Connection cost the
    Kubernetes API one read of it and its Secrets, not three reads per MailConfig per pass.

    An entry goes when the Connection or one of its Secrets changes (the watch handlers call ``forget``)
    and after ``MAX_AGE_SECONDS`` at the latest, which bounds how stale it can be if an event is ever
    missed. Concurrent misses share one read; failures are never kept, so the next pass reads again.
    The Secret versions of the last kept read outlive the entry: they tell a Secret event that brings
    nothing new (a relisting after the watch lost its place) from a change (``resolved_version``).
    """

    MAX_AGE_SECONDS = 60.0

    def __init__(self, kube: Kube, clock: Callable[[], float] = time.monotonic) -> None:
        self._kube = kube
        self._clock = clock
        self._entries: dict[ConnectionKey, tuple[float, ResolvedConnection]] = {}
        self._reads: dict[ConnectionKey, asyncio.Future[ResolvedConnection]] = {}
        # Bumped by forget: a read that began before a change must not be kept after it.
        self._generations: dict[ConnectionKey, int] = {}
        self._secret_versions: dict[ConnectionKey, Mapping[tuple[str, str], str]] = {}

    async def get(self, kind: ConnectionKind, name: str, referrer_namespace: str) -> ResolvedConnection:
        key = ConnectionKey(kind, name, referrer_namespace if kind is ConnectionKind.NAMESPACED else None)
        entry = self._entries.get(key)
        if entry is not None and self._clock() - entry[0] < self.MAX_AGE_SECONDS:
            return entry[1]
        read = self._reads.get(key)
        if read is None:
            read = asyncio.ensure_future(resolve(self._kube, kind, name, referrer_namespace))
            self._reads[key] = read
            generation = self._generations.get(key, 0)
            read.add_done_callback(lambda done: self._read_done(key, generation, done))
        # Shielded: one caller cancelled (its MailConfig deleted) must not fail the others sharing the read.
        return await asyncio.shield(read)

    def resolved_version(self, key: ConnectionKey, namespace: str, name: str) -> str | None:
        """The version of Secret ``namespace/name`` that the last kept read of Connection ``key`` used."""
        return self._secret_versions.get(key, {}).get((namespace, name))

    def forget(self, key: ConnectionKey) -> None:
        self._entries.pop(key, None)
        self._reads.pop(key, None)
        self._generations[key] = self._generations.get(key, 0) + 1

    def _read_done(self, key: ConnectionKey, generation: int, read: asyncio.Future[ResolvedConnection]) -> None:
        if self._reads.get(key) is read:
            del self._reads[key]
        if read.cancelled() or read.exception() is not None:
            return  # retrieved, so that a failure nobody awaits any more is not reported as lost
        if self._generations.get(key, 0) == generation:
            self._entries[key] = (self._clock(), read.result())
            self._secret_versions[key] = read.result().secret_versions


async def _secret(kube: Kube, namespace: str, name: str, purpose: str) -> Secret:
    secret = await kube.secret(namespace, name)
    if secret is None:
        raise ConnectionFailure(Failure(Reason.SECRET_NOT_FOUND,
                                        f"Secret {namespace}/{name} ({purpose}) does not exist", needs_person=True))
    return secret


def _admin_credentials(secret: Secret, key: ConnectionKey) -> AdminCredentials:
    data = secret.data
    if data.get("client-id") and data.get("client-secret"):
        return AdminCredentials(client_id=data["client-id"], client_secret=data["client-secret"])
    if data.get("username") and data.get("password"):
        return AdminCredentials(username=data["username"], password=data["password"])
    raise ConnectionFailure(Failure(
        Reason.SECRET_KEY_MISSING,
        f"Secret {secret.namespace}/{secret.name} (credentials of {key}) needs the keys client-id and "
        "client-secret, or username and password", needs_person=True))


def _check_ca(pem: str, where: str) -> None:
    """Refuse a CA bundle that is not PEM certificates, with a message that names it (never its content)."""
    try:
        ssl.create_default_context().load_verify_locations(cadata=pem)
    except (ssl.SSLError, ValueError) as error:
        reason = getattr(error, "reason", None) or str(error)
        raise ConnectionFailure(Failure(
            Reason.INVALID_CA, f"{where} is not a PEM CA bundle ({reason}); it must hold one or more "
            "-----BEGIN CERTIFICATE----- blocks", needs_person=True)) from None


def tls_context(ca_bundle: str | None, connection_ca_pem: str) -> ssl.SSLContext:
    """System CAs, plus the operator's CA bundle file, plus the Connection's own CA."""
    context = ssl.create_default_context()
    if ca_bundle:
        context.load_verify_locations(cafile=ca_bundle)
    if connection_ca_pem:
        context.load_verify_locations(cadata=connection_ca_pem)
    return context


@dataclass(eq=False)
class _Lease:
    """A Connection's admin client and the passes using it; a replaced one closes when the last one leaves."""

    fingerprint: str
    client: KeycloakClient
    users: int = 0
    replaced: bool = False


class KeycloakClients:
    """One :class:`KeycloakClient` per Connection, rebuilt when its fingerprint changes.

    ``concurrency`` bounds the admin calls in flight through each of them. A pass holds its client with
    :meth:`using` for all its calls. Finding the client and building a new one happen without a pause in
    between, so the passes that all meet a rotated admin Secret at once share one new client (one pool,
    one login); the client it replaces closes once the passes still using it are done, not under them.
    """

    def __init__(self, ca_bundle: str | None = None, *, concurrency: int) -> None:
        self._ca_bundle = ca_bundle
        self._concurrency = concurrency
        self._leases: dict[ConnectionKey, _Lease] = {}
        # Replaced clients still in use, closed on shutdown if their passes never end.
        self._replaced: set[_Lease] = set()

    @contextlib.asynccontextmanager
    async def using(self, connection: ResolvedConnection) -> AsyncIterator[KeycloakClient]:
        lease, replaced = self._lease(connection)
        lease.users += 1
        try:
            if replaced is not None and replaced.users == 0:
                await self._close(replaced)
            yield lease.client
        finally:
            lease.users -= 1
            if lease.replaced and lease.users == 0:
                await self._close(lease)

    def _lease(self, connection: ResolvedConnection) -> tuple[_Lease, _Lease | None]:
        """The Connection's current lease, and the one it replaced just now, if any. Never pauses."""
        held = self._leases.get(connection.key)
        if held is not None and held.fingerprint == connection.fingerprint:
            return held, None
        verify: ssl.SSLContext | bool = (
            False if connection.insecure_skip_verify else tls_context(self._ca_bundle, connection.ca_pem))
        lease = _Lease(connection.fingerprint, KeycloakClient(
            connection.url, connection.admin_realm, connection.credentials, verify=verify,
            concurrency=self._concurrency))
        self._leases[connection.key] = lease
        if held is not None:
            held.replaced = True
            self._replaced.add(held)
        return lease, held

    async def _close(self, lease: _Lease) -> None:
        if lease in self._replaced:
            self._replaced.discard(lease)
            await lease.client.aclose()

    async def aclose(self) -> None:
        for lease in [*self._leases.values(), *self._replaced]:
            await lease.client.aclose()
        self._leases.clear()
        self._replaced.clear()
