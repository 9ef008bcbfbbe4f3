"""Batches: many jobs submitted as one (``POST /api/batches``), or spawned by a running
handler (``ctx.spawn``), followed by a parent job.

Decisions (cited as G1..G10):

G1. A batch is a job: its parent has kind ``batch`` and ``runs_on`` "batch" (no runner runs
    it, and a restart leaves it alone, external.X2), so its snapshot, its stream
    (``jobs/{id}``), polls, lists, access rules and cancel are every job's. Its children carry
    ``parent_id``; ``GET /api/jobs?parent=ID`` lists them.
G2. Atomic: the items are validated first (kind, params, options; 422 names the item), then the
    parent, every child and the batch's counts row are inserted in one transaction
    (``store.create_batch``): all exist or none. Only then are the children queued.
G3. Each child's end (its terminal state stored, ``live.after_terminal``) counts in the batch's
    row under a row lock (``store.end_child``, sql.Q10), which updates the parent in the same
    transaction: progress (ended / total), counts in its metadata (G9), a message, and
    publishes the parent before it commits. Exactly
    one child's end, on whatever worker, sees the batch complete, so the parent's terminal event
    is published once, last of the parent's, and after every child's own terminal event (each
    child publishes its end before it counts).
G4. The outcome: ``failed`` if any child failed (unless failures are allowed, G10), else
    ``cancelled`` if any child was cancelled, else ``succeeded``; the result holds the counts.
    Every other end is a ``state`` event of the parent (the whole job).
G5. Cancelling the batch cancels every child not yet ended; the batch then ends ``cancelled``
    (or ``failed``, by G4) when the last of them does.
G6. A running job's handler may spawn children (``ctx.spawn``, ``spawn.py``): each is stored
    together with its count (``store.add_child``, which creates the counts row with the
    first). While the handler runs, the parent's row is its runner's: a child's end only
    counts (``count_end`` answers ``None``) and the running parent reads its counts itself
    (spawn.S3). When the handler is done with children still running, the parent is handed
    over under the counts lock: ``runs_on`` "batch" (so a restart leaves it alone, X2, and
    cancelling it cancels its children), its handler's result or error kept, and it ends as
    a batch does, when its last child ends. Every child ended already: it ends at once.
G7. A spawning parent's outcome: ``failed`` with its handler's error if the handler failed,
    else ``failed`` (``BatchFailed``) if any child failed (unless failures are allowed, G10),
    else ``cancelled`` if the handler or a child was cancelled, else ``succeeded``; its result
    is its handler's return value (the counts are in its metadata, G9).
G8. Progress is weighted by the children's own: an ended child counts 100, the others their
    stored progress, a running handler's own reports one child more; never backwards. It
    reaches a batch (or handed-over parent) through the store, coalesced by
    ``parent_progress.py``: at most one update per parent per progress interval in each
    process, however many children report.
G9. The counts have one place of their own, the same on a batch and on a spawning parent: the
    metadata key ``children`` (``CHILDREN``), ``{"succeeded", "failed", "cancelled", "total",
    "allow_failures"}``, which only jobcast writes (``ctx.metadata`` refuses the key). So a
    handler's own ``ctx.metadata.set("succeeded", ...)`` neither clobbers its counts nor is
    clobbered by them. A batch also keeps the counts as top-level metadata keys, as it always
    had (it has no handler to collide with, and clients read them there); a spawning parent
    has them only under ``children``.
G10. Failures allowed: a batch says so at submission (``allow_failures``, kept in its
    ``params``); a spawning parent's handler says so with ``ctx.allow_child_failures()``
    (``spawn.S5``), kept in its ``children`` entry, so the outcome is decided from the stored
    parent and counts row on whatever process ends the last child. Failed children are still
    counted; they only stop failing the parent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any, Protocol

from jobcast.errors import Conflict, JobcastError, NotFound
from jobcast.events import EventDraft, dumps
from jobcast.jobs.model import Job, JobState, job_topic, new_job_id
from jobcast.stores.base import BatchCounts, JobQuery

if TYPE_CHECKING:
    from jobcast.hub import Hub
    from jobcast.stores.base import JobStore

logger = logging.getLogger("jobcast.jobs")

KIND = "batch"
RUNS_ON = "batch"
#: The most jobs one batch may hold.
MAX_BATCH = 1000
COUNTS = ("succeeded", "failed", "cancelled")
#: The error a spawning parent's cancelled handler leaves until its children ended (G7).
CANCELLED_MARK = "Cancelled"
#: The metadata key of a parent's counts (G9), which handlers may not write.
CHILDREN = "children"


def new_parent(
    owner: str,
    total: int,
    *,
    tags: list[str],
    metadata: dict[str, Any],
    allow_failures: bool,
) -> Job:
    """The parent of a new batch of ``total`` jobs, running from its creation (G1)."""
    now = time.time()
    counts = dict.fromkeys(COUNTS, 0)
    return Job(
        id=new_job_id(),
        kind=KIND,
        owner=owner,
        params={"total": total, "allow_failures": allow_failures},
        state=JobState.RUNNING,
        seq=1,
        started_at=now,
        attempts=1,
        max_attempts=1,
        runs_on=RUNS_ON,
        tags=tags,
        metadata={
            **metadata,
            **counts,
            "total": total,
            CHILDREN: children_entry(BatchCounts(total=total), allow_failures),
        },
        message=f"0 of {total} jobs ended",
    )


def weighted_progress(counts: BatchCounts, own: float | None = None) -> float:
    """The parent's progress from its children's (G8): ended children count 100, the others
    their own progress; ``own`` (a running handler's report) counts as one child more."""
    units = counts.total + (own is not None)
    if not units:
        return 100.0 if own is None else own
    done = 100.0 * counts.ended + counts.running_progress + (own or 0.0)
    return round(min(100.0, done / units), 3)


def children_entry(counts: BatchCounts, allow_failures: bool) -> dict[str, Any]:
    """The parent's ``children`` metadata entry (G9)."""
    return {**counts.by_state(), "total": counts.total, "allow_failures": allow_failures}


def allows_failures(parent: Job) -> bool:
    """Whether a failed child leaves the parent's outcome alone (G10)."""
    if parent.kind == KIND:
        return bool(parent.params.get("allow_failures"))
    entry = parent.metadata.get(CHILDREN)
    return isinstance(entry, dict) and entry.get("allow_failures") is True


def fold_counts(parent: Job, counts: BatchCounts, allow_failures: bool | None = None) -> None:
    """The counts, in the parent's metadata (G3, G9); ``allow_failures``: the parent's G10
    switch when its caller knows it better than the stored parent does."""
    allow = allows_failures(parent) if allow_failures is None else allow_failures
    metadata = {**parent.metadata, CHILDREN: children_entry(counts, allow)}
    if parent.kind == KIND:  # where a batch always had them (G9)
        metadata.update(counts.by_state(), total=counts.total)
    parent.metadata = metadata


def count_end(parent: Job, counts: BatchCounts) -> bool | None:
    """Fold a batch's counts after a child's end into its parent (G3, G4, G7); True when the
    batch is complete (the parent is then terminal); ``None`` while its handler runs (G6)."""
    if parent.runs_on != RUNS_ON:
        return None
    if parent.terminal:  # ended already (a store outage lost count?): never a second end
        return False
    now = time.time()
    total, ended = counts.total, counts.ended
    fold_counts(parent, counts)
    parent.progress = max(parent.progress, weighted_progress(counts))
    parent.seq += 1
    parent.updated_at = now
    failed = counts.failed
    parent.message = f"{ended} of {total} jobs ended" + (f", {failed} failed" if failed else "")
    if ended < total:
        return False
    spawned = parent.kind != KIND
    state, error = outcome(parent, counts, spawned)
    parent.state = state
    parent.error = error
    parent.finished_at = now
    parent.eta_seconds = 0.0 if state is JobState.SUCCEEDED else None
    if state is JobState.SUCCEEDED:
        parent.progress = 100.0
    if not spawned:
        parent.result = counts.by_state() | {"total": total}
    return True


def outcome(
    parent: Job, counts: BatchCounts, spawned: bool
) -> tuple[JobState, dict[str, str] | None]:
    """G4, G7: the state a complete batch (or spawning parent) ends in, and its error."""
    handler_error = parent.error if spawned else None  # stored at the hand-over (G6)
    if handler_error is not None and handler_error.get("type") != CANCELLED_MARK:
        return JobState.FAILED, handler_error
    if counts.failed and not allows_failures(parent):  # G10
        message = f"{counts.failed} of {counts.total} jobs failed"
        return JobState.FAILED, {"type": "BatchFailed", "message": message}
    if counts.cancelled or handler_error is not None:
        return JobState.CANCELLED, None
    return JobState.SUCCEEDED, None


async def child_ended(store: JobStore, hub: Hub, child: Job) -> None:
    """Count a child's end in its batch and publish what the parent became (G3)."""
    if child.parent_id is None or not child.terminal:
        return

    async def announce(parent: Job, complete: bool) -> str | None:
        if parent.terminal and not complete:
            return None  # it had ended already
        return await publish(hub, parent, parent.state.value if complete else "state")

    await store.end_child(child.parent_id, child.state, count_end, announce)


async def refresh_progress(store: JobStore, hub: Hub, parent_id: str) -> None:
    """Publish a handed-over parent's (or a batch's) progress, weighted by its children's
    (G8), under the counts lock, if it moved. A parent whose handler runs polls its own."""

    async def update(parent: Job, counts: BatchCounts) -> Job | None:
        if parent.runs_on != RUNS_ON or parent.terminal:
            return None
        progress = weighted_progress(counts)
        if progress <= parent.progress:
            return None
        parent.apply_progress(progress, None, None, time.time())
        parent.seq += 1
        draft = EventDraft(job_topic(parent.id), "progress", dumps(parent.progress_dict()))
        (event,) = await hub.publish_many([draft])
        parent.last_event_id = event.id
        return parent

    await store.update_batch(parent_id, update)


async def publish(hub: Hub, parent: Job, event_type: str) -> str | None:
    """Publish the parent whole; a refused terminal event is retried (as live.L4). The
    event's id, or ``None`` when it could not be published."""
    draft = EventDraft(job_topic(parent.id), event_type, dumps(parent.to_dict()))
    retries = 5 if parent.terminal else 0
    for attempt in range(retries + 1):
        try:
            (event,) = await hub.publish_many([draft])
            return event.id
        except JobcastError as exc:
            if attempt == retries:
                logger.error("batch %s: could not publish %s: %s", parent.id, event_type, exc)
                return None
            await asyncio.sleep(0.2 * 2**attempt)
    return None


class Runner(Protocol):
    """What cancelling a batch needs of the runner."""

    store: JobStore

    async def get(self, job_id: str) -> Job | None: ...

    async def cancel(self, job_id: str) -> Job: ...


class BatchChildren:
    """A batch's parent as an external queue (external.X1): revoking it cancels every child
    that has not ended, and the last child's end ends the batch (G5)."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    async def revoke(self, job: Job) -> None:
        runner, cursor = self.runner, None
        while True:
            page = await runner.store.list_jobs(JobQuery(parent=job.id, limit=200, cursor=cursor))
            for child in page.jobs:
                fresh = await runner.get(child.id)
                if fresh is not None and not fresh.terminal:
                    with contextlib.suppress(Conflict, NotFound):
                        await runner.cancel(child.id)
            if page.next_cursor is None:
                return
            cursor = page.next_cursor
