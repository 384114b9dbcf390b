"""Which events become a pass of a MailConfig: news, not what its first pass reads anyway."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kcmail.connections import ConnectionKey
from kcmail.controller import (
    FINALIZER,
    ConnectionHealth,
    ConnectionSecretIndices,
    Controller,
    finalizer_added,
    finalizer_removed,
    first_pass_can_wait,
    secret_is_news,
    wants_pass,
)
from kcmail.decide import Result
from kcmail.kube import secret_version
from kcmail.secretwatch import SecretEvent, SecretEventType
from kcmail.spec import ConnectionKind
from kcmail.store import Key, MailConfigObject

pytestmark = pytest.mark.unit

CONNECTION = ("ClusterKeycloakConnection", None, "main")


def test_a_connection_listed_at_start_up_wakes_nobody_but_its_later_changes_do():
    health = ConnectionHealth()
    assert not health.changed(CONNECTION, 1, listed=True)
    assert not health.changed(CONNECTION, 1)
    assert health.changed(CONNECTION, 2)


def test_a_connection_created_after_start_up_wakes_the_mailconfigs_waiting_for_it():
    assert ConnectionHealth().changed(CONNECTION, 1)


def _with(kind: str, state: str) -> dict[str, list[dict[str, str]]]:
    return {"conditions": [{"type": kind, "status": state}]}


def test_a_failing_connection_is_checked_again_when_a_mailconfig_gets_through_it():
    health = ConnectionHealth()
    # Never checked, or checked Ready: a pass has nothing to prove.
    assert not health.recheck_after_pass(CONNECTION, _with("Applied", "True"), now=100)
    health.checked(CONNECTION, _with("Ready", "True"))
    assert not health.recheck_after_pass(CONNECTION, _with("Applied", "True"), now=100)

    health.checked(CONNECTION, _with("Ready", "False"))  # KeycloakUnreachable, say
    assert not health.recheck_after_pass(CONNECTION, _with("Applied", "False"), now=100)
    assert not health.recheck_after_pass(("ClusterKeycloakConnection", None, "other"), _with("Applied", "True"),
                                         now=100)
    assert health.recheck_after_pass(CONNECTION, _with("Applied", "True"), now=100)
    assert not health.recheck_after_pass(CONNECTION, _with("Applied", "True"), now=101)  # once, not per pass

    # A check that still fails while passes succeed: again, but not more often than every 30 s.
    health.checked(CONNECTION, _with("Ready", "False"))
    assert not health.recheck_after_pass(CONNECTION, _with("Applied", "True"), now=110)
    assert health.recheck_after_pass(CONNECTION, _with("Applied", "True"), now=131)


def test_a_secret_is_news_only_when_its_version_is_not_the_applied_one():
    assert not secret_is_news("uid-1", "41", secret_version("uid-1", "41"))
    assert secret_is_news("uid-1", "42", secret_version("uid-1", "41"))
    # Deleted and created again under the same name: a new uid, whatever the revision.
    assert secret_is_news("uid-2", "41", secret_version("uid-1", "41"))
    assert secret_is_news("uid-1", "41", None)


def _body(name: str = "mail", uid: str = "u-1", generation: int = 2, *, requested: str | None = None,
          secret: str = "oauth", applied: str | None = None, ready: str | None = "True", observed: int = 2,
          handled: str | None = None, deleting: bool = False, realm: str = "acme") -> dict[str, Any]:
    status: dict[str, Any] = {"observedGeneration": observed}
    if ready:
        status["conditions"] = [{"type": "Ready", "status": ready}]
    if applied:
        status["appliedSecretVersion"] = applied
    if handled:
        status["lastHandledRequestedAt"] = handled
    meta: dict[str, Any] = {"namespace": "mail", "name": name, "uid": uid, "generation": generation,
                            "resourceVersion": "9", "finalizers": [FINALIZER]}
    if requested:
        meta["annotations"] = {"kcmail.io/requested-at": requested}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-06T10:00:00Z"
    return {"metadata": meta, "status": status,
            "spec": {"realm": realm, "connectionRef": {"name": "main"}, "interval": "10m",
                     "smtp": {"host": "smtp.example", "port": 587}, "sender": {"from": "noreply@example.com"},
                     "auth": {"type": "XOAUTH2", "xoauth2": {"tokenURL": "https://idp.example/token",
                                                             "clientSecretRef": {"name": secret}}}}}


def _obj(**kwargs: Any) -> MailConfigObject:
    return MailConfigObject.from_body(_body(**kwargs))


def test_after_a_start_only_a_ready_current_mailconfig_waits_for_its_slot():
    assert first_pass_can_wait(_obj())
    assert not first_pass_can_wait(_obj(observed=1))  # the spec changed while the operator was down
    assert not first_pass_can_wait(_obj(ready="False"))  # failing: retry now
    assert not first_pass_can_wait(_obj(ready="Unknown"))
    assert not first_pass_can_wait(_obj(ready=None))  # never reconciled
    assert not first_pass_can_wait(_obj(requested="t1"))  # a pass was asked for
    assert first_pass_can_wait(_obj(requested="t1", handled="t1"))


def test_a_spec_change_a_requested_pass_or_a_deletion_wants_a_pass_a_status_write_does_not():
    assert not wants_pass(_obj(), _obj(ready="False"))
    assert wants_pass(_obj(), _obj(generation=3))
    assert wants_pass(_obj(), _obj(requested="now"))
    assert wants_pass(_obj(), _obj(deleting=True))


def test_forcing_a_held_change_or_adopting_a_realm_wants_a_pass_at_once_and_other_annotations_do_not():
    def annotated(**annotations: str) -> MailConfigObject:
        body = _body()
        body["metadata"]["annotations"] = annotations
        return MailConfigObject.from_body(body)

    assert wants_pass(_obj(), annotated(**{"kcmail.io/force-apply": "1"}))
    assert wants_pass(annotated(**{"kcmail.io/force-apply": "1"}), annotated(**{"kcmail.io/force-apply": "2"}))
    assert wants_pass(_obj(), annotated(**{"kcmail.io/adopt": "uid-gone"}))
    assert not wants_pass(_obj(), annotated(**{"example.com/note": "x"}))
    # After a restart, a force not yet handled is a reason not to wait for the slot.
    forced = annotated(**{"kcmail.io/force-apply": "1"})
    assert not first_pass_can_wait(forced)


def test_the_finalizer_patches_test_what_was_seen_before_they_change_it():
    bare = MailConfigObject.from_body({**_body(), "metadata": {**_body()["metadata"], "finalizers": []}})
    assert finalizer_added(bare) == [{"op": "test", "path": "/metadata/resourceVersion", "value": "9"},
                                     {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]}]
    other = MailConfigObject.from_body({**_body(), "metadata": {**_body()["metadata"], "finalizers": ["x/y"]}})
    assert finalizer_added(other)[0] == {"op": "test", "path": "/metadata/finalizers", "value": ["x/y"]}
    assert finalizer_added(other)[1]["path"] == "/metadata/finalizers/-"
    both = MailConfigObject.from_body({**_body(), "metadata": {**_body()["metadata"],
                                                               "finalizers": ["x/y", FINALIZER]}})
    assert finalizer_removed(both) == [{"op": "test", "path": "/metadata/finalizers/1", "value": FINALIZER},
                                       {"op": "remove", "path": "/metadata/finalizers/1"}]


class _Connections:
    def __init__(self, resolved: dict[tuple[object, str, str], str] | None = None) -> None:
        self.forgotten: list[object] = []
        self.resolved = resolved or {}

    def forget(self, key: object) -> None:
        self.forgotten.append(key)

    def resolved_version(self, key: object, namespace: str, name: str) -> str | None:
        return self.resolved.get((key, namespace, name))


def _controller(connections: _Connections | None = None) -> tuple[Controller, list[object]]:
    reconciler = type("Reconciler", (), {"connections": connections or _Connections()})()
    controller = Controller(None, reconciler, workers=1)  # type: ignore[arg-type]
    checked: list[object] = []

    async def recheck(ref: object) -> None:
        checked.append(ref)

    controller.recheck_connection = recheck  # type: ignore[assignment]
    return controller, checked


def _waiting(controller: Controller) -> list[str]:
    """The keys that run as soon as a worker is free."""
    return sorted(str(key) for key in controller.queue._waiting)


async def test_a_mailconfig_listed_ready_waits_for_its_slot_and_one_that_is_not_runs_at_once():
    controller, _ = _controller()
    await controller.on_mailconfig("LISTED", _body("ready"))
    await controller.on_mailconfig("LISTED", _body("failing", uid="u-2", ready="False"))
    await controller.on_mailconfig("ADDED", _body("new", uid="u-3"))  # created after the start: at once
    assert _waiting(controller) == ["mail/failing", "mail/new"]
    slot = controller.queue.due_in(Key("mail", "ready", "u-1"))
    assert slot is not None
    assert 0 < slot <= 600


async def test_a_status_write_adds_nothing_but_a_spec_change_and_a_request_do():
    controller, _ = _controller()
    await controller.on_mailconfig("LISTED", _body())
    await controller.on_mailconfig("MODIFIED", _body(ready="False"))
    assert _waiting(controller) == []
    await controller.on_mailconfig("MODIFIED", _body(generation=3))
    assert _waiting(controller) == ["mail/mail"]
    controller.queue.forget(Key("mail", "mail", "u-1"))
    await controller.on_mailconfig("MODIFIED", _body(generation=3, requested="now"))
    assert _waiting(controller) == ["mail/mail"]


async def test_an_old_objects_deletion_never_stops_the_new_one_under_its_name():
    controller, _ = _controller()
    await controller.on_mailconfig("ADDED", _body(uid="old"))
    await controller.on_mailconfig("ADDED", _body(uid="new"))
    await controller.on_mailconfig("DELETED", _body(uid="old"))
    assert controller.store.current("mail", "mail") == Key("mail", "mail", "new")
    assert [str(k) + ":" + k.uid for k in controller.queue._waiting] == ["mail/mail:new"]


async def test_a_deleted_owner_wakes_the_others_that_name_its_realm():
    controller, _ = _controller()
    await controller.on_mailconfig("LISTED", _body("owner"))
    await controller.on_mailconfig("LISTED", _body("waiting", uid="u-2"))
    await controller.on_mailconfig("LISTED", _body("elsewhere", uid="u-3", realm="other"))
    await controller.on_mailconfig("DELETED", _body("owner"))
    assert _waiting(controller) == ["mail/waiting"]


async def test_a_relisting_drops_what_was_deleted_while_the_watch_had_lost_its_place():
    controller, _ = _controller()
    await controller.on_mailconfig("LISTED", _body("kept"))
    await controller.on_mailconfig("LISTED", _body("gone", uid="u-2"))
    await controller.on_listed("/apis/kcmail.io/v1alpha1/mailconfigs", "LISTED")
    assert controller.listed.is_set()
    await controller.on_mailconfig("RELISTED", _body("kept"))
    await controller.on_listed("/apis/kcmail.io/v1alpha1/mailconfigs", "RELISTED")
    assert [str(k) for k in controller.store.all_keys()] == ["mail/kept"]


@pytest.mark.parametrize(("event_type", "rechecked"), [("LISTED", False), ("RELISTED", True), ("MODIFIED", True)])
async def test_a_secret_event_wakes_its_users_with_news_and_rechecks_its_connection_unless_listed(
        event_type: str, rechecked: bool) -> None:
    controller, checked = _controller()
    for name, secret, uid in (("a", "current", "uid-c"), ("b", "rotated", "uid-r")):
        await controller.on_mailconfig("LISTED", _body(name, uid=name, secret=secret, applied=secret_version(uid, "7")))
    await controller.on_mailconfig("LISTED", _body("c", uid="c", secret="other"))
    for key in controller.store.all_keys():
        controller.queue.forget(key)  # nothing waits before the Secret events
    indices = ConnectionSecretIndices(namespaced={}, cluster={("mail", "admin"): [CONNECTION]})

    # "rotated" is at a version its MailConfig has not applied; "current" at the one it has.
    for name, uid, version in (("current", "uid-c", "7"), ("rotated", "uid-r", "8"), ("admin", "uid-a", "3"),
                               ("unrelated", "uid-u", "1")):
        await controller.on_secret(indices, SecretEvent(SecretEventType(event_type), "mail", name, uid, version))

    assert _waiting(controller) == (["mail/a", "mail/b", "mail/c"] if rechecked else ["mail/b"])
    assert checked == ([CONNECTION] if rechecked else [])


@pytest.mark.parametrize(("event_type", "version", "woken"), [
    ("RELISTED", "3", False),  # the version the Connection's passes resolved: nothing new
    ("RELISTED", "4", True),  # changed while the watch had lost its place
    ("MODIFIED", "4", True),
    ("MODIFIED", "3", False),  # the passes read it before the watch delivered its change
])
async def test_a_connection_secret_wakes_its_users_only_at_a_version_they_did_not_resolve(
        event_type: str, version: str, woken: bool) -> None:
    key = ConnectionKey(ConnectionKind.CLUSTER, "main", None)
    connections = _Connections({(key, "mail", "admin"): secret_version("uid-a", "3")})
    controller, checked = _controller(connections)
    await controller.on_mailconfig("ADDED", _body("c", uid="c"))
    controller.queue.forget(Key("mail", "c", "c"))
    indices = ConnectionSecretIndices(namespaced={}, cluster={("mail", "admin"): [CONNECTION]})

    await controller.on_secret(indices, SecretEvent(SecretEventType(event_type), "mail", "admin", "uid-a", version))

    assert _waiting(controller) == (["mail/c"] if woken else [])
    assert checked == ([CONNECTION] if woken else [])
    assert connections.forgotten == ([key] if woken else [])


async def test_a_connections_spec_change_wakes_its_users_its_listing_does_not():
    controller, _ = _controller()
    await controller.on_mailconfig("ADDED", _body())
    controller.queue.forget(Key("mail", "mail", "u-1"))
    controller.on_connection(CONNECTION, 1, listed=True)
    assert _waiting(controller) == []
    controller.on_connection(CONNECTION, 2, listed=False)
    assert _waiting(controller) == ["mail/mail"]
    assert copy.copy(controller.reconciler.connections.forgotten) == [  # type: ignore[attr-defined]
        ConnectionKey(ConnectionKind.CLUSTER, "main", None)] * 2


class _StatusKube:
    """Records status patches; nothing comes back through a watch until the test says so."""

    def __init__(self) -> None:
        self.patches: list[dict[str, Any]] = []

    async def patch_status(self, plural: str, name: str, namespace: str | None, status: dict[str, Any]) -> None:
        self.patches.append(dict(status))

    async def patch_json(self, *args: Any) -> None:
        raise AssertionError("the object holds the finalizer already")

    async def post_event(self, event: dict[str, Any]) -> None:
        pass


class _CountingReconciler:
    """Each pass writes how many passes it saw before it, as the status it started from says."""

    connections = _Connections()

    def __init__(self) -> None:
        self.seen: list[int] = []

    async def reconcile(self, obj: MailConfigObject, report: Any = None, holders: Any = None) -> Any:
        passes = int(obj.status.get("passes", 0))
        self.seen.append(passes)
        return Result(status={"passes": passes + 1})


async def test_a_pass_builds_on_the_status_this_process_wrote_even_before_the_watch_brings_it_back():
    kube, reconciler = _StatusKube(), _CountingReconciler()
    controller = Controller(kube, reconciler, workers=1)  # type: ignore[arg-type]
    await controller.on_mailconfig("ADDED", _body())
    key = Key("mail", "mail", "u-1")
    await controller.process(key)
    await controller.process(key)  # no event in between: the store still has the status from before
    assert reconciler.seen == [0, 1]
    assert kube.patches == [{"passes": 1}, {"passes": 2}]
    # The watch brings the writes back, the first one late: the second one stays what the next pass sees.
    late = _body()
    late["status"] = {**late["status"], "passes": 1}
    await controller.on_mailconfig("MODIFIED", late)
    await controller.process(key)
    assert reconciler.seen == [0, 1, 2]
    caught_up = _body()
    caught_up["status"] = {**caught_up["status"], "passes": 3}
    await controller.on_mailconfig("MODIFIED", caught_up)
    assert key not in controller._written  # the store holds it now; nothing kept twice
