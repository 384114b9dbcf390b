"""Each MailConfig's own loop: its compact state, its start, its stop (a pass in flight finishes first)."""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging

import pytest

from kcmail import loops
from kcmail.loops import Loops
from kcmail.reconcile import REQUESTED_AT, MailConfigObject

pytestmark = pytest.mark.unit

BODY = {
    "apiVersion": "kcmail.io/v1alpha1", "kind": "MailConfig",
    "metadata": {"namespace": "team", "name": "mail", "uid": "u-1", "generation": 3,
                 "creationTimestamp": "2026-11-28T08:00:00Z", "resourceVersion": "77",
                 "annotations": {REQUESTED_AT: "t1",
                                 "kubectl.kubernetes.io/last-applied-configuration": "{" + "x" * 4000 + "}"},
                 "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {"f:realm": {}}}}] * 20,
                 "finalizers": ["kcmail.io/finalizer"]},
    "spec": {"realm": "acme", "connectionRef": {"name": "main"}, "smtp": {"host": "smtp.example", "port": 587}},
    "status": {"observedGeneration": 3, "conditions": [{"type": "Ready", "status": "True", "reason": "Ready",
                                                        "message": "mail works"}]},
}


def test_the_state_a_loop_keeps_round_trips_and_holds_only_what_a_pass_reads():
    obj = MailConfigObject.from_body(BODY)
    packed = obj.pack()

    assert MailConfigObject.unpack(packed) == obj
    assert obj.annotations == {REQUESTED_AT: "t1"}
    assert (obj.namespace, obj.name, obj.uid, obj.generation) == ("team", "mail", "u-1", 3)
    assert obj.spec == BODY["spec"]
    assert obj.status == BODY["status"]
    # Neither managedFields nor kubectl's copy of the object: a fraction of the body's JSON.
    assert len(packed) * 5 < len(json.dumps(BODY))


async def test_a_loop_reads_the_latest_state_and_stops_when_asked():
    rt_loops, wake, seen = Loops(), asyncio.Event(), []

    async def loop() -> None:
        while not rt_loops.stopping("team/mail"):
            latest = rt_loops.latest("team/mail")
            assert latest is not None
            seen.append(latest.generation)
            wake.clear()
            await loops.sleep(wake, 30)

    rt_loops.keep("team/mail", BODY)
    rt_loops.start("team/mail", loop())
    await asyncio.sleep(0)
    rt_loops.keep("team/mail", {**BODY, "metadata": {**BODY["metadata"], "generation": 4}})
    wake.set()
    await asyncio.sleep(0.01)
    assert rt_loops.running("team/mail")

    await asyncio.wait_for(rt_loops.stop("team/mail", wake), 5)

    assert seen == [3, 4]
    assert not rt_loops.running("team/mail")
    assert rt_loops.latest("team/mail") is None
    assert rt_loops.running_keys() == []


async def test_a_second_start_for_a_running_key_is_dropped():
    rt_loops, wake, runs = Loops(), asyncio.Event(), []

    async def loop(n: int) -> None:
        runs.append(n)
        while not rt_loops.stopping("k"):
            await loops.sleep(wake, 30)

    rt_loops.start("k", loop(1))
    rt_loops.start("k", loop(2))
    await asyncio.sleep(0.01)
    await asyncio.wait_for(rt_loops.stop("k", wake), 5)
    assert runs == [1]


async def test_stop_lets_a_pass_in_flight_finish_and_cancels_one_that_overstays(monkeypatch):
    rt_loops, wake, finished = Loops(), asyncio.Event(), []

    async def short_pass() -> None:
        await asyncio.sleep(0.05)
        finished.append("short")

    async def endless_pass() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            finished.append("cancelled")

    rt_loops.start("a", short_pass())
    await asyncio.sleep(0)
    await asyncio.wait_for(rt_loops.stop("a", wake), 5)
    assert finished == ["short"]

    monkeypatch.setattr(loops, "STOP_TIMEOUT_SECONDS", 0.05)
    rt_loops.start("b", endless_pass())
    await asyncio.sleep(0)
    await asyncio.wait_for(rt_loops.stop("b", wake), 5)
    assert finished == ["short", "cancelled"]
    assert not rt_loops.running("b")


async def test_a_loop_that_dies_is_logged_without_detail_beyond_its_error_and_can_start_again(caplog):
    rt_loops = Loops()

    async def broken() -> None:
        raise ValueError("spec is not a mapping")

    with caplog.at_level(logging.ERROR, logger="kcmail"):
        rt_loops.start("k", broken())
        await asyncio.sleep(0.01)
    assert not rt_loops.running("k")
    assert "MailConfig k: loop ended unexpectedly: ValueError: spec is not a mapping" in caplog.text

    wake = asyncio.Event()
    rt_loops.start("k", loops.sleep(wake, 30))  # the next event starts a new loop
    assert rt_loops.running("k")
    await asyncio.wait_for(rt_loops.stop("k", wake), 5)


async def test_sleep_ends_at_its_timeout_or_when_woken():
    wake = asyncio.Event()
    loop = asyncio.get_running_loop()
    started = loop.time()
    await loops.sleep(wake, 0.05)
    assert loop.time() - started >= 0.05

    sleeper = asyncio.create_task(loops.sleep(wake, 3600))
    await asyncio.sleep(0)
    wake.set()
    await asyncio.wait_for(sleeper, 5)


async def test_loops_run_in_the_first_starting_events_context_and_keep_no_other():
    # kopf's context variables carry both what kopf.event needs and the event's body.
    event_body: contextvars.ContextVar[str] = contextvars.ContextVar("event_body")
    rt_loops, seen = Loops(), {}
    wakes = {"first": asyncio.Event(), "second": asyncio.Event()}

    async def loop(key: str) -> None:
        seen[key] = event_body.get(None)
        while not rt_loops.stopping(key):
            wakes[key].clear()
            await loops.sleep(wakes[key], 30)

    def start_from_event(key: str) -> None:
        event_body.set(f"body of {key}")
        rt_loops.start(key, loop(key))

    contextvars.copy_context().run(start_from_event, "first")
    contextvars.copy_context().run(start_from_event, "second")
    await asyncio.sleep(0.01)

    assert seen == {"first": "body of first", "second": "body of first"}
    for key, wake in wakes.items():
        await asyncio.wait_for(rt_loops.stop(key, wake), 5)
