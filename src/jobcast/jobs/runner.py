"""The embedded runner: queues jobs and dispatches them in this process, ``concurrency`` at a time.

It answers the routes (submit, read, list, cancel, delete, share) and hands each job it
dispatches to the lifecycle engine (``lifecycle.py``), which runs it. At its start it recovers
the jobs a previous process left behind (``recovery.py``); reader grants are ``access.py``'s.

Decisions (cited as D1..D4):

D1. The runner keeps every queued and running job in memory (bounded by ``max_queued`` plus
    ``concurrency``): reads of live jobs never touch the store, and the owner of any job that
    can still publish is known without a query (``owner_of``, used by stream filters), on
    every instance (``access.py``: jobs created or shared elsewhere are announced).
D2. One dispatcher task takes a slot, then the next queued job that may start (``schedule.py``:
    highest priority, then oldest; delayed jobs and waiting retries once their time came), so a
    job is ``running`` only once a slot runs it (lifecycle.R2). A job cancelled while queued
    gives its place back at once and is ended by a task of its own, never by a slot. A second
    process on the same data directory would run the same queued jobs again: a lock file
    refuses it at start.
D3. A kind with a ``concurrency`` limit that has that many jobs running is skipped by the
    dispatcher (schedule.P5) until one of them ends; its queued jobs keep their places, and
    jobs of other kinds take the free slots meanwhile. An owner with ``owner_concurrency``
    jobs running (``JOBCAST_JOB_OWNER_CONCURRENCY``) is passed over the same way (schedule.P6).
D4. A parked job (input_wait.N7-N10) stays tracked, with one wake timer: at its wait's
    ``timeout_at``, or ``input_wait.PARK_RECHECK`` seconds at most. An answer given here
    (``give_input``) fires it at once, and so does an answer that came while the job was
    parking (``input_arrived``, checked on the same event loop as it parks). A fired wake
    queues it in the dispatcher like any job; cancelling it ends it without a run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobcast._files import make_private_dir
from jobcast._lock import ProcessLock
from jobcast.errors import Conflict, InvalidInput, JobcastError, NotFound, Unavailable
from jobcast.jobs import batches
from jobcast.jobs.access import Access, JobAccess
from jobcast.jobs.dispatch import Dispatcher
from jobcast.jobs.external import ExternalQueue
from jobcast.jobs.idempotency import Idempotency
from jobcast.jobs.input_wait import PARK_RECHECK, parked_for_now
from jobcast.jobs.lifecycle import JobLifecycle
from jobcast.jobs.live import LiveJob
from jobcast.jobs.model import InputFile, Job, JobState, new_job_id
from jobcast.jobs.options import RunnerOptions
from jobcast.jobs.recovery import recover
from jobcast.jobs.registry import Registry
from jobcast.jobs.stats import JobStats
from jobcast.jobs.submit_options import SubmitOptions
from jobcast.stores.base import JobPage, JobQuery, JobStore

if TYPE_CHECKING:
    from jobcast.hub import Hub
    from jobcast.outputs.store import StreamStore

#: RunnerOptions lives in options.py (the settings build it); it is still importable from here.
__all__ = ["EmbeddedRunner", "RunnerOptions"]

logger = logging.getLogger("jobcast.jobs")

NO_OPTIONS = SubmitOptions()


class EmbeddedRunner:
    """Submits, runs, cancels and reports jobs. Create it in a lifespan; ``start``; ``close``."""

    def __init__(
        self,
        store: JobStore,
        hub: Hub,
        registry: Registry,
        options: RunnerOptions,
        *,
        external: Mapping[str, ExternalQueue] | None = None,
        outputs: StreamStore | None = None,
    ) -> None:
        self.store = store
        #: The task queues that run jobs of other systems, by ``Job.runs_on`` (external.X1);
        #: a batch's parent is cancelled through its children (batches.G5).
        self.external: Mapping[str, ExternalQueue] = {
            batches.RUNS_ON: batches.BatchChildren(self),
            **(external or {}),
        }
        self.hub = hub
        self.registry = registry
        self.options = options
        self._live: dict[str, LiveJob] = {}  # D1
        self.access = JobAccess(store, hub, self._live.get)
        self.lifecycle = JobLifecycle(
            store,
            hub,
            registry,
            options,
            live=self._live,
            on_untracked=self.access.remember,
            on_retry=self._schedule,
            outputs=outputs,
            enqueue=self._spawned,
            on_park=self._parked,
        )
        self._wakes: dict[str, asyncio.TimerHandle] = {}  # D4
        self._dispatcher = Dispatcher(self.lifecycle, self._live)  # D2, D3
        self._lock = ProcessLock(options.uploads_dir.parent / "runner.lock", "the job runner")

    @property
    def stats(self) -> JobStats:
        """Durations of the jobs that ended in this process (``/metrics``)."""
        return self.lifecycle.stats

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        make_private_dir(self.options.uploads_dir)
        self._lock.acquire()  # D2
        try:
            queued, parked = await recover(self.lifecycle)
            for job_id in queued:
                self._schedule(self._live[job_id])  # schedule.P2
            for job_id in parked:
                self._parked(self._live[job_id])  # recovery.C3
        except BaseException:
            self._lock.release()
            raise
        self._dispatcher.start()

    async def close(self) -> None:
        await self._dispatcher.close()
        await self.lifecycle.close()  # a job it interrupts as it waits parks (lifecycle.R5)
        for wake in self._wakes.values():  # D4: parked jobs stay stored as they wait
            wake.cancel()
        self._wakes.clear()
        await self.access.close()
        self._lock.release()

    # -- requests --------------------------------------------------------------------------

    async def submit(
        self,
        kind: str,
        params: Any,
        owner: str,
        *,
        input: InputFile | None = None,
        upload: Path | None = None,
        priority: int = 0,
        scheduled_for: float | None = None,
        max_attempts: int | None = None,
        rerun_of: str | None = None,
        tags: tuple[str, ...] = (),
        metadata: dict[str, Any] | None = None,
    ) -> Job:
        """Validate and queue a job; ``upload`` (a temporary file) becomes its input file.

        ``scheduled_for`` delays its start; ``max_attempts`` overrides its handler's
        (retry.T3); ``rerun_of`` links a re-run to its original. The routes validate them."""
        options = SubmitOptions(priority, scheduled_for, max_attempts, tags, metadata)
        job, _ = await self.submit_keyed(
            kind,
            params,
            owner,
            None,
            input=input,
            upload=upload,
            options=options,
            rerun_of=rerun_of,
        )
        return job

    async def submit_keyed(
        self,
        kind: str,
        params: Any,
        owner: str,
        idempotency: Idempotency | None,
        *,
        input: InputFile | None = None,
        upload: Path | None = None,
        options: SubmitOptions = NO_OPTIONS,
        rerun_of: str | None = None,
    ) -> tuple[Job, bool]:
        """:meth:`submit` under an idempotency key: the job, and whether it is new. A key
        already used for the same request returns its job (idempotency.I2)."""
        spec = self.registry.get(kind)
        if spec.needs_input and input is None:
            raise InvalidInput(f"jobs of kind {kind!r} need an uploaded file (multipart 'file')")
        valid_params = spec.validate_params(params)
        if len(self._dispatcher) >= self.options.max_queued:
            raise Unavailable("too many queued jobs; try again later")
        job = Job(
            id=new_job_id(),
            kind=kind,
            owner=owner,
            params=valid_params,
            input=input,
            max_attempts=options.max_attempts
            or spec.default_max_attempts(self.options.max_attempts),
            scheduled_for=options.scheduled_for,
            priority=options.priority,
            rerun_of=rerun_of,
            tags=list(options.tags),
            metadata=dict(options.metadata or {}),
        )
        if upload is not None:
            await asyncio.to_thread(upload.rename, self.upload_path(job.id))
        try:
            if idempotency is None:
                await self.store.create(job)
                earlier = None
            else:
                earlier = await self.store.create_keyed(
                    job,
                    idempotency.key,
                    idempotency.request_hash,
                    self.options.idempotency_retention,
                )
        except BaseException:
            await asyncio.to_thread(self.upload_path(job.id).unlink, missing_ok=True)
            raise
        if earlier is not None:
            await asyncio.to_thread(self.upload_path(job.id).unlink, missing_ok=True)
            return await self._earlier(earlier, idempotency), False
        try:  # before the job's first event, so every instance's filters know its owner
            await self.access.announce(job)
        except JobcastError as exc:  # as for the queued event: the job is stored, it runs
            logger.warning("job %s: could not announce it to other instances: %s", job.id, exc)
        live = self.lifecycle.track(job)
        if self.lifecycle.tracing is not None:  # tracing.O3: its attempts continue this trace
            live.trace = self.lifecycle.tracing.submitted(job)
        await live.transition(JobState.QUEUED)
        await self._enqueue(live)
        return live.published.copy(), True

    async def submit_batch(
        self,
        owner: str,
        items: list[tuple[str, Any, SubmitOptions]],
        *,
        tags: list[str],
        metadata: dict[str, Any],
        allow_failures: bool = False,
    ) -> tuple[Job, list[Job]]:
        """Validate every item, store the batch whole (batches.G2), then queue its jobs."""
        if not 0 < len(items) <= batches.MAX_BATCH:
            raise InvalidInput(f"a batch holds 1 to {batches.MAX_BATCH} jobs")
        if len(self._dispatcher) + len(items) > self.options.max_queued:
            raise Unavailable("too many queued jobs; try again later")
        parent = batches.new_parent(
            owner, len(items), tags=tags, metadata=metadata, allow_failures=allow_failures
        )
        children = []
        for index, (kind, params, options) in enumerate(items):
            try:
                spec = self.registry.get(kind)
                if spec.needs_input:
                    raise InvalidInput(f"jobs of kind {kind!r} need an uploaded file")
                valid_params = spec.validate_params(params)
            except InvalidInput as exc:
                raise InvalidInput(f"jobs[{index}]: {exc.message}") from None
            children.append(
                Job(
                    id=new_job_id(),
                    kind=kind,
                    owner=owner,
                    params=valid_params,
                    max_attempts=options.max_attempts
                    or spec.default_max_attempts(self.options.max_attempts),
                    scheduled_for=options.scheduled_for,
                    priority=options.priority,
                    tags=list(options.tags),
                    metadata=dict(options.metadata or {}),
                    parent_id=parent.id,
                )
            )
        await self.store.create_batch(parent, children)
        for job in (parent, *children):
            self.access.remember(job)
            try:  # before the jobs' first events (as submit_keyed)
                await self.access.announce(job)
            except JobcastError as exc:
                logger.warning("job %s: could not announce it: %s", job.id, exc)
        parent.last_event_id = await batches.publish(self.hub, parent, "state")
        await self.store.save(parent)  # its stream resumes after that event (no child ran yet)
        queued = []
        for job in children:
            live = self.lifecycle.track(job)
            await live.transition(JobState.QUEUED)
            await self._enqueue(live)
            queued.append(live.published.copy())
        return parent, queued

    async def _spawned(self, child: Job, replayed: bool) -> Job:
        """Queue a child a running handler spawned and stored (spawn.S1), as a submission; a
        replayed one is queued here already (this process queued it, or its start did)."""
        if replayed:
            return child
        self.access.remember(child)
        try:  # before its first event (as submit_keyed)
            await self.access.announce(child)
        except JobcastError as exc:
            logger.warning("job %s: could not announce it: %s", child.id, exc)
        live = self.lifecycle.track(child)
        await live.transition(JobState.QUEUED)
        await self._enqueue(live)
        return live.published.copy()

    async def cancel_children(self, job_id: str) -> None:
        """Cancel the children a cancelled job spawned that have not ended (batches.G5)."""
        job = await self.get(job_id)
        if job is not None:
            await batches.BatchChildren(self).revoke(job)

    async def _earlier(self, earlier: tuple[str, str], idempotency: Idempotency | None) -> Job:
        job_id, request_hash = earlier
        if idempotency is None or request_hash != idempotency.request_hash:  # I2
            raise Conflict(
                "this Idempotency-Key was already used for a different request; "
                "use a new key for a new job"
            )
        job = await self.get(job_id)
        if job is None:  # deleted meanwhile (its keys go with it: idempotency.I4)
            raise Conflict("this Idempotency-Key's job was deleted; use a new key")
        return job

    async def _enqueue(self, live: LiveJob) -> None:
        """Hand a new queued job to what runs it: here, this runner's dispatcher."""
        self._schedule(live)

    def _parked(self, live: LiveJob) -> None:
        """Arm a parked job's wake (D4)."""
        job_id = live.job.id
        if live.input_arrived.is_set():  # answered while it parked (input_wait.N9)
            live.input_arrived.clear()
            self._wake(job_id)
            return
        delay = min(parked_for_now(live.job), PARK_RECHECK)
        if (earlier := self._wakes.pop(job_id, None)) is not None:
            earlier.cancel()
        self._wakes[job_id] = asyncio.get_running_loop().call_later(delay, self._wake, job_id)

    def _wake(self, job_id: str) -> None:
        """Queue a parked job to run (D4): answered, timed out, or to look again."""
        wake = self._wakes.pop(job_id, None)
        if wake is not None:
            wake.cancel()
        live = self._live.get(job_id)
        if live is not None and live.parked and live.task is None:
            self._dispatcher.push(live)

    def _schedule(self, live: LiveJob) -> None:
        """Queue a tracked job at its priority, no earlier than its time (D2, lifecycle.R4)."""
        self._dispatcher.push(live)

    async def get(self, job_id: str) -> Job | None:
        """The freshest state of a job (live jobs from memory, D1)."""
        live = self._live.get(job_id)
        if live is not None:
            return live.published.copy()
        job = await self.store.get(job_id)
        if job is not None:
            self.access.remember(job)
        return job

    async def list_jobs(self, query: JobQuery) -> JobPage:
        page = await self.store.list_jobs(query)
        jobs = []
        for job in page.jobs:
            live = self._live.get(job.id)
            jobs.append(live.published.copy() if live is not None else job)
            self.access.remember(job)
        return JobPage(jobs, page.next_cursor)

    async def cancel(self, job_id: str) -> Job:
        live = self._live.get(job_id)
        if live is None:
            job = await self.get(job_id)
            if job is None:
                raise NotFound(f"no job {job_id!r}")
            if not job.terminal and job.runs_on is not None:
                return await self._cancel_external(job)
            raise Conflict(f"job {job_id} is already {job.state.value}")
        if live.task is None:  # still queued: nothing runs yet (D2)
            live.request_cancel()
            self._dispatcher.remove(job_id)  # its place is free for the next submission
            live.task = asyncio.create_task(self._cancel_queued(live), name=f"job-{job_id}")
        else:
            self.lifecycle.stop(live, "cancel")
        with contextlib.suppress(TimeoutError):  # a store outage delays only the store write
            async with asyncio.timeout(self.options.cancel_wait):  # never loses a cancel
                await asyncio.shield(live.task)
        await self.cancel_children(job_id)  # it may have spawned some (spawn.S4)
        return live.published.copy()

    async def _cancel_external(self, job: Job) -> Job:  # external.X1
        queue = self.external.get(job.runs_on or "")
        if queue is None:
            raise Conflict(f"job {job.id} runs on {job.runs_on}, which this server cannot reach")
        await queue.revoke(job)
        if job.state is JobState.QUEUED:
            live = self.lifecycle.track(job)
            live.request_cancel()
            try:
                await live.transition(JobState.CANCELLED, message="cancelled before it started")
            finally:
                self.lifecycle.untrack(live)
            return live.published.copy()
        deadline = asyncio.get_running_loop().time() + self.options.cancel_wait
        while asyncio.get_running_loop().time() < deadline:  # its worker reports the end
            fresh = await self.store.get(job.id)
            if fresh is None or fresh.terminal:
                return fresh or job
            await asyncio.sleep(0.05)
        return job

    async def _cancel_queued(self, live: LiveJob) -> None:
        try:
            if live.parked:  # D4: nothing runs it; it ends as a cancelled run does
                wake = self._wakes.pop(live.job.id, None)
                if wake is not None:
                    wake.cancel()
                await self.lifecycle.finish(live, JobState.CANCELLED, message="cancelled")
                return
            await live.transition(JobState.CANCELLED, message="cancelled before it started")
        finally:
            self.lifecycle.untrack(live)

    async def give_input(self, job: Job, name: str, value: Any, given_by: str) -> None:
        """Store the input ``name`` of a job waiting for it (input_wait.N1): 409 when the job
        no longer waits for it or another answer was stored first. The caller checked it."""
        waiting = job.waiting
        if job.terminal or waiting is None or waiting.get("name") != name:
            raise Conflict(f"job {job.id} is not waiting for input {name!r}")
        timeout_at = waiting.get("timeout_at")
        if isinstance(timeout_at, int | float) and time.time() > timeout_at:  # input_wait.N4
            raise Conflict(f"job {job.id} no longer waits for input {name!r}: it timed out")
        if not await self.store.put_input(job.id, name, value, given_by):
            raise Conflict(f"input {name!r} of job {job.id} was already given")
        live = self._live.get(job.id)
        if live is not None:  # here: wake it now; elsewhere, its worker reads the store
            live.input_arrived.set()
            if live.parked and live.task is None:  # D4
                live.input_arrived.clear()
                self._wake(job.id)

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
        self,
        job_id: str,
        *,
        add: str | None = None,
        remove: str | None = None,
        limit: int,
        may_input: bool = False,
    ) -> Job:
        """Grant or withdraw one subject's read access to a job, live or finished (access.A5);
        ``may_input``: the added reader may also give the job input (the permission is what
        the latest grant said; a withdrawal takes it too, sql.Q11)."""
        if remove is not None:  # the permission goes first: never input without reading
            await self.store.change_responder(job_id, remove, may=False)
        job = await self.access.change_readers(job_id, add=add, remove=remove, limit=limit)
        if add is not None:
            await self.store.change_responder(job_id, add, may=may_input)
        return job

    async def may_give_input(self, job: Job, subject: str) -> bool:
        """Whether ``subject``, a reader of ``job``, was granted its input (sql.Q11)."""
        return subject in job.readers and await self.store.is_responder(job.id, subject)

    def owner_of(self, job_id: str) -> str | None:
        """The owner of a job, when known without a query (D1); ``None`` otherwise."""
        access = self.access_of(job_id)
        return access[0] if access is not None else None

    def access_of(self, job_id: str) -> Access | None:
        """A job's owner and granted readers, when known without a query (D1)."""
        return self.access.get(job_id)

    def upload_path(self, job_id: str) -> Path:
        return self.lifecycle.upload_path(job_id)

    @property
    def kinds(self) -> Collection[str]:
        return self.registry.kinds
