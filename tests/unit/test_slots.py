"""The bound on calls in flight to a Keycloak: never exceeded, and the later calls of passes under way go
before new passes' first calls."""

from __future__ import annotations

import asyncio

import pytest

from kcmail.slots import Slots

pytestmark = pytest.mark.unit


async def _call(slots: Slots, name: str, log: list[str], gate: asyncio.Event, *, follow_up: bool = False) -> None:
    async with slots.held(follow_up=follow_up):
        log.append(name)
        await gate.wait()


async def test_waiting_follow_ups_go_before_waiting_first_calls_each_in_arrival_order():
    slots, log, gate = Slots(1), [], asyncio.Event()
    holder = asyncio.create_task(_call(slots, "holder", log, gate))
    await asyncio.sleep(0)
    names = [("first-1", False), ("follow-1", True), ("first-2", False), ("follow-2", True)]
    tasks = [asyncio.create_task(_call(slots, name, log, gate, follow_up=follow)) for name, follow in names]
    await asyncio.sleep(0)
    gate.set()
    await asyncio.wait_for(asyncio.gather(holder, *tasks), timeout=5)
    assert log == ["holder", "follow-1", "follow-2", "first-1", "first-2"]


async def test_never_more_holders_than_the_limit():
    slots, inside, peak = Slots(3), 0, 0

    async def call(follow_up: bool) -> None:
        nonlocal inside, peak
        async with slots.held(follow_up=follow_up):
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(0.001)
            inside -= 1

    await asyncio.wait_for(asyncio.gather(*(call(i % 3 == 0) for i in range(60))), timeout=10)
    assert peak == 3


async def test_a_cancelled_waiter_takes_no_slot_and_one_cancelled_as_it_is_granted_passes_it_on():
    slots, log, gate = Slots(1), [], asyncio.Event()
    holder = asyncio.create_task(_call(slots, "holder", log, gate))
    await asyncio.sleep(0)
    cancelled = asyncio.create_task(_call(slots, "cancelled", log, gate, follow_up=True))
    granted_then_cancelled = asyncio.create_task(_call(slots, "late", log, gate))
    after = asyncio.create_task(_call(slots, "after", log, gate))
    await asyncio.sleep(0)
    cancelled.cancel()
    gate.set()
    # The holder leaves and hands its slot to "late", which is cancelled before it runs.
    await asyncio.sleep(0)
    granted_then_cancelled.cancel()
    await asyncio.wait_for(asyncio.gather(holder, after, cancelled, granted_then_cancelled,
                                          return_exceptions=True), timeout=5)
    assert "cancelled" not in log
    assert log[0] == "holder"
    assert log[-1] == "after"
    # Every slot came back: one more holder gets in at once.
    async with asyncio.timeout(1):
        async with slots.held():
            pass
