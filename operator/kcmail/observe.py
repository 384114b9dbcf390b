"""What a pass of the MailConfig reconcile reads, as plain values: async reads only, no rules.

Kubernetes first (:func:`inputs`): the spec, the Connection it refers to, the namespace's labels when the
Connection restricts namespaces, and the credentials. Then Keycloak (:func:`keycloak`): the version, the realm,
and what the cluster says of the owner the realm records. Each read becomes what it found or the catalogue
failure met reading it, so decide.py decides from values and the reads stay free of rules. Reads stop where
the next one has nothing to go on (no spec, no Connection) or would decide nothing: nothing is read for a
suspended MailConfig or a Connection kind this kcmail does not accept, and no credentials for a Connection
the MailConfig may not use (decide.usable_connection says so).

The realm is read inside an ``async with`` that holds one of the Keycloak client's slots until the block ends:
the reconcile decides and writes inside it, so the write is the next call after the read it carries back
(:meth:`KeycloakClient.one_slot`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kcmail import decide
from kcmail.conditions import Failure, Reason
from kcmail.connections import ConnectionFailure, ResolvedConnection, ResolvedConnections, normalized_url
from kcmail.keycloak import KeycloakClient, KeycloakFailure
from kcmail.kube import Kube, KubeError
from kcmail.ownership import Lookup, recorded_owner
from kcmail.redact import redact
from kcmail.smtp_settings import Version
from kcmail.spec import AuthType, ConnectionKind, Credentials, MailConfigSpec, SpecError, value_problem

if TYPE_CHECKING:
    from kcmail.store import Holder, Holders, MailConfigObject


@dataclass(frozen=True)
class Inputs:
    """What Kubernetes holds for a pass. A field is None when it was not read."""

    spec: MailConfigSpec | SpecError
    connection: ResolvedConnection | Failure | None = None
    # Read only for a ClusterKeycloakConnection with spec.allowedNamespaces.
    namespace_labels: Mapping[str, str] | None = None
    credentials: Credentials | Failure | None = None


@dataclass(frozen=True)
class RealmView:
    """What Keycloak and the cluster say of the realm a pass writes."""

    version: Version | None  # None: Keycloak hides it from this admin (smtp_settings.version_text)
    representation: Mapping[str, Any] | Failure = dataclasses.field(repr=False)
    # What the cluster says of the recorded owner, when that is another MailConfig.
    lookup: Lookup | None = None
    # For a realm that records no owner: an older MailConfig that wrote it through the same Keycloak.
    older_holder: Holder | None = None


async def inputs(kube: Kube, connections: ResolvedConnections, obj: MailConfigObject, *,
                 namespaced_connections: bool) -> Inputs:
    """What a pass reads of Kubernetes: the spec, its Connection and, when the MailConfig may use that, the
    credentials. Nothing for a suspended MailConfig."""
    spec = _spec(obj)
    if isinstance(spec, SpecError) or spec.suspend:
        return Inputs(spec=spec)
    seen = await _connection(kube, connections, obj, spec, namespaced_connections)
    if isinstance(decide.usable_connection(obj, spec, seen), Failure):
        return seen  # the pass ends at its Connection: the credentials would decide nothing
    return dataclasses.replace(seen, credentials=await _credentials(kube, obj, spec))


async def deletion_inputs(kube: Kube, connections: ResolvedConnections, obj: MailConfigObject, *,
                          namespaced_connections: bool) -> Inputs:
    """What a deletion reads of Kubernetes: the spec and its Connection, of a suspended MailConfig too (it
    releases its realm all the same)."""
    spec = _spec(obj)
    if isinstance(spec, SpecError):
        return Inputs(spec=spec)
    return await _connection(kube, connections, obj, spec, namespaced_connections)


def _spec(obj: MailConfigObject) -> MailConfigSpec | SpecError:
    try:
        return MailConfigSpec.parse(obj.spec)
    except SpecError as error:
        return error


async def _connection(kube: Kube, connections: ResolvedConnections, obj: MailConfigObject, spec: MailConfigSpec,
                      namespaced_connections: bool) -> Inputs:
    """The Connection ``spec`` refers to, and the namespace's labels when the Connection restricts namespaces."""
    ref = spec.connection_ref
    if ref.kind is ConnectionKind.NAMESPACED and not namespaced_connections:
        # Not read at all: to this kcmail, such a Connection is not there to use.
        return Inputs(spec=spec, connection=Failure(
            Reason.CONNECTION_NOT_ALLOWED,
            "this kcmail accepts no KeycloakConnection (it runs with --no-namespaced-connections): use a "
            "ClusterKeycloakConnection that allows this namespace and realm", needs_person=True))
    try:
        resolved = await connections.get(ref.kind, ref.name, obj.namespace)
        labels = None
        if ref.kind is ConnectionKind.CLUSTER and resolved.allowed_namespaces is not None:
            labels = await kube.namespace_labels(obj.namespace)
    except ConnectionFailure as error:
        return Inputs(spec=spec, connection=error.failure)
    except KubeError as error:
        return Inputs(spec=spec, connection=kube_failure(error, "read the Connection"))
    return Inputs(spec=spec, connection=resolved, namespace_labels=labels)


async def _credentials(kube: Kube, obj: MailConfigObject, spec: MailConfigSpec) -> Credentials | Failure:
    """The values of the MailConfig's Secret that go into the realm and the probe, or why they cannot."""
    auth = spec.auth
    if auth.type is AuthType.NONE or auth.secret_name is None:
        return Credentials(secret_version="")
    where = f"Secret {obj.namespace}/{auth.secret_name}"
    try:
        secret = await kube.secret(obj.namespace, auth.secret_name)
    except KubeError as error:
        return kube_failure(error, f"read {where}")
    if secret is None:
        return Failure(Reason.SECRET_NOT_FOUND, f"{where} does not exist", needs_person=True)
    if auth.type is AuthType.XOAUTH2 and auth.xoauth2 is not None and auth.xoauth2.google_key_ref is not None:
        key = auth.xoauth2.google_key_ref.key
        if not secret.data.get(key):
            return Failure(Reason.SECRET_KEY_MISSING, f"{where} has no (or an empty) key {key!r}", needs_person=True)
        # A key file, not a realm value: kcmail.bridge.enrolment checks it, and it never reaches Keycloak.
        return Credentials(secret_version=secret.version, service_account_key=secret.data[key])
    if auth.type is AuthType.XOAUTH2 and auth.xoauth2 is not None and auth.xoauth2.client_secret_ref is not None:
        ref = auth.xoauth2.client_secret_ref
        keys = (ref.client_id_key, ref.client_secret_key)
    else:
        assert auth.basic is not None
        keys = (auth.basic.password_secret_ref.key,)
    missing = [key for key in keys if not secret.data.get(key)]
    if missing:
        return Failure(Reason.SECRET_KEY_MISSING,
                       f"{where} has no (or an empty) key {', '.join(repr(k) for k in missing)}", needs_person=True)
    for key in keys:
        # Every value goes into the realm's smtpServer, and the client ID into the token request and,
        # for Basic, the password into the SASL string: what Keycloak cannot store or send is refused here.
        problem = value_problem(secret.data[key])
        if problem:
            return Failure(Reason.INVALID_SECRET_VALUE, f"the value of key {key!r} of {where} {problem}",
                           needs_person=True)
    if auth.type is AuthType.XOAUTH2:
        return Credentials(secret_version=secret.version, client_id=secret.data[keys[0]],
                           client_secret=secret.data[keys[1]])
    return Credentials(secret_version=secret.version, password=secret.data[keys[0]])


@contextlib.asynccontextmanager
async def realm(keycloak: KeycloakClient, name: str) -> AsyncIterator[Mapping[str, Any] | Failure]:
    """The realm's representation, or the failure to read it, with one of ``keycloak``'s slots held until the
    block ends: a write made inside is the next call after this read."""
    async with keycloak.one_slot():
        try:
            representation: Mapping[str, Any] | Failure = await keycloak.read_realm(name)
        except KeycloakFailure as error:
            representation = error.failure
        yield representation


@contextlib.asynccontextmanager
async def keycloak(kube: Kube, client: KeycloakClient, obj: MailConfigObject, spec: MailConfigSpec,
                   connection: ResolvedConnection, holders: Holders) -> AsyncIterator[RealmView | Failure]:
    """What a pass reads of Keycloak, or the failure to read its version. The realm is read in :func:`realm`'s
    slot, and the block runs in it."""
    try:
        # Before the slot: a read other passes share may need a slot of its own (KeycloakClient.one_slot).
        version: Version | Failure | None = await client.version()
    except KeycloakFailure as error:
        version = error.failure
    if isinstance(version, Failure):
        yield version
        return
    async with realm(client, spec.realm) as representation:
        if isinstance(representation, Failure):
            yield RealmView(version, representation)
            return
        recorded = recorded_owner(representation)
        lookup = None
        if recorded is not None and recorded.uid != obj.uid:
            lookup = await _lookup(kube, recorded.namespace, recorded.name, recorded.uid)
        older = await _older_holder(kube, obj, spec.realm, connection, holders) if recorded is None else None
        yield RealmView(version, representation, lookup, older)


async def _lookup(kube: Kube, namespace: str, name: str, uid: str) -> Lookup:
    """What this cluster says of the MailConfig a realm records as its owner."""
    try:
        found = await kube.mailconfig_uid(namespace, name)
    except KubeError:
        return Lookup.UNKNOWN
    return Lookup.EXISTS if found == uid else Lookup.ABSENT


async def _older_holder(kube: Kube, obj: MailConfigObject, realm_name: str, connection: ResolvedConnection,
                        holders: Holders) -> Holder | None:
    """For a realm that records no owner: an older MailConfig that already wrote it, through a Connection to
    the same Keycloak.

    That is the owner a kcmail from before owner records chose (the older of two), which has not yet
    written its record after the upgrade. A MailConfig its Connection never allowed never wrote the realm
    (it has no Applied=True), so it is none.
    """
    for holder in holders(realm_name):
        if holder.uid == obj.uid or not holder.applied or (holder.created, holder.uid) >= (obj.created, obj.uid):
            continue
        namespace = holder.namespace if holder.connection_kind is ConnectionKind.NAMESPACED else None
        try:
            peer = await kube.connection(holder.connection_kind, holder.connection_name, namespace)
        except KubeError:
            continue
        if peer is not None and normalized_url(str((peer.get("spec") or {}).get("url", ""))) == \
                normalized_url(connection.url):
            return holder
    return None


def kube_failure(error: KubeError, what: str) -> Failure:
    """A Kubernetes API refusal as a catalogue failure: forbidden needs a person, the rest can pass."""
    if error.status in (401, 403):
        return Failure(Reason.KUBERNETES_FORBIDDEN,
                       f"cannot {what}: {redact(error)}. Grant kcmail's ServiceAccount access (the chart's "
                       "rbac values: watchNamespaces, rbac.connectionSecretNamespaces)", needs_person=True)
    return Failure(Reason.KUBERNETES_API_ERROR, f"cannot {what}: {redact(error)}")
