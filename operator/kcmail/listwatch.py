"""A resilient list and watch of Kubernetes objects, for kcmail's own watches (Secrets and MailConfigs).

List a page at a time, then watch from the listing's version; when the API server ends a watch, watch
again from the last version seen; when the version is gone (HTTP 410), list again; after any other
failure, list again after a jittered backoff that resets only once a watch has served. The owner decides
what an object means: it is handed each listed and watched object, and told when a listing is complete
(so that it can drop what the listing no longer holds).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

# A page of the listing: the memory a relist holds at once.
PAGE_SIZE = 500
# The API server ends each watch after this long; it is started again from the last version seen.
WATCH_SECONDS = 300
# After a failure (API server unreachable, refused), the listing starts over after up to 1, 2, 4 … 60 s,
# each delay jittered down to half, so that operators restarted together do not relist together.
RETRY_FIRST_SECONDS = 1.0
RETRY_MAX_SECONDS = 60.0
# A watch that lasted this long, or delivered an event, shows the API server serving it: the failures
# counted before it no longer lengthen the next delay. A listing alone shows nothing: the list may work
# while every watch fails at once, and resetting there would relist every second.
HEALTHY_WATCH_SECONDS = 10.0
GONE = 410
# A watch that the server or a proxy ends sooner than this is started again only after this long.
QUICK_END_SECONDS = 1.0

LISTED = "LISTED"  # by the first listing after the watch starts
RELISTED = "RELISTED"  # by a listing after the watch lost its place (a change may have been missed)
WATCHED = ("ADDED", "MODIFIED", "DELETED")

# One page of objects under a path, from a continue token; the watch lines after a version.
ListPage = Callable[[str, str | None], Awaitable[dict[str, Any]]]
WatchLines = Callable[[str, str], AsyncIterator[dict[str, Any]]]
# (event type, object): LISTED, RELISTED or one of WATCHED.
OnObject = Callable[[str, Mapping[str, Any]], Awaitable[None]]
# (path, event type of the listing): every object of the listing was handed over.
OnListed = Callable[[str, str], Awaitable[None]]


class WatchGone(Exception):
    """The API server no longer holds the version the watch asked to start from: list again."""


def watch_step(line: Mapping[str, Any], what: str = "watch") -> tuple[str, str | None, Mapping[str, Any]]:
    """One line of a watch: the resourceVersion to go on from, the event type to deliver (``None`` for a
    bookmark) and its object.

    Raises :class:`WatchGone` for the API server's 410 answer, and ``RuntimeError`` for any other error.
    """
    kind, obj = line.get("type"), line.get("object") or {}
    if kind == "ERROR":
        if obj.get("code") == GONE:
            raise WatchGone(obj.get("message", "resource version too old"))
        raise RuntimeError(f"the {what} failed: {obj.get('code')} {obj.get('message')}")
    version = (obj.get("metadata") or {}).get("resourceVersion", "")
    if kind == "BOOKMARK":
        return version, None, obj
    if kind not in WATCHED:
        raise RuntimeError(f"the {what} sent an event of unknown type {kind!r}")
    return version, str(kind), obj


def is_gone(error: Exception) -> bool:
    """The watch's version is gone: in a watch event, or as the answer to the watch request itself."""
    return isinstance(error, WatchGone) or getattr(error, "status", None) == GONE


def retry_delay(failures: int, jitter: float) -> float:
    """Seconds to wait before listing again after ``failures`` failures in a row (0 for none).

    ``jitter`` in [0, 1) picks a delay between half the exponential ceiling and the ceiling itself.
    """
    if failures <= 0:
        return 0.0
    ceiling = min(RETRY_FIRST_SECONDS * 2 ** (failures - 1), RETRY_MAX_SECONDS)
    return ceiling * (1 + jitter) / 2


def failures_after_watch(failures: int, *, lasted: float, delivered: int) -> int:
    """The failures in a row after a watch that ran ``lasted`` seconds and delivered ``delivered`` events."""
    return 0 if delivered > 0 or lasted >= HEALTHY_WATCH_SECONDS else failures


@dataclass
class _WatchProgress:
    """How far one watch got, kept even when it ends in an exception."""

    version: str
    started: float
    delivered: int = 0


async def _nothing(path: str, event_type: str) -> None:
    return None


class ListWatch:
    """Follows the objects under ``paths`` until cancelled; ``what`` names them in log lines."""

    def __init__(self, what: str, paths: tuple[str, ...], list_page: ListPage, watch_lines: WatchLines,
                 on_object: OnObject, on_listed: OnListed = _nothing) -> None:
        self._what = what
        self._paths = paths
        self._list_page = list_page
        self._watch_lines = watch_lines
        self._on_object = on_object
        self._on_listed = on_listed

    async def run(self) -> None:
        await asyncio.gather(*(self._follow(path) for path in self._paths))

    async def _follow(self, path: str) -> None:
        listed, failures = False, 0
        while True:
            progress = _WatchProgress(version="", started=time.monotonic())
            try:
                version = await self._list(path, RELISTED if listed else LISTED)
                listed = True
                while True:
                    progress = _WatchProgress(version=version, started=time.monotonic())
                    await self._watch(path, progress)
                    version = progress.version
                    lasted = time.monotonic() - progress.started
                    failures = failures_after_watch(failures, lasted=lasted, delivered=progress.delivered)
                    if lasted < QUICK_END_SECONDS:
                        # A proxy that cuts streams at once must not make this a loop of requests.
                        await asyncio.sleep(QUICK_END_SECONDS)
            except Exception as error:  # the watch outlives any one failure
                failures = failures_after_watch(failures, lasted=time.monotonic() - progress.started,
                                                delivered=progress.delivered)
                jitter = random.random()  # noqa: S311 (spreads retries; nothing secret)
                if is_gone(error):
                    # Expected after a watch that served well (etcd compacted past its version): list at once.
                    # A version gone again and again without a watch in between is a failure like any other.
                    delay = retry_delay(failures, jitter)
                    failures += 1
                    log.debug("%s %s: its version is gone, listing again in %.1f s", self._what, path, delay)
                else:
                    failures += 1
                    delay = retry_delay(failures, jitter)
                    log.warning("%s %s failed, listing again in %.1f s: %s: %s", self._what, path, delay,
                                type(error).__name__, error)
                if delay:
                    await asyncio.sleep(delay)

    async def _list(self, path: str, event_type: str) -> str:
        """Delivers every object under ``path``, a page at a time; returns the version to watch from."""
        log.debug("%s %s: listing (%s)", self._what, path, event_type)
        continue_token: str | None = None
        while True:
            page = await self._list_page(path, continue_token)
            for item in page.get("items") or []:
                await self._deliver(event_type, item)
            meta = page.get("metadata") or {}
            continue_token = meta.get("continue") or None
            if continue_token is None:
                await self._on_listed(path, event_type)
                return str(meta.get("resourceVersion", ""))

    async def _watch(self, path: str, progress: _WatchProgress) -> None:
        """Delivers the changes after ``progress.version`` until the API server ends the watch, keeping the last
        version seen and the count of events delivered in ``progress``."""
        async for line in self._watch_lines(path, progress.version):
            next_version, event_type, obj = watch_step(line, self._what)
            progress.version = next_version or progress.version
            if event_type is not None:
                progress.delivered += 1
                await self._deliver(event_type, obj)

    async def _deliver(self, event_type: str, obj: Mapping[str, Any]) -> None:
        try:
            await self._on_object(event_type, obj)
        except Exception as error:  # one object's handling must not stop the watch
            meta = obj.get("metadata") or {}
            log.warning("%s: handling the %s event of %s/%s failed: %s: %s", self._what, event_type,
                        meta.get("namespace", ""), meta.get("name", ""), type(error).__name__, error)
