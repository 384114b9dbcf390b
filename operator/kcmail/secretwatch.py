"""Which Secrets changed: a list and watch of the Secrets' metadata only, keeping nothing per Secret.

kcmail needs a Secret's namespace, name, uid and resourceVersion to tell whether a Secret that a MailConfig
or a Connection refers to has changed; the content is read when a pass needs it. kopf would watch whole
Secrets, keep state for each one it sees, and at start-up hold every listed Secret in a worker of its own
until its indices are complete: about 8 KiB per Secret for as long as the operator runs, and a start-up
burst with all of them at once. The API server sends only metadata when asked for PartialObjectMetadata,
so a namespace full of large Secrets (Helm keeps each release in one) costs kcmail one page of names at a
time.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

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


class SecretEventType(enum.Enum):
    LISTED = "LISTED"  # by the first listing after the operator starts
    RELISTED = "RELISTED"  # by a listing after the watch lost its place (a change may have been missed)
    ADDED = "ADDED"
    MODIFIED = "MODIFIED"
    DELETED = "DELETED"


@dataclass(frozen=True)
class SecretEvent:
    type: SecretEventType
    namespace: str
    name: str
    uid: str
    resource_version: str


class MetadataSource(Protocol):
    """What the watch needs of the Kubernetes API (``kcmail.kube.Kube``)."""

    async def list_metadata(self, path: str, *, limit: int, continue_token: str | None) -> dict[str, Any]: ...

    def watch_metadata(self, path: str, *, resource_version: str,
                       timeout_seconds: int) -> AsyncIterator[dict[str, Any]]: ...


OnEvent = Callable[[SecretEvent], Awaitable[None]]


def secrets_path(namespace: str | None) -> str:
    """The Secrets of one namespace, or of all namespaces for ``None``."""
    return "/api/v1/secrets" if namespace is None else f"/api/v1/namespaces/{namespace}/secrets"


def event_of(event_type: SecretEventType, obj: Mapping[str, Any]) -> SecretEvent:
    meta = obj.get("metadata") or {}
    return SecretEvent(type=event_type, namespace=meta.get("namespace", ""), name=meta.get("name", ""),
                       uid=meta.get("uid", ""), resource_version=meta.get("resourceVersion", ""))


class WatchGone(Exception):
    """The API server no longer holds the version the watch asked to start from: list again."""


def watch_step(line: Mapping[str, Any]) -> tuple[str, SecretEvent | None]:
    """One line of a watch: the resourceVersion to go on from, and the event to deliver, if any.

    Raises :class:`WatchGone` for the API server's 410 answer, and ``RuntimeError`` for any other error.
    """
    kind, obj = line.get("type"), line.get("object") or {}
    if kind == "ERROR":
        if obj.get("code") == GONE:
            raise WatchGone(obj.get("message", "resource version too old"))
        raise RuntimeError(f"the Secret watch failed: {obj.get('code')} {obj.get('message')}")
    version = (obj.get("metadata") or {}).get("resourceVersion", "")
    if kind == "BOOKMARK":
        return version, None
    try:
        event_type = SecretEventType(kind)
    except ValueError:
        raise RuntimeError(f"the Secret watch sent an event of unknown type {kind!r}") from None
    return version, event_of(event_type, obj)


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


class SecretWatch:
    """Follows the Secrets of ``namespaces`` (all namespaces when empty) until cancelled."""

    def __init__(self, source: MetadataSource, namespaces: tuple[str, ...], on_event: OnEvent) -> None:
        self._source = source
        self._namespaces: tuple[str | None, ...] = namespaces or (None,)
        self._on_event = on_event

    async def run(self) -> None:
        await asyncio.gather(*(self._follow(namespace) for namespace in self._namespaces))

    async def _follow(self, namespace: str | None) -> None:
        path, listed, failures = secrets_path(namespace), False, 0
        while True:
            progress = _WatchProgress(version="", started=time.monotonic())
            try:
                version = await self._list(path, SecretEventType.RELISTED if listed else SecretEventType.LISTED)
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
                    log.debug("Secret watch %s: its version is gone, listing again in %.1f s", path, delay)
                else:
                    failures += 1
                    delay = retry_delay(failures, jitter)
                    log.warning("Secret watch %s failed, listing again in %.1f s: %s: %s", path, delay,
                                type(error).__name__, error)
                if delay:
                    await asyncio.sleep(delay)

    async def _list(self, path: str, event_type: SecretEventType) -> str:
        """Delivers every Secret under ``path``, a page at a time; returns the version to watch from."""
        log.debug("Secret watch %s: listing (%s)", path, event_type.value)
        continue_token: str | None = None
        while True:
            page = await self._source.list_metadata(path, limit=PAGE_SIZE, continue_token=continue_token)
            for item in page.get("items") or []:
                await self._deliver(event_of(event_type, item))
            meta = page.get("metadata") or {}
            continue_token = meta.get("continue") or None
            if continue_token is None:
                return str(meta.get("resourceVersion", ""))

    async def _watch(self, path: str, progress: _WatchProgress) -> None:
        """Delivers the changes after ``progress.version`` until the API server ends the watch, keeping the last
        version seen and the count of events delivered in ``progress``."""
        async for line in self._source.watch_metadata(path, resource_version=progress.version,
                                                      timeout_seconds=WATCH_SECONDS):
            next_version, event = watch_step(line)
            progress.version = next_version or progress.version
            if event is not None:
                progress.delivered += 1
                await self._deliver(event)

    async def _deliver(self, event: SecretEvent) -> None:
        try:
            await self._on_event(event)
        except Exception as error:  # one Secret's handling must not stop the watch
            log.warning("Secret %s/%s: handling its %s event failed: %s: %s", event.namespace, event.name,
                        event.type.value, type(error).__name__, error)

