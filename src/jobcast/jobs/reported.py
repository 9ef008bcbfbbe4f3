"""Jobs that another system's workers run (Celery, RQ, Dramatiq), moved by their reports.

A queue integration's worker reports what its task does: sent, started, progress, retried,
ended. :class:`ReportedJobs` applies those reports to the jobs, with the same
:class:`~jobcast.jobs.live.LiveJob` a native job has (coalesced progress, events numbered in
order, bounded store writes, a terminal state stored until it sticks). Two processes hold
one: a worker's reporter that reaches the broker and store itself
(``jobcast.integrations._reporter``), and a server that takes reports over HTTP
(``server/routes/job_reports.py``), so both paths mean the same thing.

Decisions (cited as R1..R6):

R1. A job that is already terminal when its task starts (cancelled while queued) is not
    reported again: ``started`` says so, and the worker skips the task. A job found
    ``running`` (its task re-delivered after its worker died) goes on as a new attempt.
R2. A job whose task was sent without tracking, or while the store was down, is created when
    it starts (or, failing that, before its terminal write), from what its worker knows.
R3. ``live`` holds the running jobs; a report about a job not held (another process ran it,
    this one restarted) loads it from the store, ``seq`` caught up with the broker.
R4. ``sweep`` fails as ``Interrupted`` one queue's jobs left ``running`` and silent (no
    report, no ``beat``) for longer than the heartbeat window: their worker died and nothing
    re-delivers them.
R5. What progress cost is counted (``counts``): reports coalesced away before they were
    published (``coalesced``) and reports lost because the broker refused them
    (``unpublished``), summed over the jobs that ended here and those still held.
R6. Every terminal state closes the job's output streams still open, before its terminal
    event, as a native job's end does (lifecycle.R6), so a Durable Streams reader sees
    ``Stream-Closed`` instead of waiting for ever. Above all a sweep (R4): the process that
    wrote them is dead and nothing else would close them. A task's end has its worker close
    them first (integrations/_stream_writer.T5); what is still open after that (the close
    failed, the reporter does not close) is closed here. A retry leaves them open: the next
    attempt appends to them (outputs/job_output.J3). They are those of ``outputs``, the
    deployment's stream store (``None``: none to close).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from jobcast.errors import JobcastError
from jobcast.jobs.live import LiveJob
from jobcast.jobs.model import Job, JobState
from jobcast.jobs.recovery import caught_up
from jobcast.outputs.job_output import close_left_open

if TYPE_CHECKING:
    from jobcast.hub import Hub
    from jobcast.jobs.access import JobAccess
    from jobcast.jobs.metadata import MetadataBuffer
    from jobcast.jobs.options import RunnerOptions
    from jobcast.outputs.store import StreamStore
    from jobcast.stores.base import JobStore

logger = logging.getLogger("jobcast.jobs")

INTERRUPTED = {"type": "Interrupted", "message": "the worker running the task stopped"}
#: Most running jobs swept at once (R4).
SWEEP_LIMIT = 10_000


class ReportedJobs:
    """Applies task reports to their jobs, on one event loop (R1-R6)."""

    def __init__(
        self,
        hub: Hub,
        store: JobStore,
        access: JobAccess | None,
        options: RunnerOptions,
        *,
        outputs: StreamStore | None = None,
    ) -> None:
        self.hub = hub
        self.store = store
        #: The jobs' output streams, closed when they end (R6); ``None``: none here.
        self.outputs = outputs
        self.access = access
        self.options = options
        self.live: dict[str, LiveJob] = {}
        self._ended = collections.Counter[str]()
        self._unstored: set[str] = set()  # R2
        self._endings: set[asyncio.Task[None]] = set()

    @property
    def counts(self) -> dict[str, int]:
        """Progress coalesced away and lost so far (R5)."""
        counts = collections.Counter(self._ended)
        for live in self.live.values():
            counts["coalesced"] += live.progress_coalesced
            counts["unpublished"] += live.progress_unpublished
        return dict(counts)

    def track(self, job: Job) -> LiveJob:
        options = self.options
        return LiveJob(
            job,
            hub=self.hub,
            store=self.store,
            progress_interval=options.progress_interval,
            store_interval=options.store_interval,
            max_event_bytes=options.max_event_bytes,
        )

    async def queued(self, job: Job) -> bool:
        """Create the job, ``queued``; False when it exists already: its message was
        published again (a publish the queue's client retried, a report sent twice)."""
        if await self.store.get(job.id) is not None:
            return False
        await self.store.create(job)
        if self.access is not None:
            try:  # before the job's first event, so every instance knows its owner (access.A1)
                await self.access.announce(job)
            except JobcastError as exc:
                logger.warning("job %s: could not announce it: %s", job.id, exc)
        await self.track(job).transition(JobState.QUEUED)
        return True

    async def started(self, job: Job) -> bool:
        """``job`` as the worker knows it; the stored one wins when there is one (R1, R2).
        False when the job ended before it started: the worker skips the task."""
        try:
            stored = await self.store.get(job.id)
        except JobcastError as exc:  # R2: go on from what the worker knows
            logger.warning("job %s: store unavailable at start: %s", job.id, exc)
            stored = None
            self._unstored.add(job.id)
        else:
            if stored is None:
                await self.queued(job)
        if stored is not None:
            if stored.terminal:  # R1
                return False
            job = await caught_up(self.hub, stored)
        live = self.live.get(job.id) or self.track(job)
        self.live[job.id] = live
        try:
            await live.transition(JobState.RUNNING)
        except JobcastError as exc:  # published, not stored: the next beat stores it
            logger.warning("job %s: running state not stored: %s", job.id, exc)
        live.start_pump()
        return True

    def progress(self, job_id: str, percent: float, stage: str | None, message: str | None) -> bool:
        """Hand a report to its job's coalescing (live.L2), from any thread; False when this
        process holds no such running job."""
        live = self.live.get(job_id)
        if live is None:
            return False
        live.report_progress(percent, message, stage)
        return True

    def metadata(self, job_id: str, update: Callable[[MetadataBuffer], None]) -> bool:
        """Hand a metadata update to its job's coalescing (as ``progress``); it raises and
        changes nothing when invalid (metadata.M1)."""
        live = self.live.get(job_id)
        if live is None:
            return False
        live.change_metadata(update)
        return True

    async def held(self, job_id: str) -> LiveJob | None:
        """The running job, loaded when this process does not hold it yet (R3)."""
        live = self.live.get(job_id)
        if live is not None:
            return live
        job = await self.store.get(job_id)
        if job is None or job.state is not JobState.RUNNING:
            return None
        live = self.live[job_id] = self.track(await caught_up(self.hub, job))
        live.start_pump()
        return live

    async def beat(self, job_id: str | None = None) -> None:
        """Store one job (or every one held) with a fresh ``updated_at`` (R4)."""
        lives = [self.live.get(job_id)] if job_id is not None else list(self.live.values())
        for live in lives:
            if live is None:
                continue
            if live.job.id in self._unstored:
                await self._create_late(live)
            try:
                await live.beat()
            except JobcastError as exc:
                logger.warning("job %s: heartbeat not stored: %s", live.job.id, exc)

    async def retrying(
        self, job_id: str, error: dict[str, str], retry_at: float | None = None
    ) -> None:
        """Back to ``queued`` as a native retry is: a ``retrying`` event, the error in
        ``last_error`` and ``next_attempt_at`` (``retry_at``, or now when the queue does not
        say) in the snapshot."""
        live = await self._take(job_id)
        if live is None or live.job.state is JobState.QUEUED:  # reported already
            return
        await live.stop_pump()
        await live.transition(
            JobState.QUEUED,
            message=f"retrying: {error['type']}",
            error=error,
            retry_at=retry_at if retry_at is not None else time.time(),
        )

    async def finished(self, job_id: str, state: JobState, **fields: Any) -> None:
        """End the job; the caller may stop waiting, the ending goes on (live.L5)."""
        live = await self._take(job_id)
        if live is None:
            return
        await live.stop_pump()
        ending = asyncio.create_task(self._end(live, state, fields))
        self._endings.add(ending)
        ending.add_done_callback(self._endings.discard)
        await asyncio.shield(ending)

    async def _end(self, live: LiveJob, state: JobState, fields: dict[str, Any]) -> None:
        if live.job.id in self._unstored:
            await self._create_late(live)
        await self._close_outputs(live.job.id)
        await live.transition(state, **fields)  # stored until it sticks (live.L5)

    async def _close_outputs(self, job_id: str) -> None:
        """Before the terminal event: a watcher that sees the end finds them closed (R6)."""
        if self.outputs is not None:
            await close_left_open(self.outputs, job_id)

    async def _create_late(self, live: LiveJob) -> None:  # R2
        with contextlib.suppress(JobcastError):
            if await self.store.get(live.job.id) is None:
                await self.store.create(live.published.copy())
            self._unstored.discard(live.job.id)

    async def _take(self, job_id: str) -> LiveJob | None:
        """The job's live copy, no longer held; or loaded, when another process ran it (a
        prefork child killed, a task revoked before it started)."""
        live = self.live.pop(job_id, None)
        if live is not None:
            self._ended["coalesced"] += live.progress_coalesced
            self._ended["unpublished"] += live.progress_unpublished
            return live if not live.job.terminal else None
        job = await self.store.get(job_id)
        if job is None or job.terminal:
            return None
        return self.track(await caught_up(self.hub, job))

    async def sweep(self, runs_on: str, silent_for: float) -> int:  # R4
        """Fail ``runs_on``'s jobs silent for ``silent_for`` seconds; how many."""
        silent_since = time.time() - silent_for
        swept = 0
        for job in await self.store.in_states([JobState.RUNNING], limit=SWEEP_LIMIT):
            if job.runs_on != runs_on or job.updated_at >= silent_since:
                continue
            held = self.live.get(job.id)
            if held is not None and held.published.updated_at >= silent_since:
                continue  # its store write lags; its last report does not
            live = await self._take(job.id)
            if live is not None:
                await live.stop_pump()
                await self._close_outputs(job.id)  # R6: their writer is gone
                await live.transition(JobState.FAILED, error=dict(INTERRUPTED))
                swept += 1
        return swept

    async def close(self, wait: float) -> None:
        """Wait (bounded) for endings still being stored, then stop every pump."""
        if self._endings:
            await asyncio.wait(list(self._endings), timeout=wait)
        for live in self.live.values():
            await live.stop_pump()
