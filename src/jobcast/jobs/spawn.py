"""Children of a running job: ``child = await ctx.spawn(kind, params)`` (batches.G6-G10).

Decisions (cited as S1..S5):

S1. A child is a job of its parent's owner with ``parent_id`` set: it is stored together with
    its count in the parent's counts row (``store.add_child``), then queued like a submitted
    job wherever its parent runs (``enqueue``: the embedded runner's queue, or the workers'
    queue when a ``jobcast worker`` runs the parent). A parent has at most ``MAX_CHILDREN``.
S2. Replay: a parent run again (a retry, lifecycle.R4; a restart, R3) gets its earlier
    children back in spawn order: the n-th ``spawn`` of a run returns the n-th child already
    stored instead of a new one, as ``input_wait.N3`` replays inputs. A handler spawns in a
    deterministic order, so a restart neither loses nor doubles its children.
S3. While the handler runs, the parent's row is its runner's (batches.G6): it reads its
    counts from the store (``store.batch_counts``) every ``POLL_INTERVAL`` (at once after a
    spawn, or when a child ends or reports in this process) and folds them in as any report,
    coalesced (live.L2): the counts in its metadata's ``children`` entry (batches.G9), its
    progress weighted by its children's (batches.G8) with the handler's own reports counted
    as one child more.
S4. When the handler is done (``settle``), under the counts row's lock: with every child
    ended, the parent ends here at once, its handler's ending combined with its children's
    (batches.G7); otherwise it is handed over (``runs_on`` "batch", its handler's result or
    error kept) and ends when its last child does, on whatever process that child ends. A
    run interrupted and not run again (lifecycle.R3) settles the same way. Before the locked
    transaction the parent is stored through the store's group commit, so no older write of
    it lands after the hand-over, and nothing inside that transaction waits for the group
    commit (which waits for the same lock).
S5. ``ctx.allow_child_failures()``: a failed child no longer fails this parent (batches.G10,
    as ``allow_failures`` does for a batch). It is one switch per parent, not per child: the
    outcome is decided from the stored parent and its counts row by whichever process ends
    the last child (a server, another worker), and both hold the switch with no schema change
    (it rides in the parent's ``children`` entry); a per-child flag would need every child's
    flag in the counts row. It composes with replay (S2): a switch once stored stays on (a
    re-run starts from the stored entry), and a deterministic handler calls it again anyway.
    It may be called before or after the spawns, from any thread; it reaches the metadata
    with the next counts fold (``POLL_INTERVAL``), at the latest when the handler's call
    ends (``stop``), so the retry, interruption or hand-over that follows stores it.

A process that dies between storing a child and queueing it leaves it stored ``queued``: the
embedded runner's start queues it (``recovery.py``); on workers, the parent's re-run queues
every replayed child still ``queued`` again, which the workers' queue ignores for a job it
holds already (its key is the job id).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from jobcast.errors import InvalidInput, JobcastError
from jobcast.jobs import batches
from jobcast.jobs.metadata import validate_metadata
from jobcast.jobs.model import Job, JobState, new_job_id
from jobcast.jobs.tags import validate_tags
from jobcast.stores.base import BatchCounts, JobQuery

if TYPE_CHECKING:
    from jobcast.jobs.live import LiveJob
    from jobcast.jobs.registry import Registry

logger = logging.getLogger("jobcast.jobs")

#: How often a running parent reads its children's counts when nothing woke it (S3).
POLL_INTERVAL = 0.5
MAX_CHILDREN = batches.MAX_BATCH

#: How a handler's call ended: its terminal state and the fields of that end (result, error).
Ending = tuple[JobState, dict[str, Any]]
#: Queues a child (stored already) where its parent runs and returns its snapshot; ``True``:
#: a child an earlier run spawned (S2), to queue again only where that is idempotent.
Enqueue = Callable[[Job, bool], Awaitable[Job]]


class Children:
    """The children one run of a parent spawned, and its view of their counts (S1-S5)."""

    def __init__(
        self,
        live: LiveJob,
        registry: Registry,
        enqueue: Enqueue | None,
        *,
        default_max_attempts: int,
    ) -> None:
        self._live = live
        self._registry = registry
        self._enqueue = enqueue
        self._default_max_attempts = default_max_attempts
        self._earlier: list[Job] | None = None
        self._spawned = 0
        self._spawning = asyncio.Lock()  # spawns keep their order (S2)
        self._mutex = threading.Lock()  # the handler's own progress, from any thread
        self._own = 0.0
        self._counts: BatchCounts | None = None
        self._allow_failures = batches.allows_failures(live.job)  # S5: as stored
        self._entry: dict[str, Any] | None = None  # the ``children`` entry last folded
        self._reported = -1.0
        self._wake = asyncio.Event()
        self._poller: asyncio.Task[None] | None = None

    @property
    def spawned(self) -> int:
        return self._spawned

    def allow_failures(self) -> None:
        """A failed child no longer fails the parent (S5); safe from any thread."""
        with self._mutex:
            self._allow_failures = True

    async def spawn(
        self,
        kind: str,
        params: Any = None,
        *,
        tags: Sequence[str] = (),
        metadata: dict[str, Any] | None = None,
        priority: int = 0,
    ) -> Job:
        """A new child of the running job (S1), or the one an earlier run spawned here (S2)."""
        if self._enqueue is None:
            raise RuntimeError("jobs cannot spawn children where this job runs")
        parent = self._live.job
        async with self._spawning:
            if self._earlier is None:
                self._earlier = await self._children_so_far(parent.id)
            if self._spawned < len(self._earlier):  # S2
                child = await self._enqueue(self._earlier[self._spawned], True)
                self._spawned += 1
            else:
                child = self._new_child(parent, kind, params, tags, metadata, priority)
                await self._live.store.add_child(child)
                self._spawned += 1
                child = await self._enqueue(child, False)
        self._start_polling()
        self.wake()
        return child

    def _new_child(
        self,
        parent: Job,
        kind: str,
        params: Any,
        tags: Sequence[str],
        metadata: dict[str, Any] | None,
        priority: int,
    ) -> Job:
        if self._spawned >= MAX_CHILDREN:
            raise InvalidInput(f"a job spawns at most {MAX_CHILDREN} children")
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise InvalidInput("priority must be an integer")
        spec = self._registry.get(kind)
        if spec.needs_input:
            raise InvalidInput(f"jobs of kind {kind!r} need an uploaded file")
        return Job(
            id=new_job_id(),
            kind=kind,
            owner=parent.owner,
            params=spec.validate_params(params),
            max_attempts=spec.default_max_attempts(self._default_max_attempts),
            priority=priority,
            tags=validate_tags(list(tags)),
            metadata=validate_metadata(metadata),
            parent_id=parent.id,
        )

    async def _children_so_far(self, parent_id: str) -> list[Job]:
        if self._live.job.attempts <= 1:  # a first run has none
            return []
        found: list[Job] = []
        cursor = None
        while True:
            query = JobQuery(parent=parent_id, limit=200, cursor=cursor)
            page = await self._live.store.list_jobs(query)
            found.extend(page.jobs)
            if page.next_cursor is None:
                return sorted(found, key=lambda job: job.id)  # ids sort by creation
            cursor = page.next_cursor

    # -- S3: the parent's view while its handler runs ---------------------------------------

    def blend(self, own: float) -> float:
        """The parent's progress for its handler's own report ``own`` (batches.G8)."""
        with self._mutex:
            self._own = own
            counts = self._counts_now()
        return batches.weighted_progress(counts, own)

    def _counts_now(self) -> BatchCounts:
        """The counts last read, with the children spawned since (not read yet) at 0."""
        counts = self._counts or BatchCounts(total=0)
        if counts.total < self._spawned:
            counts = dataclasses.replace(counts, total=self._spawned)
        return counts

    def wake(self) -> None:
        """Read the counts now: a child ended or reported in this process."""
        self._wake.set()

    def _start_polling(self) -> None:
        if self._poller is None:
            name = f"job-children-{self._live.job.id}"
            self._poller = asyncio.create_task(self._poll(), name=name)

    async def _poll(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_INTERVAL):
                    await self._wake.wait()
            self._wake.clear()
            try:
                counts = await self._live.store.batch_counts(self._live.job.id)
            except JobcastError:
                continue  # the store is down: the next turn tries again
            if counts is not None:
                try:
                    self._fold(counts)
                except InvalidInput as exc:  # its metadata is full: the counts wait
                    logger.warning(
                        "job %s: cannot fold its children's counts: %s", self._live.job.id, exc
                    )

    def _fold(self, counts: BatchCounts) -> None:
        with self._mutex:
            changed = counts != self._counts
            self._counts = counts
            own = self._own
            counts = self._counts_now()
            entry = batches.children_entry(counts, self._allow_failures)
        if entry != self._entry:  # batches.G9: only jobcast writes this key
            self._live.change_metadata(lambda buffer: buffer.set(batches.CHILDREN, entry))
            self._entry = entry  # after: a refused update (metadata full) is tried again
        if not changed:
            return
        progress = batches.weighted_progress(counts, own)
        if progress > self._reported:
            self._reported = progress
            self._live.report_progress(progress, None, None)

    async def stop(self) -> None:
        """Stop reading the counts: the handler's call is over. A switch (S5) the last fold
        missed goes into the metadata now, so whatever state change follows (a retry, an
        interruption, the end) stores it."""
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        with self._mutex:
            allow, counts = self._allow_failures, self._counts_now()
        if allow and self._spawned and (self._entry or {}).get("allow_failures") is not True:
            entry = batches.children_entry(counts, allow)
            try:
                self._live.change_metadata(lambda buffer: buffer.set(batches.CHILDREN, entry))
                self._entry = entry
            except InvalidInput as exc:  # its metadata is full
                logger.warning("job %s: cannot keep its switch: %s", self._live.job.id, exc)

    # -- S4: the end ------------------------------------------------------------------------

    async def settle(self, ending: Ending, *, look: bool = False) -> Ending | None:
        """After the handler's terminal ``ending``: the ending to finish the parent with now,
        or ``None`` when it was handed over to its children's ends (S4). ``look``: ask the
        store even if this run spawned nothing (a run interrupted before this process knew)."""
        await self.stop()
        live = self._live
        if not look and not self._spawned and live.job.attempts <= 1:
            return ending  # no children (an earlier run may have spawned some: S2)
        await live.stop_pump()
        # Stored now through the store's group commit (Q5), so no older write of the job is
        # left queued to land after the hand-over's own transaction.
        await live.store_now()
        handed_over = False

        async def update(_: Job, counts: BatchCounts) -> Job | None:
            nonlocal handed_over
            self._counts = counts
            if counts.ended >= counts.total:
                return None  # every child ended: the parent ends here, after the commit
            handed_over = True
            allow = self._allow_failures
            await live.change(
                "state", lambda job: _hand_over(job, counts, ending, allow), save=False
            )
            return live.published

        if not await live.store.update_batch(live.job.id, update):
            return ending  # no child was ever stored
        if handed_over:
            return None
        counts = self._counts
        if counts is None:
            return ending
        entry = batches.children_entry(counts, self._allow_failures)
        live.change_metadata(lambda buffer: buffer.set(batches.CHILDREN, entry))
        return _combined(ending, counts, self._allow_failures)


def _hand_over(job: Job, counts: BatchCounts, ending: Ending, allow_failures: bool) -> None:
    """The parent becomes a batch of its children until the last one ends (batches.G6)."""
    batches.fold_counts(job, counts, allow_failures)
    job.progress = max(job.progress, batches.weighted_progress(counts))
    job.runs_on = batches.RUNS_ON
    state, fields = ending
    job.result = fields.get("result")
    job.error = fields.get("error")
    if state is JobState.CANCELLED:
        job.error = {"type": batches.CANCELLED_MARK, "message": "the job was cancelled"}
    left = counts.total - counts.ended
    job.message = f"{counts.ended} of {counts.total} jobs ended; waiting for {left} more"


def _combined(ending: Ending, counts: BatchCounts, allow_failures: bool) -> Ending:
    """The parent's ending when its children had all ended before its handler (G7, G10)."""
    if ending[0] is not JobState.SUCCEEDED:
        return ending
    entry = batches.children_entry(counts, allow_failures)
    parent = Job(id="", kind="", owner="", metadata={batches.CHILDREN: entry})
    state, error = batches.outcome(parent, counts, spawned=True)
    if state is JobState.SUCCEEDED:
        return ending
    return state, {**ending[1], "error": error}
