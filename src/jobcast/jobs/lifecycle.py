"""The job lifecycle engine: one claimed job, from ``running`` through its handler to its end.

The embedded runner (``runner.py``) hands it the jobs it dispatches; ``jobcast worker``
(``worker.py``) the jobs it dequeues. Either way a job runs the same path: the same handler
registry, timeouts, cancellation and coalesced progress (``live.py``), and the terminal record
is never lost.

Decisions (cited as R1..R6):

R1. Each running job is two tasks: an outer one that owns the job's lifecycle and an inner one
    that runs the handler. Cancellation, timeouts and shutdown only ever cancel the inner task,
    so the outer one always gets to publish the terminal event and write the store.
R2. Sync handlers run in a thread pool (``threads.py``; each call in ``handler_calls.py``).
    A thread cannot be killed: cancelling one sets the context's flag, which makes its next
    ``progress()`` or ``check_cancelled()`` raise; the job is reported cancelled (or timed
    out) at once. A handler that never checks keeps its thread after its job ended: up to
    ``max_abandoned_threads`` spare threads take the place of such threads; past that, the
    job's slot waits for its thread, so the next jobs wait as ``queued``, never as
    ``running`` jobs queued inside the pool.
R3. The restart rule: a job whose run was interrupted (a crash, a graceful shutdown, a dead
    worker) is re-queued when its handler is ``retry_safe`` or has a retry policy (up to the
    job's ``max_attempts`` runs, retry.T2), else failed with an ``Interrupted`` error
    (``handler_calls.after_interruption``). A graceful shutdown applies it to the jobs it
    interrupts; a server's start to the jobs a crash left ``running`` (``recovery.py``); a
    worker to a job whose worker died. Nothing is ever left ``running``.
R4. Retries: an attempt that failed in a way its handler's policy retries (``retry.py``), while
    attempts remain and nobody cancelled it, goes back to ``queued`` with ``next_attempt_at``
    and ``last_error``, published as a ``retrying`` event and stored before anything else
    happens, so a crash during the wait leaves a queued job that a restart schedules at its
    time (``recovery.py``). The next attempt is handed back to whoever runs jobs here
    (``on_retry``: the embedded runner's schedule; a worker re-enqueues it in SAQ with the
    delay). The attempt's handler call has ended before the retry is published, so two
    attempts of one job never run at once (except a sync handler's thread that ignores
    cancellation after a timeout, as R2 describes, which can no longer report anything).
R5. Parking (input_wait.N7-N10): a run that parks in a wait for input ends with no terminal
    state: its pending reports and output are stored, the job stays ``running`` and waiting,
    its slot (or thread) is given back, and ``on_park`` is told (the embedded runner arms
    its wake; a worker hands the SAQ job back). A parked job handed to ``run`` again is the
    same attempt going on: no ``running`` event, ``attempts`` unchanged, and it runs only if
    due (``input_wait.parked_for``); a stale wake parks it again at once. A shutdown that
    interrupts a waiting re-runnable job parks it instead of applying R3 (nothing is lost:
    the re-run replays its inputs), and a user's cancel of a parking run ends it cancelled.
    A parked job that ends without a run (a cancel) has its output streams closed, whichever
    run opened them (R6).
R6. Every terminal state closes the job's output streams, whoever ends it: a run here closes
    the streams it wrote (``JobOutputs.close_all``), before the terminal event; a job whose
    streams other runs opened too (a run on a worker that was SIGKILLed and swept, one a
    crash interrupted before a restart, a parked run resumed elsewhere) or that ends without
    a run here (``interrupted`` by R3, a cancel) has every stream still open under its path
    closed as well (a listing of the store), so a Durable Streams reader sees
    ``Stream-Closed`` instead of waiting for ever. ``finish`` does it before the terminal
    event; the terminal transitions that do not go through ``finish`` (a queued job
    cancelled, say one waiting for its retry) do it once the terminal state is stored (the
    job's ``after_terminal``). A job re-queued by R3 keeps its streams open: the next
    attempt, here or on any worker, appends to them where the interrupted one stopped
    (outputs/job_output.J3) and the job's end closes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobcast.errors import JobcastError
from jobcast.jobs import batches, input_wait
from jobcast.jobs.context import JobContext
from jobcast.jobs.handler_calls import (
    PARKED,
    Ending,
    HandlerCalls,
    after_interruption,
    job_error,
)
from jobcast.jobs.live import LiveJob
from jobcast.jobs.model import Job, JobState
from jobcast.jobs.options import RunnerOptions
from jobcast.jobs.parent_progress import ParentProgress
from jobcast.jobs.registry import HandlerSpec, Registry
from jobcast.jobs.retry import RetryPolicy
from jobcast.jobs.spawn import Children, Enqueue
from jobcast.jobs.stats import JobStats
from jobcast.jobs.threads import HandlerThreads
from jobcast.outputs.job_output import JobOutputs, close_left_open

if TYPE_CHECKING:
    from jobcast.hub import Hub
    from jobcast.outputs.store import StreamStore
    from jobcast.stores.base import JobStore
    from jobcast.tracing import Tracing

logger = logging.getLogger("jobcast.jobs")


class JobLifecycle:
    """Runs jobs through their handlers, at most ``concurrency`` at a time, and tracks the live
    copy (:class:`LiveJob`) of every job this process holds.

    ``live`` is the map of tracked jobs, shared with whoever must read it without I/O (the
    embedded runner's reads and stream filters); ``on_untracked`` is told of each job that
    leaves it; ``on_park`` of each job that parked and stays tracked here (R5; ``None``:
    it is untracked, as a worker's), and ``park_async``: whether async handlers park too
    (a worker's, input_wait.N7), not only sync ones.
    """

    def __init__(
        self,
        store: JobStore,
        hub: Hub,
        registry: Registry,
        options: RunnerOptions,
        *,
        live: dict[str, LiveJob] | None = None,
        on_untracked: Callable[[Job], None] | None = None,
        on_retry: Callable[[LiveJob], None] | None = None,
        outputs: StreamStore | None = None,
        enqueue: Enqueue | None = None,
        on_park: Callable[[LiveJob], None] | None = None,
        park_async: bool = False,
    ) -> None:
        self.store = store
        self._on_park = on_park
        self._park_async = park_async
        #: Queues the children handlers spawn (``spawn.py`` S1); ``None``: they cannot.
        self._enqueue = enqueue
        #: The children of the parents running here (spawn.S3), by parent id.
        self._families: dict[str, Children] = {}
        self.parents = ParentProgress(self._refresh_parent, options.progress_interval)
        #: Where jobs' output streams go (``ctx.stream``); ``None``: jobs here have none.
        self.outputs = outputs
        self._job_outputs: dict[str, JobOutputs] = {}
        #: Jobs whose streams ``finish`` closed, for their ``after_terminal`` to skip (R6).
        self._outputs_closed: set[str] = set()
        self.hub = hub
        self.registry = registry
        self.options = options
        self.live: dict[str, LiveJob] = {} if live is None else live
        self._on_untracked = on_untracked
        self._on_retry = on_retry
        #: A job's slot: taken before it runs, given back when it ends (or by its thread, R2).
        self.slots = asyncio.Semaphore(options.concurrency)
        self._threads = HandlerThreads(  # R2
            options.concurrency, options.max_abandoned_threads, self.slots.release
        )
        self._calls = HandlerCalls(self._threads, options.default_timeout)
        self.stats = JobStats()
        self.tracing: Tracing | None = None
        if options.tracing:  # tracing.O1: imported only when on
            from jobcast.tracing import Tracing

            self.tracing = Tracing()

    def upload_path(self, job_id: str) -> Path:
        return self.options.uploads_dir / job_id

    def attempt_limit(self, job: Job) -> int:
        """The most runs ``job`` may have (retry.T2); jobs stored before retry policies
        existed have none of their own: the server's ``job_max_attempts``."""
        return job.max_attempts or self.options.max_attempts

    # -- tracking --------------------------------------------------------------------------

    def track(self, job: Job) -> LiveJob:
        options = self.options
        live = LiveJob(
            job,
            hub=self.hub,
            store=self.store,
            progress_interval=options.progress_interval,
            store_interval=options.store_interval,
            max_event_bytes=options.max_event_bytes,
            on_terminal=self.stats.finished,
            slots=self.slots,
            after_terminal=self._after_terminal,
            on_saved=self._child_saved,
        )
        self.live[job.id] = live
        return live

    async def _after_terminal(self, job: Job) -> None:
        """A job's terminal state is stored: its streams are closed if ``finish`` did not
        (R6), and a batch's child is counted."""
        if job.id in self._outputs_closed:
            self._outputs_closed.discard(job.id)
        else:
            await self._close_outputs(job.id)
        await self._count_in_batch(job)

    async def _count_in_batch(self, job: Job) -> None:
        """A batch's child ended: count it there (batches.G3). Never fails the child's end."""
        if job.parent_id is None:
            return
        try:
            await batches.child_ended(self.store, self.hub, job)
        except JobcastError as exc:
            logger.error(
                "job %s: could not count its end in batch %s: %s", job.id, job.parent_id, exc
            )
        family = self._families.get(job.parent_id)
        if family is not None:  # its parent runs here: it reads its counts now (spawn.S3)
            family.wake()

    def _child_saved(self, job: Job) -> None:
        """A child's progress is stored: its parent's weighted progress follows (G8)."""
        if job.parent_id is not None:
            self.parents.touch(job.parent_id)

    async def _refresh_parent(self, parent_id: str) -> None:
        family = self._families.get(parent_id)
        if family is not None:  # its handler runs here and folds its counts itself (S3)
            family.wake()
        else:
            await batches.refresh_progress(self.store, self.hub, parent_id)

    def untrack(self, live: LiveJob) -> None:
        if live.job.state is JobState.QUEUED and live.stop_reason == "shutdown":
            return  # re-queued by a shutdown: it runs after the next start
        if self.live.get(live.job.id) is live:
            del self.live[live.job.id]
        if self._on_untracked is not None:
            self._on_untracked(live.job)

    # -- running ---------------------------------------------------------------------------

    def claim(self, job: Job, trace: dict[str, str] | None = None) -> LiveJob:
        """Track ``job`` and run it once a slot is free: a job a queue worker dequeued, with
        the trace context of its submission (tracing.O3)."""
        live = self.track(job)
        live.trace = trace
        live.task = asyncio.create_task(self._run_claimed(live), name=f"job-{job.id}")
        return live

    async def _run_claimed(self, live: LiveJob) -> None:
        await self.slots.acquire()  # released by run
        await self.run(live)

    async def run(self, live: LiveJob) -> None:
        """Run a tracked job whose slot is taken; give the slot back and untrack it at the end."""
        if self.tracing is None:
            return await self._run(live)
        with self.tracing.attempt(live.job, live.trace):  # tracing.O3
            await self._run(live)

    async def _run(self, live: LiveJob) -> None:  # R1
        try:
            spec = self.registry.find(live.job.kind)
            if spec is None:
                await self.finish(
                    live,
                    JobState.FAILED,
                    error=job_error(
                        "UnknownKind", f"no handler for kind {live.job.kind!r} is loaded"
                    ),
                )
                return
            if live.job.state is JobState.RUNNING:  # parked: the same attempt goes on (R5)
                if (
                    live.stop_reason is None
                    and await input_wait.parked_for(self.store, live.job) is not None
                    and live.stop_reason is None  # a stop meanwhile: the call below ends it
                ):
                    live.parked = True  # a stale wake: parked again, nothing ran
                    return
                live.parked = False
                live.rearm()
                resumed = True
            else:
                await live.transition(JobState.RUNNING)
                resumed = False
            live.start_pump()
            await self._execute(live, spec, resumed=resumed)
            if live.job.state is JobState.QUEUED and live.stop_reason == "cancel":
                # cancelled while its retry was being published (R4): end it now
                await self.finish(live, JobState.CANCELLED, message="cancelled")
        except JobcastError as exc:  # the broker or store failed around the handler
            logger.error("job %s: %s", live.job.id, exc)
            if not live.job.terminal and live.stop_reason != "shutdown":
                # Watchers must see an end (a shutdown's re-queue is R3's at restart): fail it;
                # its terminal state is stored once the store is back (live.L5).
                with contextlib.suppress(JobcastError):
                    error = job_error("Unavailable", f"the job could not run: {exc}")
                    await self.finish(live, JobState.FAILED, error=error)
        except Exception:
            logger.exception("job %s: the runner failed", live.job.id)
            if not live.job.terminal:
                with contextlib.suppress(Exception):
                    error = job_error("InternalError", "the job runner failed; see the server log")
                    await self.finish(live, JobState.FAILED, error=error)
        finally:
            # else its thread releases it (R2), or it gave it back to wait (input_wait.N2)
            if live.holds_slot and not self._threads.keeps_slot(live.job.id):
                self.slots.release()
            live.holds_slot = True
            if live.parked and self._on_park is not None:  # R5: it stays tracked here
                live.task = None
                self._on_park(live)
            elif self.waits_for_retry(live) and self._on_retry is not None:
                live.task = None  # R4: queued again; the runner's schedule runs it next
                self._on_retry(live)
            else:
                self.untrack(live)

    @staticmethod
    def waits_for_retry(live: LiveJob) -> bool:
        """Whether the job's run ended in a scheduled retry (R4)."""
        job = live.job
        return (
            job.state is JobState.QUEUED
            and job.next_attempt_at is not None
            and live.stop_reason is None
        )

    async def _execute(self, live: LiveJob, spec: HandlerSpec, *, resumed: bool) -> None:
        job = live.job
        children = Children(
            live, self.registry, self._enqueue, default_max_attempts=self.options.max_attempts
        )
        ctx = JobContext(
            live,
            job_id=job.id,
            kind=job.kind,
            owner=job.owner,
            params=job.params,
            input=job.input,
            input_path=self.upload_path(job.id) if job.input else None,
            attempt=job.attempts,
            max_attempts=self.attempt_limit(job),
            # R6: its first run's streams are all its streams; any other run's may not be
            outputs=self._outputs_of(job.id, whole=job.attempts <= 1 and not resumed),
            children=children,
        )
        self._families[job.id] = children
        live.parks = spec.rerunnable and (self._park_async or not spec.is_async)  # N7
        try:
            ending = await self._calls.call(live, spec, ctx)
        finally:
            del self._families[job.id]
            await children.stop()
        if job.id in self._job_outputs:  # what the handler wrote is stored before its end
            await self._job_outputs[job.id].flush()
        if ending is PARKED or (
            ending.state is None and input_wait.is_parked(job, spec.rerunnable)
        ):
            if live.stop_reason == "cancel":  # cancelled as it parked
                await self.finish(live, JobState.CANCELLED, message="cancelled")
            else:
                await self._park(live)  # R5
        elif ending.state is None:
            await self.interrupted(live, "the server shut down while the job was running")
        elif (
            ending.retryable and live.stop_reason is None and job.attempts < self.attempt_limit(job)
        ):
            await self._retry_later(live, spec, ending)  # R4
        else:
            state = ending.state
            settled = await children.settle((state, ending.fields)) if state.terminal else None
            if settled is not None:
                state, fields = settled
            elif state.terminal:  # handed over: its children's ends end it (spawn.S4)
                if job.id in self._job_outputs:  # its handler is done writing
                    await self._job_outputs.pop(job.id).close_all()
                return
            else:
                fields = ending.fields
            await self.finish(live, state, **fields)

    async def _park(self, live: LiveJob) -> None:
        """End a run that parked (R5): its reports published, the job stored as it waits."""
        await live.stop_pump()
        await live.store_now()
        live.parked = True
        if self._on_park is None:  # it resumes elsewhere, with output streams of its own
            self._job_outputs.pop(live.job.id, None)

    async def _retry_later(self, live: LiveJob, spec: HandlerSpec, ending: Ending) -> None:
        job = live.job
        delay = ending.retry_after
        if delay is None:
            delay = (spec.retry or RetryPolicy()).backoff(job.attempts)  # retry.T1
        error = ending.fields.get("error")
        message = (
            f"attempt {job.attempts} of {self.attempt_limit(job)} failed; retrying in {delay:.1f} s"
        )
        await live.stop_pump()
        await live.transition(
            JobState.QUEUED, message=message, error=error, retry_at=time.time() + delay
        )
        live.rearm()

    def stop(self, live: LiveJob, reason: str) -> None:
        """Cancel a running job: ``reason`` is "cancel" (a user) or "shutdown" (R3 applies)."""
        live.stop_reason = live.stop_reason or reason
        live.request_cancel()
        self._calls.cancel(live.job.id)

    async def finish(self, live: LiveJob, state: JobState, **fields: Any) -> None:
        await live.stop_pump()
        if state.terminal:
            # Closed before the terminal event: a watcher that sees the end finds them closed.
            await self._close_outputs(live.job.id)
            self._outputs_closed.add(live.job.id)  # its after_terminal need not (R6)
        await live.transition(state, **fields)

    async def _close_outputs(self, job_id: str) -> None:
        """Close every output stream of a job that ended (R6): the ones its run here wrote,
        and, unless that run was its only one, any other still open under its path."""
        outputs = self._job_outputs.pop(job_id, None)
        if outputs is not None:
            await outputs.close_all()
            if outputs.whole:
                return  # nothing but this run wrote its streams: no listing needed
        if self.outputs is not None:
            await close_left_open(self.outputs, job_id)

    def _outputs_of(self, job_id: str, *, whole: bool) -> JobOutputs | None:
        """The job's output streams (kept across its attempts), if jobs here have them;
        ``whole``: this run is the job's first, so no other run opened any (R6)."""
        if self.outputs is None:
            return None
        outputs = self._job_outputs.get(job_id)
        if outputs is None:
            outputs = self._job_outputs[job_id] = JobOutputs(self.outputs, job_id, whole=whole)
        return outputs

    async def interrupted(self, live: LiveJob, why: str) -> None:  # R3
        spec = self.registry.find(live.job.kind)
        ending = after_interruption(spec, live.job.attempts, self.attempt_limit(live.job), why)
        state, fields = ending.state or JobState.FAILED, ending.fields
        if state.terminal:  # it may have spawned children: it ends after them (spawn.S4)
            children = Children(live, self.registry, None, default_max_attempts=0)
            settled = await children.settle((state, fields), look=True)
            if settled is None:
                return
            state, fields = settled
        await self.finish(live, state, **fields)

    async def resume_interrupted(self, job: Job, why: str) -> bool:
        """Apply R3 to a job found ``running`` whose process died; True if it may run again."""
        live = self.track(job)
        await self.interrupted(live, why)
        self.untrack(live)
        return live.job.state is JobState.QUEUED

    async def close(self) -> None:
        """Stop the running jobs as a shutdown (R3) and wait for their ends, bounded."""
        running = [live for live in self.live.values() if live.task is not None]
        for live in running:
            self.stop(live, "shutdown")
        tasks = [live.task for live in running if live.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=10)
            for task in pending:  # say, still retrying a store write (live.L5): R3 at restart
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1)
        await self.parents.close()
        self._threads.shutdown()
