"""The MailConfigs as kcmail's watch last saw them, and who refers to what.

Each object is kept under a key that carries its uid (kcmail.controller's queue runs keys), as compact
JSON of the fields a pass reads (about 2 KiB; a parsed body with kubectl's annotations and managed fields
is ten times that). Three indices answer what an event of something else means: which MailConfigs name a
realm (whom to wake when its owner goes, and the older holders of a realm with no owner record), which
use a Secret (and at which version they applied it), and which use a Connection.
"""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kcmail.conditions import ConditionType, condition_true
from kcmail.decide import FORCE_APPLY, REQUESTED_AT
from kcmail.ownership import ADOPT_ANNOTATION
from kcmail.spec import ConnectionKind, MailConfigSpec, SpecError

READ_ANNOTATIONS = frozenset({REQUESTED_AT, ADOPT_ANNOTATION, FORCE_APPLY})


@dataclass(frozen=True)
class MailConfigObject:
    """The parts of a MailConfig a reconcile reads."""

    namespace: str
    name: str
    uid: str
    generation: int
    created: str
    annotations: Mapping[str, str]
    spec: Mapping[str, Any]
    status: Mapping[str, Any]
    # What the deletion needs: the finalizers in their order, whether a deletion was asked for, and the
    # version a finalizer patch tests against.
    finalizers: tuple[str, ...] = ()
    deleting: bool = False
    resource_version: str = ""

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> MailConfigObject:
        meta = body.get("metadata", {})
        # Only the annotations kcmail reads: kubectl's last-applied-configuration alone can double the size.
        annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k in READ_ANNOTATIONS}
        return cls(namespace=meta.get("namespace", ""), name=meta.get("name", ""), uid=meta.get("uid", ""),
                   generation=int(meta.get("generation", 0)), created=meta.get("creationTimestamp", ""),
                   annotations=annotations, spec=dict(body.get("spec") or {}), status=dict(body.get("status") or {}),
                   finalizers=tuple(meta.get("finalizers") or ()), deleting=bool(meta.get("deletionTimestamp")),
                   resource_version=str(meta.get("resourceVersion", "")))

    def pack(self) -> bytes:
        """These fields as compact JSON: what a loop keeps between passes, far smaller than parsed dicts."""
        return json.dumps(dataclasses.asdict(self), separators=(",", ":")).encode()

    @classmethod
    def unpack(cls, data: bytes) -> MailConfigObject:
        fields = json.loads(data)
        return cls(**{**fields, "finalizers": tuple(fields.get("finalizers") or ())})

    @property
    def id(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Holder:
    """Another MailConfig of this cluster that names the same realm, as kcmail's index shows it."""

    namespace: str
    name: str
    uid: str
    created: str
    connection_kind: ConnectionKind
    connection_name: str
    # Its status says Applied=True: it passed its Connection's rules and Keycloak took its write.
    applied: bool

    @property
    def id(self) -> str:
        return f"{self.namespace}/{self.name}"


Holders = Callable[[str], Sequence[Holder]]


# A Connection as the indices name it: (kind, namespace or None for a cluster-scoped one, name).
ConnectionRef = tuple[str, str | None, str]


@dataclass(frozen=True, order=True)
class Key:
    """One MailConfig object: a MailConfig deleted and created again under its name is another key, so an
    old object's deletion can never stop, or be mistaken for, the new one."""

    namespace: str
    name: str
    uid: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class _Refs:
    realm: str
    secret: tuple[str, str] | None
    connection: ConnectionRef
    holder: Holder | None


def key_of(body: Mapping[str, Any]) -> Key:
    meta = body.get("metadata") or {}
    return Key(str(meta.get("namespace", "")), str(meta.get("name", "")), str(meta.get("uid", "")))


def used_connection(namespace: str, spec: Mapping[str, Any]) -> ConnectionRef:
    """The Connection a MailConfig's spec refers to."""
    ref = spec.get("connectionRef") or {}
    kind = ref.get("kind", ConnectionKind.CLUSTER.value)
    return kind, namespace if kind == ConnectionKind.NAMESPACED.value else None, str(ref.get("name", ""))


def _refs(obj: MailConfigObject) -> _Refs:
    spec = obj.spec
    try:
        secret_name = MailConfigSpec.parse(spec).auth.secret_name
    except SpecError:
        secret_name = None
    connection = used_connection(obj.namespace, spec)
    holder = None
    # A kind that is no ConnectionKind (an object that bypassed validation) holds nothing.
    if connection[0] in ConnectionKind.__members__.values():
        applied = condition_true(obj.status, ConditionType.APPLIED.value)
        holder = Holder(namespace=obj.namespace, name=obj.name, uid=obj.uid, created=obj.created,
                        connection_kind=ConnectionKind(connection[0]), connection_name=connection[2], applied=applied)
    return _Refs(realm=str(spec.get("realm", "")), secret=(obj.namespace, secret_name) if secret_name else None,
                 connection=connection, holder=holder)


class MailConfigStore:
    def __init__(self) -> None:
        self._states: dict[Key, bytes] = {}
        self._names: dict[tuple[str, str], Key] = {}
        self._refs: dict[Key, _Refs] = {}
        self._by_realm: defaultdict[str, set[Key]] = defaultdict(set)
        self._by_secret: defaultdict[tuple[str, str], set[Key]] = defaultdict(set)
        self._by_connection: defaultdict[ConnectionRef, set[Key]] = defaultdict(set)

    def __len__(self) -> int:
        return len(self._states)

    def put(self, body: Mapping[str, Any]) -> tuple[Key, MailConfigObject | None, MailConfigObject]:
        """Keep the object as ``body`` shows it; returns its key, what was kept before (``None`` the first
        time this key is seen) and what is kept now."""
        key = key_of(body)
        previous = self.latest(key)
        obj = MailConfigObject.from_body(body)
        self._states[key] = obj.pack()
        self._names[(key.namespace, key.name)] = key
        self._unindex(key)
        refs = self._refs[key] = _refs(obj)
        self._by_realm[refs.realm].add(key)
        if refs.secret is not None:
            self._by_secret[refs.secret].add(key)
        self._by_connection[refs.connection].add(key)
        return key, previous, obj

    def remove(self, key: Key) -> MailConfigObject | None:
        """Drop ``key``; returns what was kept of it."""
        previous = self.latest(key)
        self._states.pop(key, None)
        if self._names.get((key.namespace, key.name)) == key:
            del self._names[(key.namespace, key.name)]
        self._unindex(key)
        self._refs.pop(key, None)
        return previous

    def all_keys(self) -> list[Key]:
        return list(self._states)

    def latest(self, key: Key) -> MailConfigObject | None:
        state = self._states.get(key)
        return None if state is None else MailConfigObject.unpack(state)

    def current(self, namespace: str, name: str) -> Key | None:
        """The key of the object now under this name, if any."""
        return self._names.get((namespace, name))

    def holders(self, realm: str) -> list[Holder]:
        """The MailConfigs that name ``realm``, as their last seen state shows them."""
        return [holder for key in sorted(self._by_realm.get(realm, ()))
                if (holder := self._refs[key].holder) is not None]

    def realm_users(self, realm: str) -> list[Key]:
        return sorted(self._by_realm.get(realm, ()))

    def secret_users(self, namespace: str, name: str) -> list[tuple[Key, str | None]]:
        """The MailConfigs using Secret ``namespace/name``, with the version each last applied."""
        users = []
        for key in sorted(self._by_secret.get((namespace, name), ())):
            obj = self.latest(key)
            users.append((key, None if obj is None else obj.status.get("appliedSecretVersion")))
        return users

    def connection_users(self, connection: ConnectionRef) -> list[Key]:
        return sorted(self._by_connection.get(connection, ()))

    def _unindex(self, key: Key) -> None:
        refs = self._refs.get(key)
        if refs is None:
            return
        for index, value in ((self._by_realm, refs.realm), (self._by_secret, refs.secret),
                             (self._by_connection, refs.connection)):
            if value is None:
                continue
            users = index.get(value)  # type: ignore[attr-defined]
            if users is not None:
                users.discard(key)
                if not users:
                    del index[value]  # type: ignore[attr-defined]
