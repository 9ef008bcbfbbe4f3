"""The embedded runner's queue: which queued job runs next, and when.

Decisions (cited as P1..P6):

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
P6. Per-owner limits: ``pop`` is also told which owners are at their limit. An owner is not a
    group (there may be thousands), so a job of a full owner that comes up at the head of its
    group is parked aside, in a heap of that owner's, with its place (priority, order), and
    the owner's other jobs never hold up anybody else's. When one of the owner's jobs ends,
    ``unpark`` puts back only as many of its best parked jobs as it has free slots, so an
    owner with thousands of queued jobs costs O(log n) per job that starts, not a walk over
    all of them each time.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable, Collection

#: Priorities a submission may give (higher runs first; 0 is the default).
MIN_PRIORITY = -100
MAX_PRIORITY = 100

#: A job that may start: (-priority, order, id, owner).
_Ready = tuple[int, int, str, str]


class JobSchedule:
    """Queued job ids, by priority and submission order, each no earlier than its time."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._order = itertools.count()
        #: group -> (-priority, order, id, owner), the jobs that may start now (P1)
        self._ready: dict[str, list[_Ready]] = {}
        #: (not_before, -priority, order, id, group, owner)
        self._waiting: list[tuple[float, int, int, str, str, str]] = []
        #: owner -> heap of (entry, group): jobs whose owner was full when they came up (P6)
        self._parked: dict[str, list[tuple[_Ready, str]]] = {}
        self._held: set[str] = set()  # P3

    def __len__(self) -> int:
        return len(self._held)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._held

    def push(
        self,
        job_id: str,
        priority: int = 0,
        not_before: float = 0.0,
        group: str = "",
        owner: str = "",
    ) -> None:
        order = next(self._order)
        self._held.add(job_id)
        if not_before > self._clock():
            heapq.heappush(self._waiting, (not_before, -priority, order, job_id, group, owner))
        else:
            heapq.heappush(self._ready.setdefault(group, []), (-priority, order, job_id, owner))

    def remove(self, job_id: str) -> None:
        self._held.discard(job_id)  # P3

    def pop(self, blocked: Collection[str] = (), full_owners: Collection[str] = ()) -> str | None:
        """The next job that may start now, whose group is not ``blocked`` (P5) and whose
        owner is not in ``full_owners`` (P6), or ``None``."""
        self._promote()
        best: list[_Ready] | None = None
        for group, heap in list(self._ready.items()):
            while heap and (heap[0][2] not in self._held or heap[0][3] in full_owners):
                entry = heapq.heappop(heap)
                if entry[2] in self._held:  # P6: its owner is full; it keeps its place
                    heapq.heappush(self._parked.setdefault(entry[3], []), (entry, group))
            if not heap:
                del self._ready[group]
            elif group not in blocked and (best is None or heap[0] < best[0]):
                best = heap
        if best is None:
            return None
        job_id = heapq.heappop(best)[2]
        self._held.discard(job_id)
        return job_id

    def parked(self, owner: str) -> bool:
        return owner in self._parked

    def unpark(self, owner: str, count: int) -> None:
        """Give the best ``count`` jobs parked for ``owner`` their places back (P6): it may run
        that many more."""
        parked = self._parked.get(owner)
        while parked and count > 0:
            entry, group = heapq.heappop(parked)
            if entry[2] in self._held:  # P3
                heapq.heappush(self._ready.setdefault(group, []), entry)
                count -= 1
        if not parked:
            self._parked.pop(owner, None)

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
            _, priority, order, job_id, group, owner = heapq.heappop(self._waiting)
            heapq.heappush(self._ready.setdefault(group, []), (priority, order, job_id, owner))
