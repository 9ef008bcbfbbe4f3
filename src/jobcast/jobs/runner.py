"""The embedded runner: runs handlers in this process, at most ``concurrency`` at a time.

Decisions (cited as R1..R4):

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
R3. Recovery at startup: a job found ``running`` was interrupted by a crash. It is re-queued
    when its handler is ``retry_safe`` (up to ``max_attempts`` runs), else failed with an
    ``Interrupted`` error. Queued jobs resume in submission order. A graceful shutdown applies
    the same rule to the jobs it interrupts. Nothing is ever left ``running``. A recovered
    job's ``seq`` goes on from the newest event it published, which the store may lag (at a
    server's start; a queue worker, which only publishes, cannot read the history).
R4. The runner keeps every queued and running job in memory (bounded by ``max_queued`` plus
    ``concurrency``): reads of live jobs never touch the store, and the owner of any job that
    can still publish is known without a query (``owner_of``, used by stream filters), on
    every instance (``access.py``: jobs created or shared elsewhere are announced).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from jobcast._files import make_private_dir
from jobcast._lock import ProcessLock
from jobcast.errors import Conflict, InvalidInput, JobcastError, NotFound, Unavailable
from jobcast.events import EventId
from jobcast.jobs.access import Access, JobAccess
from jobcast.jobs.context import JobContext
from jobcast.jobs.handler_calls import HandlerCalls, after_interruption, job_error
from jobcast.jobs.live import LiveJob
from jobcast.jobs.model import InputFile, Job, JobState, job_topic, new_job_id
from jobcast.jobs.registry import HandlerSpec, Registry
from jobcast.jobs.stats import JobStats
from jobcast.jobs.threads import HandlerThreads
from jobcast.stores.base import JobPage, JobQuery, JobStore
from jobcast.topics import TopicPattern

if TYPE_CHECKING:
    from jobcast.hub import Hub

logger = logging.getLogger("jobcast.jobs")


@dataclass(frozen=True, slots=True)
class RunnerOptions:
    uploads_dir: Path
    concurrency: int = 4
    default_timeout: float | None = 3600.0
    progress_interval: float = 0.1
    store_interval: float = 0.25
    max_queued: int = 10_000
    max_attempts: int = 3
    max_event_bytes: int = 64 * 1024
    #: How long ``cancel`` waits for a running handler to stop before answering.
    cancel_wait: float = 5.0
    #: Threads of ended sync jobs that may still run while others take their place (R2).
    max_abandoned_threads: int = 8


class EmbeddedRunner:
    """Submits, runs, cancels and reports jobs. Create it in a lifespan; ``start``; ``close``."""

    def __init__(self, store: JobStore, hub: Hub, registry: Registry, options: RunnerOptions):
        self.store = store
        self.hub = hub
        self.registry = registry
        self.options = options
        self._live: dict[str, LiveJob] = {}
        self._queue: collections.deque[str] = collections.deque()
        self._work = asyncio.Event()
        self._slots = asyncio.Semaphore(options.concurrency)
        self.access = JobAccess(store, hub, self._live.get)  # R4
        self._threads = HandlerThreads(  # R2
            options.concurrency, options.max_abandoned_threads, self._slots.release
        )
        self._calls = HandlerCalls(self._threads, options.default_timeout)
        self._dispatcher: asyncio.Task[None] | None = None
        self._readers_lock = asyncio.Lock()
        self._lock = ProcessLock(options.uploads_dir.parent / "runner.lock", "the job runner")
        self.stats = JobStats()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        make_private_dir(self.options.uploads_dir)
        self._lock.acquire()  # a second process would run the same queued jobs again
        try:
            await self._recover()
        except BaseException:
            self._lock.release()
            raise
        self._dispatcher = asyncio.create_task(self._dispatch_forever(), name="jobcast-dispatch")

    async def close(self) -> None:
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._dispatcher
        running = [live for live in self._live.values() if live.task is not None]
        for live in running:
            self._stop(live, "shutdown")
        tasks = [live.task for live in running if live.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=10)
            for task in pending:  # say, still retrying a store write (live.L5): R3 at restart
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1)
        self._threads.shutdown()
        await self.access.close()
        self._lock.release()

    async def _recover(self) -> None:  # R3
        for job in await self.store.in_states([JobState.RUNNING], limit=1_000_000):
            live = self._track(await self._caught_up(job))
            await self._interrupted(live, "the server stopped while the job was running")
        for job in await self.store.in_states([JobState.QUEUED], limit=1_000_000):
            self._track(await self._caught_up(job))
            self._queue.append(job.id)
        self._work.set()

    async def _caught_up(self, job: Job) -> Job:
        """``job`` with the ``seq`` of the newest event it published (R3).

        The store is written at most every ``store_interval``, so a process that died can leave
        it behind the job's events; continuing from the stored ``seq`` would number new events
        as old ones. The events after the stored one are in the history: the newest ``seq``
        among them is where the job's numbering goes on. (History that no longer has them, or
        that is new, can tell nothing: the stored ``seq`` stays.)
        """
        hub = self.hub
        after = EventId.parse(job.last_event_id) if job.last_event_id else None
        if after is None or after.epoch != hub.broker.epoch:
            return job
        topic = (TopicPattern(job_topic(job.id), None),)
        with contextlib.suppress(JobcastError):
            missed = await hub.broker.replay(topic, after, hub.options.max_replay)
            for event in missed.events:
                with contextlib.suppress(ValueError, TypeError, AttributeError):
                    job.seq = max(job.seq, int(orjson.loads(event.data_json)["seq"]))
        return job

    # -- requests --------------------------------------------------------------------------

    async def submit(
        self,
        kind: str,
        params: Any,
        owner: str,
        *,
        input: InputFile | None = None,
        upload: Path | None = None,
    ) -> Job:
        """Validate and queue a job; ``upload`` (a temporary file) becomes its input file."""
        spec = self.registry.get(kind)
        if spec.needs_input and input is None:
            raise InvalidInput(f"jobs of kind {kind!r} need an uploaded file (multipart 'file')")
        valid_params = spec.validate_params(params)
        if len(self._queue) >= self.options.max_queued:
            raise Unavailable("too many queued jobs; try again later")
        job = Job(id=new_job_id(), kind=kind, owner=owner, params=valid_params, input=input)
        if upload is not None:
            await asyncio.to_thread(upload.rename, self.upload_path(job.id))
        try:
            await self.store.create(job)
        except BaseException:
            await asyncio.to_thread(self.upload_path(job.id).unlink, missing_ok=True)
            raise
        try:  # before the job's first event, so every instance's filters know its owner
            await self.access.announce(job)
        except JobcastError as exc:  # as for the queued event: the job is stored, it runs
            logger.warning("job %s: could not announce it to other instances: %s", job.id, exc)
        live = self._track(job)
        await live.transition(JobState.QUEUED)
        await self._enqueue(live)
        return live.published.copy()

    async def _enqueue(self, live: LiveJob) -> None:
        """Hand a new queued job to what runs it: here, this runner's dispatcher."""
        self._queue.append(live.job.id)
        self._work.set()

    async def get(self, job_id: str) -> Job | None:
        """The freshest state of a job (live jobs from memory)."""
        live = self._live.get(job_id)
        if live is not None:
            return live.published.copy()
        job = await self.store.get(job_id)
        if job is not None:
            self._remember_owner(job)
        return job

    async def list_jobs(self, query: JobQuery) -> JobPage:
        page = await self.store.list_jobs(query)
        jobs = []
        for job in page.jobs:
            live = self._live.get(job.id)
            jobs.append(live.published.copy() if live is not None else job)
            self._remember_owner(job)
        return JobPage(jobs, page.next_cursor)

    async def cancel(self, job_id: str) -> Job:
        live = self._live.get(job_id)
        if live is None:
            job = await self.get(job_id)
            if job is None:
                raise NotFound(f"no job {job_id!r}")
            raise Conflict(f"job {job_id} is already {job.state.value}")
        if live.task is None:  # still queued: nothing runs yet
            live.request_cancel()
            with contextlib.suppress(ValueError):  # its place is free for the next submission
                self._queue.remove(job_id)
            live.task = asyncio.create_task(self._cancel_queued(live), name=f"job-{job_id}")
        else:
            self._stop(live, "cancel")
        with contextlib.suppress(TimeoutError):  # a store outage delays only the store write
            await asyncio.wait_for(asyncio.shield(live.task), self.options.cancel_wait)
        return live.published.copy()

    async def _cancel_queued(self, live: LiveJob) -> None:
        try:
            await live.transition(JobState.CANCELLED, message="cancelled before it started")
        finally:
            self._untrack(live)

    async def delete(self, job_id: str) -> None:
        job = await self.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}")
        if not job.terminal:
            raise Conflict(f"job {job_id} is {job.state.value}; cancel it before deleting it")
        await self.store.delete(job_id)
        await asyncio.to_thread(self.upload_path(job_id).unlink, missing_ok=True)
        self.access.forget(job_id)

    async def change_readers(
        self, job_id: str, *, add: str | None = None, remove: str | None = None, limit: int
    ) -> Job:
        """Grant or withdraw one subject's read access to a job, live or finished."""
        async with self._readers_lock:  # this process applies changes in the store's order
            readers = await self.store.change_readers(job_id, add=add, remove=remove, limit=limit)
            if readers is None:
                raise NotFound(f"no job {job_id!r}")
            job = await self._with_readers(job_id, readers)
        self._remember_owner(job)
        self.hub.forget_access()  # open wildcard streams must see the new grant at once
        await self.access.announce(job)  # and those on other instances (a 503 here: retry)
        return job

    async def _with_readers(self, job_id: str, readers: list[str]) -> Job:
        live = self._live.get(job_id)
        if live is not None:
            live.job.readers = list(readers)
            live.published.readers = list(readers)
            job = live.published.copy()
        else:
            stored = await self.store.get(job_id)
            if stored is None:  # deleted in between
                raise NotFound(f"no job {job_id!r}")
            job = stored
        return job

    def owner_of(self, job_id: str) -> str | None:
        """The owner of a job, when known without a query (R4); ``None`` otherwise."""
        access = self.access_of(job_id)
        return access[0] if access is not None else None

    def access_of(self, job_id: str) -> Access | None:
        """A job's owner and granted readers, when known without a query (R4)."""
        return self.access.get(job_id)

    def upload_path(self, job_id: str) -> Path:
        return self.options.uploads_dir / job_id

    @property
    def kinds(self) -> Collection[str]:
        return self.registry.kinds

    # -- queue workers (jobs/worker.py) run dequeued jobs through the same path ----------

    def claim(self, job: Job) -> LiveJob:
        """Run a job that a queue worker dequeued, exactly as this runner runs its own (R1)."""
        live = self._track(job)
        live.task = asyncio.create_task(self._run_claimed(live), name=f"job-{job.id}")
        return live

    async def _run_claimed(self, live: LiveJob) -> None:
        await self._slots.acquire()  # released by _run
        await self._run(live)

    def stop(self, live: LiveJob, reason: str) -> None:
        """Cancel a running job: ``reason`` is "cancel" (a user) or "shutdown" (R3 applies)."""
        self._stop(live, reason)

    async def resume_interrupted(self, job: Job, why: str) -> bool:
        """Apply R3 to a job found ``running`` whose process died; True if it may run again."""
        live = self._track(job)
        await self._interrupted(live, why)
        self._untrack(live)
        return live.job.state is JobState.QUEUED

    # -- running ---------------------------------------------------------------------------

    async def _dispatch_forever(self) -> None:
        while True:
            await self._slots.acquire()
            while not self._queue:
                await self._work.wait()
                self._work.clear()
            live = self._live.get(self._queue.popleft())
            if live is None or live.job.state is not JobState.QUEUED or live.task is not None:
                self._slots.release()  # cancelled while queued
                continue
            live.task = asyncio.create_task(self._run(live), name=f"job-{live.job.id}")

    async def _run(self, live: LiveJob) -> None:  # R1
        try:
            spec = self.registry.find(live.job.kind)
            if spec is None:
                await self._finish(
                    live,
                    JobState.FAILED,
                    error=job_error(
                        "UnknownKind", f"no handler for kind {live.job.kind!r} is loaded"
                    ),
                )
                return
            await live.transition(JobState.RUNNING)
            live.start_pump()
            await self._execute(live, spec)
        except JobcastError as exc:  # the broker or store failed around the handler
            logger.error("job %s: %s", live.job.id, exc)
            if not live.job.terminal and live.stop_reason != "shutdown":
                # Watchers must see an end (a shutdown's re-queue is R3's at restart): fail it;
                # its terminal state is stored once the store is back (live.L5).
                with contextlib.suppress(JobcastError):
                    error = job_error("Unavailable", f"the job could not run: {exc}")
                    await self._finish(live, JobState.FAILED, error=error)
        except Exception:
            logger.exception("job %s: the runner failed", live.job.id)
            if not live.job.terminal:
                with contextlib.suppress(Exception):
                    error = job_error("InternalError", "the job runner failed; see the server log")
                    await self._finish(live, JobState.FAILED, error=error)
        finally:
            self._untrack(live)
            if not self._threads.keeps_slot(live.job.id):  # else its thread releases it (R2)
                self._slots.release()

    async def _execute(self, live: LiveJob, spec: HandlerSpec) -> None:
        job = live.job
        ctx = JobContext(
            live,
            job_id=job.id,
            kind=job.kind,
            owner=job.owner,
            params=job.params,
            input=job.input,
            input_path=self.upload_path(job.id) if job.input else None,
        )
        ending = await self._calls.call(live, spec, ctx)
        if ending.state is None:
            await self._interrupted(live, "the server shut down while the job was running")
        else:
            await self._finish(live, ending.state, **ending.fields)

    def _stop(self, live: LiveJob, reason: str) -> None:
        live.stop_reason = live.stop_reason or reason
        live.request_cancel()
        self._calls.cancel(live.job.id)

    async def _finish(self, live: LiveJob, state: JobState, **fields: Any) -> None:
        await live.stop_pump()
        await live.transition(state, **fields)

    async def _interrupted(self, live: LiveJob, why: str) -> None:  # R3
        spec = self.registry.find(live.job.kind)
        ending = after_interruption(spec, live.job.attempts, self.options.max_attempts, why)
        await self._finish(live, ending.state or JobState.FAILED, **ending.fields)

    # -- bookkeeping (R4) ------------------------------------------------------------------

    def _track(self, job: Job) -> LiveJob:
        options = self.options
        live = LiveJob(
            job,
            hub=self.hub,
            store=self.store,
            progress_interval=options.progress_interval,
            store_interval=options.store_interval,
            max_event_bytes=options.max_event_bytes,
            on_terminal=self.stats.finished,
        )
        self._live[job.id] = live
        return live

    def _untrack(self, live: LiveJob) -> None:
        if live.job.state is JobState.QUEUED and live.stop_reason == "shutdown":
            return  # re-queued by a shutdown: it runs after the next start
        if self._live.get(live.job.id) is live:
            del self._live[live.job.id]
        self._remember_owner(live.job)

    def _remember_owner(self, job: Job) -> None:
        self.access.remember(job)
