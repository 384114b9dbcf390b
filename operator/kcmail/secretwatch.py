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

import enum
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from kcmail.listwatch import (
    HEALTHY_WATCH_SECONDS,
    PAGE_SIZE,
    QUICK_END_SECONDS,
    RETRY_FIRST_SECONDS,
    RETRY_MAX_SECONDS,
    WATCH_SECONDS,
    ListWatch,
    WatchGone,
    failures_after_watch,
    retry_delay,
)
from kcmail.listwatch import watch_step as _watch_step

__all__ = ["HEALTHY_WATCH_SECONDS", "PAGE_SIZE", "QUICK_END_SECONDS", "RETRY_FIRST_SECONDS", "RETRY_MAX_SECONDS",
           "SecretEvent", "SecretEventType", "SecretWatch", "WatchGone", "failures_after_watch", "retry_delay",
           "secrets_path", "watch_step"]


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


def watch_step(line: Mapping[str, Any]) -> tuple[str, SecretEvent | None]:
    """One line of the Secret watch: the resourceVersion to go on from, and the event to deliver, if any."""
    version, event_type, obj = _watch_step(line, "Secret watch")
    return version, None if event_type is None else event_of(SecretEventType(event_type), obj)


class SecretWatch:
    """Follows the Secrets of ``namespaces`` (all namespaces when empty) until cancelled."""

    def __init__(self, source: MetadataSource, namespaces: tuple[str, ...], on_event: OnEvent) -> None:
        async def on_object(event_type: str, obj: Mapping[str, Any]) -> None:
            await on_event(event_of(SecretEventType(event_type), obj))

        def list_page(path: str, continue_token: str | None) -> Awaitable[dict[str, Any]]:
            return source.list_metadata(path, limit=PAGE_SIZE, continue_token=continue_token)

        def watch_lines(path: str, version: str) -> AsyncIterator[dict[str, Any]]:
            return source.watch_metadata(path, resource_version=version, timeout_seconds=WATCH_SECONDS)

        paths = tuple(secrets_path(namespace) for namespace in namespaces or (None,))
        self._watch = ListWatch("Secret watch", paths, list_page, watch_lines, on_object)

    async def run(self) -> None:
        await self._watch.run()
