"""One process's reports of its tasks' jobs into the shared broker and job store.

A queue's hooks (Celery signals, ...) run in the sending or working process, in any thread,
and must never fail or slow down the task. They call this :class:`Reporter`, which does the
work on an event loop thread of its own, with the same :class:`~jobcast.jobs.live.LiveJob`
a native job has: coalesced progress, events numbered in order, store writes bounded.

Decisions (cited as P1..P6):

P1. One loop thread per process, started at first use and again after a fork (a prefork
    pool's children inherit the object, not the thread): its connections are its own.
P2. A hook waits for its report at most ``wait`` seconds. Creating the queued job is waited
    for, so the sender's next read finds it; a terminal report that cannot be stored yet goes
    on in the background (live.L5) and the process waits for it, bounded, at exit.
P3. jobcast being down never fails a task: every report catches jobcast's errors, logs a
    warning and counts what it dropped (``counts``). A progress report for a job this process
    could not start is dropped and counted; the terminal state is retried until stored.
P4. A job that is already terminal when its task starts (cancelled while queued) is not
    reported again; a job found ``running`` (its task re-delivered after its worker died)
    goes on as a new attempt.
P5. While a task runs, its job is stored every third of ``heartbeat`` seconds with a fresh
    ``updated_at`` (``LiveJob.beat``). ``sweep`` fails as ``Interrupted`` this queue's jobs
    left ``running`` and silent for longer than ``heartbeat``: their worker died and nothing
    re-delivers them (a queue without late acknowledgement).
P6. A job whose task was sent without tracking, or while the store was down, is created when
    it starts (or, failing that, before its terminal write), from what its worker knows.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import concurrent.futures
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

from jobcast.brokers.redis import RedisBroker
from jobcast.config import Settings
from jobcast.errors import JobcastError
from jobcast.hub import Hub
from jobcast.jobs.access import JobAccess
from jobcast.jobs.live import LiveJob
from jobcast.jobs.metadata import JobMetadata, MetadataBuffer
from jobcast.jobs.model import Job, JobState
from jobcast.jobs.recovery import caught_up
from jobcast.stores import open_store
from jobcast.stores.base import JobStore

logger = logging.getLogger("jobcast.integrations")

#: Seconds the process waits at exit for terminal reports still being retried (P2).
EXIT_WAIT = 10.0
INTERRUPTED = {"type": "Interrupted", "message": "the worker running the task stopped"}


class Reporter:
    """Reports the jobs of one queue (``runs_on``) from this process; thread-safe (P1)."""

    def __init__(
        self,
        runs_on: str,
        *,
        broker_url: str,
        store_url: str,
        heartbeat: float = 10.0,
        wait: float = 5.0,
    ) -> None:
        self.runs_on = runs_on
        self.settings = Settings(broker_url=broker_url, store_url=store_url)
        self.heartbeat = heartbeat
        self.wait = wait
        #: What jobcast being down cost (P3): progress reports dropped, reports that failed.
        self.counts: collections.Counter[str] = collections.Counter()
        self._pid = -1
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._backend: _Backend | None = None
        # The store's modules load in the worker's main process, before its pool forks, so
        # no child pays for them at its first task.
        open_store(self.settings.resolved_store_url)
        os.register_at_fork(after_in_child=self._forked)

    def _forked(self) -> None:
        """In a forked child: the parent's lock may have been held, its thread is not here."""
        self._lock = threading.Lock()
        self._pid, self._loop, self._backend = -1, None, None

    # -- the hooks' side: blocking at most ``wait`` (P2), never raising (P3) ----------------

    def warm(self) -> None:
        """Connect now, in the background: a pool child right after it forked (P1)."""
        with contextlib.suppress(Exception):
            loop, backend = self._started()
            asyncio.run_coroutine_threadsafe(backend.guarded(_nothing), loop)

    def queued(self, job: Job) -> None:
        self._call("queued", lambda b: b.queued(job))

    def started(self, job: Job) -> bool:
        """``job`` as the worker knows it; the stored one wins when there is one (P4, P6).
        False when the job ended before it started (cancelled while queued): skip the task."""
        return self._call("started", lambda b: b.started(job)) is not False

    def progress(self, job_id: str, percent: float, stage: str | None, message: str | None) -> None:
        """Cheap: hands the report to the job's coalescing (live.L2); never waits."""
        backend = self._backend if self._pid == os.getpid() else None
        live = backend.live.get(job_id) if backend is not None else None
        if live is None:  # P3
            self.counts["progress_dropped"] += 1
            if self.counts["progress_dropped"] == 1:
                logger.warning("job %s: progress dropped: jobcast could not start it", job_id)
            return
        live.report_progress(percent, message, stage)

    def metadata(self, job_id: str) -> JobMetadata:
        """The running task's metadata (``ctx.metadata``'s twin): coalesced like progress;
        updates of a task jobcast could not start are dropped, as its progress is (P3)."""

        def change(update: Callable[[MetadataBuffer], None]) -> None:
            backend = self._backend if self._pid == os.getpid() else None
            live = backend.live.get(job_id) if backend is not None else None
            if live is None:  # P3
                self.counts["metadata_dropped"] += 1
                return
            live.change_metadata(update)

        return JobMetadata(change)

    def retrying(self, job_id: str, error: dict[str, str]) -> None:
        self._call("retrying", lambda b: b.retrying(job_id, error))

    def finished(self, job_id: str, state: JobState, **fields: Any) -> None:
        self._call("finished", lambda b: b.finished(job_id, state, **fields))

    def sweep(self) -> int:
        """Fail this queue's silent ``running`` jobs as ``Interrupted`` (P5); how many."""
        swept: int | None = self._call("sweep", lambda b: b.sweep())
        return swept or 0

    def sweep_every_heartbeat(self) -> None:
        """Sweep now and then once a heartbeat, from this process (a worker's main one)."""
        self._call("sweep", lambda b: b.start_sweeping())

    def close(self) -> None:
        """Wait (bounded) for reports still being retried, then close the connections."""
        if self._pid != os.getpid() or self._loop is None or self._backend is None:
            return
        backend, loop = self._backend, self._loop
        self._backend = self._loop = None
        self._pid = -1
        with contextlib.suppress(Exception):
            future = asyncio.run_coroutine_threadsafe(backend.close(), loop)
            future.result(EXIT_WAIT + 5)
        loop.call_soon_threadsafe(loop.stop)

    # -- internals -------------------------------------------------------------------------

    def _call(self, what: str, work: Callable[[_Backend], Coroutine[Any, Any, Any]]) -> Any:
        try:
            loop, backend = self._started()
            future = asyncio.run_coroutine_threadsafe(backend.guarded(work), loop)
            return future.result(self.wait)
        except (concurrent.futures.TimeoutError, TimeoutError):
            logger.warning("jobcast: %s report still pending after %g s", what, self.wait)
        except Exception as exc:  # P3: whatever jobcast's trouble, the task goes on
            self.counts[f"{what}_failed"] += 1
            logger.warning("jobcast: %s report failed: %s", what, exc)
        return None

    def _started(self) -> tuple[asyncio.AbstractEventLoop, _Backend]:  # P1
        with self._lock:
            if self._pid != os.getpid() or self._loop is None or self._backend is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="jobcast-reporter", daemon=True
                )
                thread.start()
                self._backend = _Backend(self)
                self._loop, self._pid = loop, os.getpid()
                atexit.register(self.close)
            return self._loop, self._backend


async def _nothing(backend: _Backend) -> None:
    return None


class _Backend:
    """The reporter's state on its loop: connections, live jobs, the heartbeat (P5)."""

    def __init__(self, reporter: Reporter) -> None:
        self.reporter = reporter
        self.live: dict[str, LiveJob] = {}
        self._broker: RedisBroker | None = None
        self._hub: Hub | None = None
        self._store: JobStore | None = None
        self._access: JobAccess | None = None
        self._unstored: set[str] = set()  # P6
        self._endings: set[asyncio.Task[None]] = set()
        self._beat: asyncio.Task[None] | None = None
        self._sweeps: asyncio.Task[None] | None = None
        self._opening = asyncio.Lock()

    async def guarded(self, work: Callable[[_Backend], Coroutine[Any, Any, Any]]) -> Any:
        await self._open()
        return await work(self)

    async def _open(self) -> None:
        async with self._opening:  # one opening, however many reports wait for it
            if self._store is None:
                await self._connect()

    async def _connect(self) -> None:
        settings = self.reporter.settings
        broker = RedisBroker(settings.resolved_broker_url, settings.retention())
        await broker.connect()  # publish-only, as a jobcast worker's
        store = open_store(settings.resolved_store_url)
        try:
            await store.open()
        except BaseException:
            await broker.close()
            raise
        self._broker, self._store = broker, store
        self._hub = Hub(broker, settings.hub_options())
        self._access = JobAccess(store, self._hub, self.live.get)
        self._beat = asyncio.create_task(self._beat_forever())

    def _track(self, job: Job) -> LiveJob:
        assert self._hub is not None and self._store is not None  # opened by guarded()
        options = self.reporter.settings.runner_options()
        return LiveJob(
            job,
            hub=self._hub,
            store=self._store,
            progress_interval=options.progress_interval,
            store_interval=options.store_interval,
            max_event_bytes=options.max_event_bytes,
        )

    async def queued(self, job: Job) -> None:
        assert self._store is not None and self._access is not None
        await self._store.create(job)
        try:  # before the job's first event, so every instance knows its owner (access.A1)
            await self._access.announce(job)
        except JobcastError as exc:
            logger.warning("job %s: could not announce it: %s", job.id, exc)
        await self._track(job).transition(JobState.QUEUED)

    async def started(self, job: Job) -> bool:
        assert self._store is not None and self._hub is not None
        try:
            stored = await self._store.get(job.id)
        except JobcastError as exc:  # P6: go on from what the worker knows
            logger.warning("job %s: store unavailable at start: %s", job.id, exc)
            stored, self._unstored = None, self._unstored | {job.id}
        else:
            if stored is None:
                await self.queued(job)
        if stored is not None:
            if stored.terminal:  # P4
                return False
            job = await caught_up(self._hub, stored)
        live = self.live.get(job.id) or self._track(job)
        self.live[job.id] = live
        try:
            await live.transition(JobState.RUNNING)
        except JobcastError as exc:  # published, not stored: the heartbeat stores it (P5)
            logger.warning("job %s: running state not stored: %s", job.id, exc)
        live.start_pump()
        return True

    async def retrying(self, job_id: str, error: dict[str, str]) -> None:
        live = await self._take(job_id)
        if live is None or live.job.state is JobState.QUEUED:  # reported already
            return
        await live.stop_pump()
        live.job.error = error  # the last error stays visible while it waits (retries)
        await live.transition(JobState.QUEUED, message=f"retrying: {error['type']}")

    async def finished(self, job_id: str, state: JobState, **fields: Any) -> None:
        live = await self._take(job_id)
        if live is None:
            return
        await live.stop_pump()
        ending = asyncio.create_task(self._end(live, state, fields))
        self._endings.add(ending)
        ending.add_done_callback(self._endings.discard)
        await asyncio.shield(ending)  # the caller's wait is bounded; the ending is not (P2)

    async def _end(self, live: LiveJob, state: JobState, fields: dict[str, Any]) -> None:
        if live.job.id in self._unstored:
            await self._create_late(live)
        await live.transition(state, **fields)  # stored until it sticks (live.L5)

    async def _create_late(self, live: LiveJob) -> None:  # P6
        assert self._store is not None
        with contextlib.suppress(JobcastError):
            if await self._store.get(live.job.id) is None:
                await self._store.create(live.published.copy())
            self._unstored.discard(live.job.id)

    async def _take(self, job_id: str) -> LiveJob | None:
        """The job's live copy, leaving this process's map; or loaded, when another process
        ran it (a prefork child killed, a task revoked before it started)."""
        live = self.live.pop(job_id, None)
        if live is not None:
            return live if not live.job.terminal else None
        assert self._store is not None and self._hub is not None
        job = await self._store.get(job_id)
        if job is None or job.terminal:
            return None
        return self._track(await caught_up(self._hub, job))

    async def sweep(self) -> int:  # P5
        assert self._store is not None and self._hub is not None
        silent_since = time.time() - self.reporter.heartbeat
        swept = 0
        for job in await self._store.in_states([JobState.RUNNING], limit=10_000):
            if job.runs_on != self.reporter.runs_on or job.updated_at >= silent_since:
                continue
            if job.id in self.live:
                continue
            live = self._track(await caught_up(self._hub, job))
            await live.transition(JobState.FAILED, error=dict(INTERRUPTED))
            swept += 1
        return swept

    async def start_sweeping(self) -> None:
        if self._sweeps is None:
            self._sweeps = asyncio.create_task(self._sweep_forever())

    async def _sweep_forever(self) -> None:  # P5
        while True:
            try:
                swept = await self.sweep()
            except JobcastError as exc:
                logger.warning("jobcast: sweep failed: %s", exc)
            else:
                if swept:
                    logger.warning(
                        "jobcast: %d job(s) of dead workers failed as Interrupted", swept
                    )
            await asyncio.sleep(self.reporter.heartbeat)

    async def _beat_forever(self) -> None:  # P5
        while True:
            await asyncio.sleep(self.reporter.heartbeat / 3)
            for live in list(self.live.values()):
                if live.job.id in self._unstored:
                    await self._create_late(live)
                try:
                    await live.beat()
                except JobcastError as exc:
                    logger.warning("job %s: heartbeat not stored: %s", live.job.id, exc)

    async def close(self) -> None:
        if self._endings:
            await asyncio.wait(list(self._endings), timeout=EXIT_WAIT)
        for task in (self._beat, self._sweeps):
            if task is not None:
                task.cancel()
        for live in self.live.values():
            await live.stop_pump()
        if self._access is not None:
            await self._access.close()
        if self._store is not None:
            await self._store.close()
        if self._broker is not None:
            await self._broker.close()
