"""Each MailConfig's reconcile loop as a task kcmail owns, with only the fields a pass reads.

A kopf daemon would run the loop as well, but for every object with a daemon kopf keeps the latest full
body and its own bookkeeping (a task tree, a logger, a stopper): about 25 KiB per MailConfig, the larger
part of the operator's memory at a thousand. Here a MailConfig's latest state is kept as compact JSON
(about 2 KiB), parsed once per pass, and the loop's task is the only task it has.

The loop is started by the MailConfig's first event (the start-up listing included) and stopped before
the MailConfig is finalized, so a pass never overlaps the clean-up of the same realm.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import Coroutine, Mapping
from typing import Any

from kcmail.reconcile import MailConfigObject

# How long a pass in flight may take to finish when its loop is stopped, before it is cancelled.
STOP_TIMEOUT_SECONDS = 10.0

log = logging.getLogger("kcmail")


class Loops:
    """The running loops and the latest state of each MailConfig, keyed by ``namespace/name``.

    Every loop runs in a copy of one context: that of the first event that started a loop. kopf sets what
    its Event poster needs (the operator's Event queue) only while it handles an object, so a loop must
    start from such a context; but kopf's variables there also hold that event's whole body, and a task
    (or callback) created in each starting event's own context would keep one body per loop alive.
    """

    def __init__(self) -> None:
        self._context: contextvars.Context | None = None
        self._states: dict[str, bytes] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stopping: set[str] = set()

    def keep(self, key: str, body: Mapping[str, Any]) -> None:
        """Remember the MailConfig as this event shows it; its loop reads it at the next pass."""
        self._states[key] = MailConfigObject.from_body(body).pack()

    def latest(self, key: str) -> MailConfigObject | None:
        state = self._states.get(key)
        return MailConfigObject.unpack(state) if state is not None else None

    def running(self, key: str) -> bool:
        return key in self._tasks

    def stopping(self, key: str) -> bool:
        return key in self._stopping

    def start(self, key: str, loop: Coroutine[Any, Any, None]) -> None:
        """Run ``loop`` for ``key``; it must return once :meth:`stopping` is true for its key."""
        if key in self._tasks:
            loop.close()
            return
        if self._context is None:
            self._context = contextvars.copy_context()
        task = asyncio.get_running_loop().create_task(loop, name=f"kcmail loop {key}", context=self._context.copy())
        self._tasks[key] = task
        # The callback's context too: by default it would be a copy of the starting event's.
        task.add_done_callback(lambda done: self._ended(key, done), context=self._context.copy())

    def _ended(self, key: str, task: asyncio.Task[None]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
        if not task.cancelled() and (error := task.exception()) is not None:
            # Only the type and text: traceback locals could hold credentials. The MailConfig's next
            # event starts a new loop.
            log.error("MailConfig %s: loop ended unexpectedly: %s: %s", key, type(error).__name__, error)

    async def stop(self, key: str, wake: asyncio.Event) -> None:
        """Stop ``key``'s loop and wait for it: a pass in flight may finish, within STOP_TIMEOUT_SECONDS."""
        task = self._tasks.get(key)
        if task is not None:
            self._stopping.add(key)
            wake.set()  # out of its sleep
            try:
                done, _ = await asyncio.wait({task}, timeout=STOP_TIMEOUT_SECONDS)
                if not done:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            finally:
                self._stopping.discard(key)
        self._states.pop(key, None)

    def running_keys(self) -> list[str]:
        return list(self._tasks)


async def sleep(wake: asyncio.Event, seconds: float) -> None:
    """Sleep until ``wake`` is set or ``seconds`` pass; no helper tasks, a sleeping loop costs one timer."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await wake.wait()
