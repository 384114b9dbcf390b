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
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)

# A page of the listing: the memory a relist holds at once.
PAGE_SIZE = 500
# The API server ends each watch after this long; it is started again from the last version seen.
WATCH_SECONDS = 300
# After a failure (API server unreachable, refused), the listing starts over after 1, 2, 4 … 60 s.
RETRY_FIRST_SECONDS = 1.0
RETRY_MAX_SECONDS = 60.0
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


def retry_delay(failures: int) -> float:
    return min(RETRY_FIRST_SECONDS * 2 ** max(failures - 1, 0), RETRY_MAX_SECONDS)


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
            try:
                version = await self._list(path, SecretEventType.RELISTED if listed else SecretEventType.LISTED)
                listed, failures = True, 0
                while True:
                    started = time.monotonic()
                    version = await self._watch(path, version)
                    if time.monotonic() - started < QUICK_END_SECONDS:
                        # A proxy that cuts streams at once must not make this a loop of requests.
                        await asyncio.sleep(QUICK_END_SECONDS)
            except Exception as error:  # the watch outlives any one failure
                if is_gone(error):
                    log.debug("Secret watch %s: its version is gone, listing again", path)
                    continue
                failures += 1
                delay = retry_delay(failures)
                log.warning("Secret watch %s failed, listing again in %.0f s: %s: %s", path, delay,
                            type(error).__name__, error)
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

    async def _watch(self, path: str, version: str) -> str:
        """Delivers the changes after ``version`` until the API server ends the watch; returns the last version."""
        async for line in self._source.watch_metadata(path, resource_version=version, timeout_seconds=WATCH_SECONDS):
            next_version, event = watch_step(line)
            version = next_version or version
            if event is not None:
                await self._deliver(event)
        return version

    async def _deliver(self, event: SecretEvent) -> None:
        try:
            await self._on_event(event)
        except Exception as error:  # one Secret's handling must not stop the watch
            log.warning("Secret %s/%s: handling its %s event failed: %s: %s", event.namespace, event.name,
                        event.type.value, type(error).__name__, error)

