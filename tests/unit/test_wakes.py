"""Which events wake a MailConfig's loop: news, not what its first pass reads anyway."""

from __future__ import annotations

import asyncio

import pytest

from kcmail import loops
from kcmail.kube import secret_version
from kcmail.runtime import Runtime, first_pass_can_wait, secret_is_news

pytestmark = pytest.mark.unit

CONNECTION = ("ClusterKeycloakConnection", None, "main")


def _runtime() -> Runtime:
    return Runtime(kube=None, clients=None, reconciler=None, probe_http=None)  # type: ignore[arg-type]


def test_a_connection_listed_at_start_up_wakes_nobody_but_its_later_changes_do():
    rt = _runtime()
    assert not rt.connection_changed(CONNECTION, 1, listed=True)
    assert not rt.connection_changed(CONNECTION, 1)
    assert rt.connection_changed(CONNECTION, 2)


def test_a_connection_created_after_start_up_wakes_the_mailconfigs_waiting_for_it():
    assert _runtime().connection_changed(CONNECTION, 1)


def _with(kind: str, state: str) -> dict[str, list[dict[str, str]]]:
    return {"conditions": [{"type": kind, "status": state}]}


def test_a_failing_connection_is_checked_again_when_a_mailconfig_gets_through_it():
    rt = _runtime()
    # Never checked, or checked Ready: a pass has nothing to prove.
    assert not rt.recheck_after_pass(CONNECTION, _with("Applied", "True"), now=100)
    rt.connection_checked(CONNECTION, _with("Ready", "True"))
    assert not rt.recheck_after_pass(CONNECTION, _with("Applied", "True"), now=100)

    rt.connection_checked(CONNECTION, _with("Ready", "False"))  # KeycloakUnreachable, say
    assert not rt.recheck_after_pass(CONNECTION, _with("Applied", "False"), now=100)
    assert not rt.recheck_after_pass(("ClusterKeycloakConnection", None, "other"), _with("Applied", "True"), now=100)
    assert rt.recheck_after_pass(CONNECTION, _with("Applied", "True"), now=100)
    assert not rt.recheck_after_pass(CONNECTION, _with("Applied", "True"), now=101)  # once, not per pass

    # A check that still fails while passes succeed: again, but not more often than every 30 s.
    rt.connection_checked(CONNECTION, _with("Ready", "False"))
    assert not rt.recheck_after_pass(CONNECTION, _with("Applied", "True"), now=110)
    assert rt.recheck_after_pass(CONNECTION, _with("Applied", "True"), now=131)


def test_a_secret_is_news_only_when_its_version_is_not_the_applied_one():
    assert not secret_is_news("uid-1", "41", secret_version("uid-1", "41"))
    assert secret_is_news("uid-1", "42", secret_version("uid-1", "41"))
    # Deleted and created again under the same name: a new uid, whatever the revision.
    assert secret_is_news("uid-2", "41", secret_version("uid-1", "41"))
    assert secret_is_news("uid-1", "41", None)


def _body(generation: int, requested: str | None = None) -> dict:
    annotations = {"kcmail.io/requested-at": requested} if requested else {}
    return {"metadata": {"generation": generation, "annotations": annotations}}


def test_a_mailconfig_first_seen_wakes_nothing_but_its_later_spec_and_requests_do():
    rt = _runtime()
    rt.wake_on_change("ns/mail", _body(3))
    assert not rt.waker("ns/mail").is_set()
    rt.wake_on_change("ns/mail", _body(3))  # a status write: same generation
    assert not rt.waker("ns/mail").is_set()
    rt.wake_on_change("ns/mail", _body(4))
    assert rt.waker("ns/mail").is_set()
    rt.waker("ns/mail").clear()
    rt.wake_on_change("ns/mail", _body(4, requested="now"))
    assert rt.waker("ns/mail").is_set()


def test_a_wake_before_the_loop_exists_is_kept_for_it():
    rt = _runtime()
    rt.wake("ns/early")  # the start-up listing of a rotated Secret, before kopf started the loop
    assert rt.waker("ns/early").is_set()


def _status(ready: str = "True", observed: int = 2, handled: str | None = None) -> dict:
    status = {"observedGeneration": observed, "conditions": [{"type": "Ready", "status": ready}]}
    if handled:
        status["lastHandledRequestedAt"] = handled
    return status


def test_after_a_start_only_a_ready_current_mailconfig_waits_for_its_slot():
    assert first_pass_can_wait(_status(), 2, {})
    assert not first_pass_can_wait(_status(observed=1), 2, {})  # the spec changed while the operator was down
    assert not first_pass_can_wait(_status(ready="False"), 2, {})  # failing: retry now
    assert not first_pass_can_wait(_status(ready="Unknown"), 2, {})
    assert not first_pass_can_wait({}, 1, {})  # never reconciled
    assert not first_pass_can_wait(_status(), 2, {"kcmail.io/requested-at": "t1"})  # a pass was asked for
    assert first_pass_can_wait(_status(handled="t1"), 2, {"kcmail.io/requested-at": "t1"})


async def test_stopping_a_loop_ends_it_and_forgets_its_waker_and_state():
    rt = _runtime()
    rt.loops.keep("ns/mail", {"metadata": {"namespace": "ns", "name": "mail", "uid": "u", "generation": 1}})
    waker = rt.waker("ns/mail")

    async def loop() -> None:
        while not rt.loops.stopping("ns/mail"):
            waker.clear()
            await loops.sleep(waker, 30)

    rt.loops.start("ns/mail", loop())
    await asyncio.sleep(0)
    await asyncio.wait_for(rt.stop_loop("ns/mail"), 5)

    assert not rt.loops.running("ns/mail")
    assert rt.loops.latest("ns/mail") is None
    assert rt.waker("ns/mail") is not waker  # a fresh signal for a MailConfig of the same name


class _ForgettingConnections:
    def __init__(self, resolved: dict[tuple[object, str, str], str] | None = None) -> None:
        self.forgotten: list[object] = []
        self.resolved = resolved or {}

    def forget(self, key: object) -> None:
        self.forgotten.append(key)

    def resolved_version(self, key: object, namespace: str, name: str) -> str | None:
        return self.resolved.get((key, namespace, name))


@pytest.mark.parametrize(("event_type", "rechecked"), [("LISTED", False), ("RELISTED", True), ("MODIFIED", True)])
async def test_a_secret_event_wakes_its_users_with_news_and_rechecks_its_connection_unless_listed(
        event_type: str, rechecked: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    from kcmail import handlers
    from kcmail.secretwatch import SecretEvent, SecretEventType

    rt = _runtime()
    rt.reconciler = type("Reconciler", (), {"connections": _ForgettingConnections()})()  # type: ignore[assignment]
    checked: list[tuple[object, ...]] = []

    async def recheck(runtime: Runtime, key: tuple[object, ...]) -> None:
        checked.append(key)

    monkeypatch.setattr(handlers, "_recheck_connection", recheck)
    indices = handlers.SecretIndices(
        secret_users={("mail", "current"): [("mail/a", secret_version("uid-c", "7"))],
                      ("mail", "rotated"): [("mail/b", secret_version("uid-r", "7"))]},
        connection_users={CONNECTION: ["mail/c"]},
        namespaced_connection_secrets={}, cluster_connection_secrets={("mail", "admin"): [CONNECTION]})

    # "rotated" is at a version its MailConfig has not applied; "current" at the one it has.
    for name, uid, version in (("current", "uid-c", "7"), ("rotated", "uid-r", "8"), ("admin", "uid-a", "3"),
                               ("unrelated", "uid-u", "1")):
        await handlers.secret_changed(rt, indices, SecretEvent(SecretEventType(event_type), "mail", name, uid, version))

    assert [key for key in ("mail/a", "mail/b", "mail/c") if rt.waker(key).is_set()] == (
        ["mail/b", "mail/c"] if rechecked else ["mail/b"])
    assert checked == ([CONNECTION] if rechecked else [])


@pytest.mark.parametrize(("event_type", "version", "woken"), [
    ("RELISTED", "3", False),  # the version the Connection's passes resolved: nothing new
    ("RELISTED", "4", True),  # changed while the watch had lost its place
    ("MODIFIED", "4", True),
    ("MODIFIED", "3", False),  # the passes read it before the watch delivered its change
])
async def test_a_connection_secret_wakes_its_users_only_at_a_version_they_did_not_resolve(
        event_type: str, version: str, woken: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    from kcmail import handlers
    from kcmail.connections import ConnectionKey
    from kcmail.secretwatch import SecretEvent, SecretEventType
    from kcmail.spec import ConnectionKind

    rt = _runtime()
    key = ConnectionKey(ConnectionKind.CLUSTER, "main", None)
    connections = _ForgettingConnections({(key, "mail", "admin"): secret_version("uid-a", "3")})
    rt.reconciler = type("Reconciler", (), {"connections": connections})()  # type: ignore[assignment]
    checked: list[tuple[object, ...]] = []

    async def recheck(runtime: Runtime, key: tuple[object, ...]) -> None:
        checked.append(key)

    monkeypatch.setattr(handlers, "_recheck_connection", recheck)
    indices = handlers.SecretIndices(secret_users={}, connection_users={CONNECTION: ["mail/c"]},
                                     namespaced_connection_secrets={},
                                     cluster_connection_secrets={("mail", "admin"): [CONNECTION]})

    await handlers.secret_changed(rt, indices, SecretEvent(SecretEventType(event_type), "mail", "admin", "uid-a",
                                                           version))

    assert rt.waker("mail/c").is_set() is woken
    assert checked == ([CONNECTION] if woken else [])
    assert connections.forgotten == ([key] if woken else [])
