"""Parents' progress weighted by their children's, coalesced (``batches.py`` G8).

A child's progress reaches its parent through the store: each time a child's live copy is
stored (at most every ``store_interval``, live.L2), this process marks its parent; once per
``interval`` each marked parent is refreshed once, however many of its children reported.
A thousand children reporting many times a second cost one parent write per parent per
interval, not a thousand.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from jobcast.errors import JobcastError

logger = logging.getLogger("jobcast.jobs")


class ParentProgress:
    """``touch(parent_id)`` from the event loop; ``refresh(parent_id)`` runs at most once per
    ``interval`` per parent. Started on first use; ``close`` stops it."""

    def __init__(self, refresh: Callable[[str], Awaitable[None]], interval: float) -> None:
        self._refresh = refresh
        self._interval = interval
        self._marked: set[str] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: Refreshes done, for tests and metrics: what the coalescing saved.
        self.refreshes = 0

    def touch(self, parent_id: str) -> None:
        self._marked.add(parent_id)
        self._wake.set()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="jobcast-parent-progress")

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            marked, self._marked = self._marked, set()
            for parent_id in marked:
                try:
                    await self._refresh(parent_id)
                    self.refreshes += 1
                except JobcastError as exc:  # the next report tries again
                    logger.warning("batch %s: could not update its progress: %s", parent_id, exc)
            await asyncio.sleep(self._interval)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
