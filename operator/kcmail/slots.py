"""A bound on the calls in flight to one server, where the later calls of work under way go first.

A pass reads a realm, writes it, and reads it back after a claim. With a thousand MailConfigs created at
once and a plain first-come semaphore, every pass's write waits behind the other passes' first reads, and
every read-back behind all the writes: each MailConfig is Applied only when nearly all the others are. Here
a waiting follow-up call (a pass's second or third) is let through before any waiting first call, so
passes finish one after another while the server does the same work in all.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator


class Slots:
    """At most ``limit`` holders at once; waiting follow-ups before waiting first calls, each in arrival order.

    Waiting has no deadline; a holder keeps its own timeout for the call it makes.
    """

    def __init__(self, limit: int) -> None:
        self._free = limit
        self._follow_ups: deque[asyncio.Future[None]] = deque()
        self._firsts: deque[asyncio.Future[None]] = deque()

    @contextlib.asynccontextmanager
    async def held(self, *, follow_up: bool = False) -> AsyncIterator[None]:
        await self._acquire(follow_up)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, follow_up: bool) -> None:
        if self._free > 0 and not self._follow_ups and not self._firsts:
            self._free -= 1
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        (self._follow_ups if follow_up else self._firsts).append(granted)
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self._release()  # the slot came as the waiter was cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):
                    (self._follow_ups if follow_up else self._firsts).remove(granted)
            raise

    def _release(self) -> None:
        for queue in (self._follow_ups, self._firsts):
            while queue:
                waiter = queue.popleft()
                if not waiter.done():
                    waiter.set_result(None)
                    return
        self._free += 1
