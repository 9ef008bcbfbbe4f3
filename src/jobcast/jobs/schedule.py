"""The embedded runner's queue: which queued job runs next, and when.

Decisions (cited as P1..P5):

P1. Heaps. Jobs that may start now wait in a heap per group (kind) ordered by priority
    (higher first), then by the order they entered the queue; jobs that must wait (a delayed
    submission's ``scheduled_for``, a retry's ``next_attempt_at``) wait in one heap ordered by
    that time and move to their group's heap once it has come. Taking the next job compares the
    heads of the groups' heaps: O(groups + log n), and there are few kinds.
P2. Times are wall-clock epoch seconds, the ones stored with the job, so a schedule survives a
    restart: the recovered queued jobs are pushed again with their stored times, and a job
    whose time passed while the server was down runs at once.
P3. Removal is lazy: a cancelled job stays in its heap and is skipped when it comes up; the
    queue counts only the jobs it still holds for the ``max_queued`` bound.
P4. The dispatcher sleeps until the earliest scheduled time or a new push, whichever comes
    first (``next_due``), never polls.
P5. Per-kind limits: ``pop`` is told which groups (kinds) are at their limit and skips their
    heaps, so a full kind never holds up the others, and its jobs keep their places.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable, Collection

#: Priorities a submission may give (higher runs first; 0 is the default).
MIN_PRIORITY = -100
MAX_PRIORITY = 100


class JobSchedule:
    """Queued job ids, by priority and submission order, each no earlier than its time."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._order = itertools.count()
        #: group -> (-priority, order, id), the jobs that may start now (P1)
        self._ready: dict[str, list[tuple[int, int, str]]] = {}
        #: (not_before, -priority, order, id, group)
        self._waiting: list[tuple[float, int, int, str, str]] = []
        self._held: set[str] = set()  # P3

    def __len__(self) -> int:
        return len(self._held)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._held

    def push(
        self, job_id: str, priority: int = 0, not_before: float = 0.0, group: str = ""
    ) -> None:
        order = next(self._order)
        self._held.add(job_id)
        if not_before > self._clock():
            heapq.heappush(self._waiting, (not_before, -priority, order, job_id, group))
        else:
            heapq.heappush(self._ready.setdefault(group, []), (-priority, order, job_id))

    def remove(self, job_id: str) -> None:
        self._held.discard(job_id)  # P3

    def pop(self, blocked: Collection[str] = ()) -> str | None:
        """The next job that may start now and whose group is not ``blocked`` (P5), or
        ``None``."""
        self._promote()
        best: list[tuple[int, int, str]] | None = None
        for group, heap in list(self._ready.items()):
            while heap and heap[0][2] not in self._held:
                heapq.heappop(heap)  # P3
            if not heap:
                del self._ready[group]
            elif group not in blocked and (best is None or heap[0] < best[0]):
                best = heap
        if best is None:
            return None
        job_id = heapq.heappop(best)[2]
        self._held.discard(job_id)
        return job_id

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
            _, priority, order, job_id, group = heapq.heappop(self._waiting)
            heapq.heappush(self._ready.setdefault(group, []), (priority, order, job_id))
