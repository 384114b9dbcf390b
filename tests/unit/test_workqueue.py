"""The work queue on a real event loop: dedup, one pass per key at a time, delays, backoff, the worker bound."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kcmail.workqueue import RETRY_MAX_SECONDS, DelayHeap, Next, Requeue, Retry, WorkQueue, backoff

pytestmark = pytest.mark.unit

# Every wait in these tests ends within this long, whatever the queue does.
BOUND = 5.0


@dataclasses.dataclass
class Recorder:
    """A process function that records its calls and answers what the test says."""

    seen: list[str] = dataclasses.field(default_factory=list)
    running: int = 0
    most_running: int = 0
    hold: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    answer: Next = dataclasses.field(default_factory=Requeue)

    def __post_init__(self) -> None:
        self.hold.set()

    async def __call__(self, key: str) -> Next:
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        self.seen.append(key)
        try:
            await asyncio.wait_for(self.hold.wait(), BOUND)
        finally:
            self.running -= 1
        return self.answer


async def _until(condition, seconds: float = BOUND) -> None:
    async with asyncio.timeout(seconds):
        while not condition():  # noqa: ASYNC110 (polls the queue's state, which signals nothing)
            await asyncio.sleep(0.005)


@pytest.fixture
async def queue():
    q: WorkQueue[str] = WorkQueue(jitter=lambda: 0.0)
    yield q
    await q.stop(grace=1)


async def test_a_key_added_many_times_before_a_worker_takes_it_runs_once(queue):
    record = Recorder()
    for _ in range(5):
        queue.add("a")
    queue.add("b")
    queue.start(record, workers=2)
    await _until(lambda: len(record.seen) == 2)
    await asyncio.sleep(0.05)
    assert sorted(record.seen) == ["a", "b"]


async def test_a_key_added_while_its_pass_runs_runs_again_after_it_never_beside_it(queue):
    record = Recorder()
    record.hold.clear()
    queue.start(record, workers=4)
    queue.add("a")
    await _until(lambda: record.running == 1)
    queue.add("a")
    queue.add("a")
    await asyncio.sleep(0.05)
    assert record.most_running == 1  # four idle workers, and still one pass of "a"
    record.hold.set()
    await _until(lambda: len(record.seen) == 2)
    await asyncio.sleep(0.05)
    assert record.seen == ["a", "a"]  # the two adds while running: one more pass, not two
    assert record.most_running == 1


async def test_no_more_passes_run_at_once_than_there_are_workers(queue):
    record = Recorder()
    record.hold.clear()
    for i in range(20):
        queue.add(f"k{i}")
    queue.start(record, workers=3)
    await _until(lambda: record.running == 3)
    await asyncio.sleep(0.05)
    assert record.running == 3
    record.hold.set()
    await _until(lambda: len(record.seen) == 20)
    assert record.most_running == 3
    assert len(queue) == 0  # Requeue() asks for nothing more


async def test_a_requeue_after_runs_the_key_again_once_its_time_comes(queue):
    record = Recorder(answer=Requeue(after=0.2))
    queue.start(record, workers=1)
    queue.add("a")
    await _until(lambda: len(record.seen) == 1)
    await asyncio.sleep(0.1)
    assert len(record.seen) == 1
    assert queue.due_in("a") is not None
    await _until(lambda: len(record.seen) == 2, seconds=1.0)


async def test_an_earlier_add_after_wins_and_a_later_one_does_not_delay_the_key(queue):
    record = Recorder()
    queue.start(record, workers=1)
    queue.add_after("a", 30)
    queue.add_after("a", 0.1)
    queue.add_after("a", 60)
    assert 0 < (queue.due_in("a") or 99) <= 0.1
    await _until(lambda: record.seen == ["a"], seconds=1.0)


async def test_what_a_pass_asks_for_replaces_the_due_time_the_key_had(queue):
    record = Recorder(answer=Requeue(after=60))
    queue.add_after("a", 0.05)
    queue.start(record, workers=1)
    # Once the pass has returned its answer (recording the call comes before that: CI once looked between).
    await _until(lambda: record.seen == ["a"] and queue.due_in("a") is not None)
    # The pass just ran: its own 60 s stands, not the earlier slot it was started for.
    assert 59 < (queue.due_in("a") or 0) <= 60


async def test_failures_back_off_per_key_and_a_success_resets_them():
    q: WorkQueue[str] = WorkQueue(jitter=lambda: 0.0)
    record = Recorder(answer=Retry(cap=RETRY_MAX_SECONDS))
    try:
        q.start(record, workers=1)
        q.add("a")
        await _until(lambda: len(record.seen) == 1)
        await _until(lambda: q.due_in("a") is not None)
        assert q.failures("a") == 1
        assert 0.9 < (q.due_in("a") or 0) <= 1.0  # half of the first 2 s ceiling with jitter 0
        q.add("a")  # an event does not wait for the backoff
        await _until(lambda: len(record.seen) == 2)
        await _until(lambda: q.failures("a") == 2)
        assert 1.9 < (q.due_in("a") or 0) <= 2.0
        assert q.failures("b") == 0  # per key
        record.answer = Requeue()
        q.add("a")
        await _until(lambda: len(record.seen) == 3)
        await _until(lambda: q.failures("a") == 0)
        assert q.due_in("a") is None
    finally:
        await q.stop(grace=1)


async def test_an_exception_from_a_pass_is_retried_and_the_worker_lives_on(queue, caplog):
    calls: list[str] = []

    async def boom(key: str) -> Next:
        calls.append(key)
        if key == "bad":
            raise RuntimeError("the pass broke")
        return Requeue()

    queue.start(boom, workers=1)
    queue.add("bad")
    queue.add("good")
    await _until(lambda: calls == ["bad", "good"])
    assert queue.failures("bad") == 1
    assert queue.due_in("bad") is not None
    assert "RuntimeError: the pass broke" in caplog.text


async def test_a_forgotten_key_leaves_nothing_and_its_running_pass_schedules_nothing(queue):
    record = Recorder(answer=Requeue(after=0.05))
    record.hold.clear()
    queue.start(record, workers=1)
    queue.add("old")
    await _until(lambda: record.running == 1)
    queue.add("old")  # would run it again after this pass
    queue.forget("old")
    record.hold.set()
    await asyncio.sleep(0.2)
    assert record.seen == ["old"]
    assert len(queue) == 0
    queue.add_after("waiting", 30)
    queue.forget("waiting")
    assert queue.due_in("waiting") is None


async def test_stop_lets_a_pass_in_flight_finish_and_takes_no_more(queue):
    record = Recorder()
    record.hold.clear()
    queue.start(record, workers=1)
    queue.add("a")
    queue.add("b")
    await _until(lambda: record.running == 1)
    stopping = asyncio.create_task(queue.stop(grace=2))
    await asyncio.sleep(0.05)
    record.hold.set()
    await asyncio.wait_for(stopping, BOUND)
    assert record.seen == ["a"]  # "b" waits for the next process
    known = len(queue)
    queue.add("c")
    queue.add_after("d", 0)
    assert len(queue) == known


async def test_stop_cancels_a_pass_that_outlasts_its_timeout():
    q: WorkQueue[str] = WorkQueue()
    cancelled = asyncio.Event()

    async def stuck(key: str) -> Next:
        try:
            await asyncio.sleep(BOUND)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return Requeue()

    q.start(stuck, workers=1)
    q.add("a")
    await asyncio.sleep(0.05)
    await asyncio.wait_for(q.stop(grace=0.1), BOUND)
    assert cancelled.is_set()


def test_backoff_doubles_from_two_seconds_and_stops_at_the_cap():
    assert [backoff(n, 600, 0.999999) for n in (1, 2, 3)] == pytest.approx([2, 4, 8], rel=1e-5)
    assert backoff(20, 600, 0.999999) == pytest.approx(RETRY_MAX_SECONDS, rel=1e-5)
    assert backoff(20, 30, 0.999999) == pytest.approx(30, rel=1e-5)  # the interval caps it


@given(failures=st.integers(1, 60), cap=st.floats(1, 10_000), jitter=st.floats(0, 1, exclude_max=True))
def test_backoff_with_jitter_stays_between_half_the_ceiling_and_the_ceiling(failures, cap, jitter):
    ceiling = min(2.0 * 2 ** (failures - 1), cap, RETRY_MAX_SECONDS)
    assert ceiling / 2 <= backoff(failures, cap, jitter) <= ceiling


@given(st.lists(st.tuples(st.sampled_from("abcde"), st.floats(0, 100), st.booleans()), max_size=40),
       st.floats(0, 100))
def test_the_heap_releases_each_key_once_at_its_own_due_time(puts, now):
    heap: DelayHeap[str] = DelayHeap()
    expected: dict[str, float] = {}
    for key, due, replace in puts:
        heap.put(key, due, replace=replace)
        expected[key] = due if replace or key not in expected else min(expected[key], due)
    released = heap.pop_due(now)
    assert sorted(released) == sorted(k for k, due in expected.items() if due <= now)
    assert len(set(released)) == len(released)
    assert [expected[k] for k in released] == sorted(expected[k] for k in released)
    assert len(heap) == sum(1 for due in expected.values() if due > now)
