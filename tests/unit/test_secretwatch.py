"""kcmail.secretwatch: list, watch, relist on 410, start over after a failure, and the `-n` names it watches.

The transport is a double that answers as the API server's list and watch do; the integration test
test_secret_watch.py runs the watch against the real API server.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kcmail import cli, handlers, listwatch, secretwatch
from kcmail.kube import KubeError, parse_lines
from kcmail.secretwatch import (
    HEALTHY_WATCH_SECONDS,
    RETRY_FIRST_SECONDS,
    RETRY_MAX_SECONDS,
    SecretEvent,
    SecretEventType,
    SecretWatch,
    WatchGone,
    failures_after_watch,
    retry_delay,
    secrets_path,
    watch_step,
)


def _meta(name: str, version: str, namespace: str = "mail") -> dict[str, Any]:
    return {"metadata": {"namespace": namespace, "name": name, "uid": f"uid-{name}", "resourceVersion": version}}


class ApiDouble:
    """Pages of a listing and scripted watches; each watch is a list of lines, or an exception to raise."""

    def __init__(self, pages: list[dict[str, Any]], watches: list[list[dict[str, Any]] | Exception]) -> None:
        self.pages, self.watches = pages, watches
        self.lists: list[tuple[str, str | None]] = []
        self.watched_from: list[str] = []
        self.done = asyncio.Event()

    async def list_metadata(self, path: str, *, limit: int, continue_token: str | None) -> dict[str, Any]:
        assert limit == secretwatch.PAGE_SIZE
        self.lists.append((path, continue_token))
        return self.pages[(len(self.lists) - 1) % len(self.pages)]

    async def watch_metadata(self, path: str, *, resource_version: str,
                             timeout_seconds: int) -> AsyncIterator[dict[str, Any]]:
        self.watched_from.append(resource_version)
        if not self.watches:
            self.done.set()
            await asyncio.Event().wait()  # a quiet watch: the test ends it
        script = self.watches.pop(0)
        if isinstance(script, Exception):
            raise script
        for line in script:
            yield line


async def _run(api: ApiDouble, namespaces: tuple[str, ...] = ("mail",)) -> list[SecretEvent]:
    events: list[SecretEvent] = []

    async def record(event: SecretEvent) -> None:
        events.append(event)

    task = asyncio.create_task(SecretWatch(api, namespaces, record).run())
    try:
        await asyncio.wait_for(api.done.wait(), timeout=10)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return events


def _summary(events: list[SecretEvent]) -> list[tuple[str, str, str]]:
    return [(e.type.value, e.name, e.resource_version) for e in events]


PAGES = [{"metadata": {"continue": "next"}, "items": [_meta("a", "10")]},
         {"metadata": {"resourceVersion": "20"}, "items": [_meta("b", "11")]}]


async def test_lists_every_page_then_watches_from_the_listings_version() -> None:
    api = ApiDouble(PAGES, [[{"type": "MODIFIED", "object": _meta("a", "21")},
                             {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "25"}}},
                             {"type": "DELETED", "object": _meta("b", "26")}]])

    events = await _run(api)

    assert api.lists == [("/api/v1/namespaces/mail/secrets", None), ("/api/v1/namespaces/mail/secrets", "next")]
    assert _summary(events) == [("LISTED", "a", "10"), ("LISTED", "b", "11"), ("MODIFIED", "a", "21"),
                                ("DELETED", "b", "26")]
    # Each watch goes on from the last version seen, a bookmark's included.
    assert api.watched_from == ["20", "26"]
    assert events[0] == SecretEvent(SecretEventType.LISTED, "mail", "a", "uid-a", "10")


async def test_a_gone_version_lists_again_and_says_so() -> None:
    gone = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old resource version"}}
    api = ApiDouble(PAGES, [[gone]])

    events = await _run(api)

    assert [e.type.value for e in events] == ["LISTED", "LISTED", "RELISTED", "RELISTED"]
    assert api.watched_from == ["20", "20"]


async def test_a_gone_answer_to_the_watch_request_lists_again_without_a_failure(
        caplog: pytest.LogCaptureFixture) -> None:
    api = ApiDouble(PAGES, [KubeError("GET", "/api/v1/namespaces/mail/secrets", 410, "too old resource version")])

    with caplog.at_level(logging.DEBUG, logger=listwatch.__name__):
        events = await _run(api)

    assert [e.type.value for e in events] == ["LISTED", "LISTED", "RELISTED", "RELISTED"]
    assert [r.levelno for r in caplog.records if "failed" in r.getMessage()] == []
    assert any("version is gone" in r.getMessage() for r in caplog.records)


async def test_a_watch_that_ends_at_once_is_started_again_only_after_a_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    pauses: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)
        await real_sleep(0)

    monkeypatch.setattr(listwatch.asyncio, "sleep", sleep)
    api = ApiDouble(PAGES, [[], [], [{"type": "ADDED", "object": _meta("c", "30")}]])

    events = await _run(api)

    assert pauses == [secretwatch.QUICK_END_SECONDS] * 3
    assert api.watched_from == ["20", "20", "20", "30"]
    assert _summary(events)[-1] == ("ADDED", "c", "30")


async def test_a_failure_starts_over_after_a_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(secretwatch, "RETRY_FIRST_SECONDS", 0.01)
    api = ApiDouble(PAGES, [ConnectionResetError("the API server went away")])

    events = await _run(api)

    assert [e.type.value for e in events] == ["LISTED", "LISTED", "RELISTED", "RELISTED"]


@given(failures=st.integers(min_value=1, max_value=200), jitter=st.floats(min_value=0, max_value=1, exclude_max=True))
def test_a_retry_delay_is_jittered_between_half_its_ceiling_and_the_ceiling(failures: int, jitter: float) -> None:
    ceiling = min(RETRY_FIRST_SECONDS * 2 ** (failures - 1), RETRY_MAX_SECONDS)
    assert ceiling / 2 <= retry_delay(failures, jitter) <= ceiling
    # Another failure never shortens the longest wait, and the shortest wait keeps growing up to the cap.
    assert retry_delay(failures + 1, 0) >= retry_delay(failures, 0)
    assert retry_delay(failures + 1, 0) == min(2 * retry_delay(failures, 0), RETRY_MAX_SECONDS / 2)


def test_no_failure_means_no_wait() -> None:
    assert retry_delay(0, 0.7) == 0


@given(failures=st.integers(min_value=0, max_value=50), lasted=st.floats(min_value=0, max_value=1e6),
       delivered=st.integers(min_value=0, max_value=1000))
def test_only_a_watch_that_lasted_or_delivered_forgets_the_failures_before_it(failures: int, lasted: float,
                                                                             delivered: int) -> None:
    healthy = delivered > 0 or lasted >= HEALTHY_WATCH_SECONDS
    assert failures_after_watch(failures, lasted=lasted, delivered=delivered) == (0 if healthy else failures)


async def _pauses_of(api: ApiDouble, monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The sleeps the watch took until ``api`` ran out of scripted watches, with the longest jitter."""
    pauses: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)
        await real_sleep(0)

    monkeypatch.setattr(listwatch.asyncio, "sleep", sleep)
    monkeypatch.setattr("random.random", lambda: 0.9999999)
    await _run(api)
    return [round(pause, 3) for pause in pauses]


async def test_a_watch_that_fails_at_once_after_every_listing_backs_off_more_each_time(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The listing works, the watch is refused at once: the listing's success must not reset the backoff.
    api = ApiDouble(PAGES, [ConnectionResetError("refused")] * 8)

    pauses = await _pauses_of(api, monkeypatch)

    assert pauses == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    assert len(api.lists) == 2 * 9  # two pages per listing: the first and one after each failure


async def test_a_watch_that_delivered_an_event_starts_the_backoff_over(monkeypatch: pytest.MonkeyPatch) -> None:
    refused = ConnectionResetError("refused")

    class DeliversThenFails(ApiDouble):
        async def watch_metadata(self, path: str, *, resource_version: str,
                                 timeout_seconds: int) -> AsyncIterator[dict[str, Any]]:
            if self.watches and self.watches[0] == "event, then refused":
                self.watches.pop(0)
                yield {"type": "ADDED", "object": _meta("c", "30")}
                raise refused
            async for line in super().watch_metadata(path, resource_version=resource_version,
                                                     timeout_seconds=timeout_seconds):
                yield line

    api = DeliversThenFails(PAGES, [refused, refused, "event, then refused", refused])  # type: ignore[list-item]

    pauses = await _pauses_of(api, monkeypatch)

    assert pauses == [1.0, 2.0, 1.0, 2.0]


async def test_a_version_gone_again_right_after_each_listing_backs_off(monkeypatch: pytest.MonkeyPatch) -> None:
    gone = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old resource version"}}
    api = ApiDouble(PAGES, [[gone]] * 4)

    pauses = await _pauses_of(api, monkeypatch)

    # The first gone version is the ordinary kind and is listed again at once; the repeats back off.
    assert pauses == [1.0, 2.0, 4.0]


async def test_a_failing_handler_does_not_stop_the_watch() -> None:
    api = ApiDouble(PAGES, [[{"type": "ADDED", "object": _meta("c", "30")}]])
    seen: list[str] = []

    async def fail_for_a(event: SecretEvent) -> None:
        seen.append(event.name)
        if event.name == "a":
            raise RuntimeError("boom")

    task = asyncio.create_task(SecretWatch(api, ("mail",), fail_for_a).run())
    await asyncio.wait_for(api.done.wait(), timeout=10)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)

    assert seen == ["a", "b", "c"]


async def test_every_namespace_is_followed_and_none_means_all() -> None:
    api = ApiDouble([{"metadata": {"resourceVersion": "1"}, "items": []}], [])
    api.done = asyncio.Event()
    await _run(api, ("one", "two"))
    assert sorted(path for path, _ in api.lists) == ["/api/v1/namespaces/one/secrets", "/api/v1/namespaces/two/secrets"]
    assert secrets_path(None) == "/api/v1/secrets"


def test_watch_errors_other_than_gone_are_failures() -> None:
    with pytest.raises(WatchGone):
        watch_step({"type": "ERROR", "object": {"code": 410}})
    with pytest.raises(RuntimeError, match="500 internal"):
        watch_step({"type": "ERROR", "object": {"code": 500, "message": "internal"}})
    with pytest.raises(RuntimeError, match="unknown type 'SURPRISE'"):
        watch_step({"type": "SURPRISE", "object": _meta("a", "1")})


def test_watch_lines_split_across_chunks() -> None:
    lines, rest = parse_lines(b'{"type": "ADDED"}\n{"type": "MOD')
    assert (lines, rest) == ([{"type": "ADDED"}], b'{"type": "MOD')
    lines, rest = parse_lines(rest + b'IFIED"}\n\n')
    assert (lines, rest) == ([{"type": "MODIFIED"}], b"")


@pytest.mark.parametrize("name", ["tenant-*", "Tenant", "-a", "a" * 64, ""])
def test_a_namespace_pattern_or_bad_name_is_refused(name: str, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(handlers, "configure", lambda options: pytest.fail(f"the operator was configured: {options}"))
    with pytest.raises(SystemExit) as exit_:
        cli.main(["run", f"--namespace={name}"])
    assert exit_.value.code == 2
    assert f"{name!r} is not a namespace name" in capsys.readouterr().err
