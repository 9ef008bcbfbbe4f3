"""The embedded runner's queue: which queued job runs next, and when.

Decisions (cited as P1..P4):

P1. Two heaps. Jobs that may start now wait in a heap ordered by priority (higher first), then
    by the order they entered the queue; jobs that must wait (a delayed submission's
    ``scheduled_for``, a retry's ``next_attempt_at``) wait in a heap ordered by that time and
    move to the first heap once it has come. Taking the next job is O(log n) whatever the mix.
P2. Times are wall-clock epoch seconds, the ones stored with the job, so a schedule survives a
    restart: the recovered queued jobs are pushed again with their stored times, and a job
    whose time passed while the server was down runs at once.
P3. Removal is lazy: a cancelled job stays in its heap and is skipped when it comes up; the
    queue counts only the jobs it still holds for the ``max_queued`` bound.
P4. The dispatcher sleeps until the earliest scheduled time or a new push, whichever comes
    first (``next_due``), never polls.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable

#: Priorities a submission may give (higher runs first; 0 is the default).
MIN_PRIORITY = -100
MAX_PRIORITY = 100


class JobSchedule:
    """Queued job ids, by priority and submission order, each no earlier than its time."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._order = itertools.count()
        self._ready: list[tuple[int, int, str]] = []  # (-priority, order, id)  P1
        self._waiting: list[tuple[float, int, int, str]] = []  # (not_before, -priority, ...)
        self._held: set[str] = set()  # P3

    def __len__(self) -> int:
        return len(self._held)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._held

    def push(self, job_id: str, priority: int = 0, not_before: float = 0.0) -> None:
        order = next(self._order)
        self._held.add(job_id)
        if not_before > self._clock():
            heapq.heappush(self._waiting, (not_before, -priority, order, job_id))
        else:
            heapq.heappush(self._ready, (-priority, order, job_id))

    def remove(self, job_id: str) -> None:
        self._held.discard(job_id)  # P3

    def pop(self) -> str | None:
        """The next job that may start now, or ``None``."""
        self._promote()
        while self._ready:
            _, _, job_id = heapq.heappop(self._ready)
            if job_id in self._held:
                self._held.discard(job_id)
                return job_id
        return None

    def next_due(self) -> float | None:
        """Seconds until the earliest waiting job may start; ``None`` if none waits (P4)."""
        while self._waiting and self._waiting[0][3] not in self._held:
            heapq.heappop(self._waiting)  # P3
        if not self._waiting:
            return None
        return max(0.0, self._waiting[0][0] - self._clock())

    def _promote(self) -> None:
        now = self._clock()
        while self._waiting and self._waiting[0][0] <= now:
            _, priority, order, job_id = heapq.heappop(self._waiting)
            heapq.heappush(self._ready, (priority, order, job_id))
