"""The server side of distributed jobs: submit to a SAQ queue on Redis or PostgreSQL, read,
cancel.

With ``JOBCAST_QUEUE_URL`` set, a server does not run jobs itself. It validates and stores a
job exactly as the embedded runner does (the same ``submit``), then enqueues a SAQ job whose key
is the job id; ``jobcast worker`` processes on any machine run it (``worker.py``). Reads come
from the shared store, which the workers keep current, and events from the shared broker.

Decisions (cited as W1..W4):

W1. The store is the truth about a job; SAQ only carries "run job X" to some worker, with a
    heartbeat so a dead worker's job is swept and handed to another one, which then applies
    the restart rule of the lifecycle engine (lifecycle.R3): re-run when ``retry_safe``, else fail.
    SAQ's own retry count is set above the most attempts a job can have, so SAQ never gives up
    first; retries after failures go through SAQ with a delay (``worker.K6``). A delayed
    submission is enqueued with SAQ's ``scheduled`` time. The queue is jobcast's
    (``ready_queue.py``): SAQ's job records, taken by priority, then submission order, within
    the per-kind and per-owner limits; the SAQ job carries the kind, owner and priority.
W2. Cancelling a queued job removes it from the queue and cancels it here; cancelling a
    running one asks SAQ to abort it, and the worker running it reports ``cancelled``.
    On PostgreSQL (``postgresql://...``) the queue is ``postgres_queue.py``, with the same
    order, limits, sweep and abort.
W3. Redis or PostgreSQL errors become :class:`Unavailable` (503); a job that cannot be
    queued is failed at once, so nothing waits forever in ``queued``.
W4. Parked jobs (input_wait.N7, worker.K8) wait in the queue for a later time. An answer
    stored here makes the job's SAQ job due now (``due_now``); should the queue fail then,
    the answer is kept (202) and the worker's look-again finds it (input_wait.N9).
    Cancelling one aborts its SAQ job, which ends at once as nothing runs it, and the job
    ends ``cancelled`` here. An abort that meets a run as it parks (or as it retries, K6) is
    lost when SAQ takes the job back: the cancel sees the SAQ job no longer ``aborting``,
    aborts it again, and ends the job here once nothing runs it, so a park never undoes a
    cancel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.exceptions import RedisError
from saq import Job as QueueJob
from saq.job import TERMINAL_STATUSES, Status

from jobcast.brokers import POSTGRES_SCHEMES
from jobcast.brokers.redis import shielded
from jobcast.errors import Conflict, NotFound, Unavailable
from jobcast.jobs.external import ExternalQueue
from jobcast.jobs.input_wait import is_parked
from jobcast.jobs.lifecycle import JobLifecycle
from jobcast.jobs.live import LiveJob
from jobcast.jobs.model import Job, JobState
from jobcast.jobs.options import RunnerOptions
from jobcast.jobs.ready_queue import ReadyQueue, job_meta
from jobcast.jobs.registry import Registry
from jobcast.jobs.retry import MAX_ATTEMPTS
from jobcast.jobs.runner import EmbeddedRunner
from jobcast.stores.base import JobStore

if TYPE_CHECKING:
    from jobcast.hub import Hub
    from jobcast.jobs.postgres_queue import PostgresReadyQueue
    from jobcast.outputs.store import StreamStore

T = TypeVar("T")

logger = logging.getLogger("jobcast.jobs")

#: The one SAQ function every jobcast job goes through (the kind is in the store).
TASK = "jobcast.run"
QUEUE_NAME = "jobcast"


def open_queue(url: str) -> ReadyQueue:
    """``redis://host:port/db`` (``?queue=name`` to share one Redis between deployments)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    name = query.pop("queue", QUEUE_NAME)
    redis = Redis.from_url(urlunsplit(parts._replace(query=urlencode(query))))
    return ReadyQueue(redis, name=name)


def open_job_queue(url: str) -> ReadyQueue | PostgresReadyQueue:
    """The queue at ``url``: Redis (:func:`open_queue`) or ``postgresql://.../db`` with the
    broker URL's ``prefix``, ``schema`` and ``pool_size`` (and ``queue=name``)."""
    parts = urlsplit(url)
    if parts.scheme not in POSTGRES_SCHEMES:
        return open_queue(url)
    from jobcast.jobs.postgres_queue import open_postgres_queue  # psycopg: 'postgres' extra

    query = dict(parse_qsl(parts.query))
    name = query.pop("queue", QUEUE_NAME)
    return open_postgres_queue(urlunsplit(parts._replace(query=urlencode(query))), name)


def queue_errors() -> tuple[type[BaseException], ...]:
    """What a queue call may fail with: the database's errors (W3)."""
    try:
        import psycopg
    except ImportError:
        return (RedisError, OSError)
    return (RedisError, OSError, psycopg.Error)


async def queue_call(call: Awaitable[T]) -> T:
    """Await a SAQ call, translating Redis or PostgreSQL failures (W3)."""
    try:
        return await shielded(call)  # brokers.redis.X7
    except queue_errors() as exc:
        raise Unavailable(f"the job queue is unavailable: {exc}") from exc


def queue_job(
    job: Job,
    timeout: float | None,
    heartbeat: int,
    max_attempts: int,
    trace: dict[str, str] | None = None,
) -> QueueJob:
    """The SAQ job that runs ``job`` on a worker; ``timeout`` is its handler's, ``trace`` the
    submission's trace context, with tracing on (tracing.O3)."""
    return QueueJob(
        function=TASK,
        kwargs={"job_id": job.id, **({"trace": trace} if trace else {})},
        key=job.id,
        # the lifecycle enforces the handler's limit; SAQ's is a backstop
        timeout=int(timeout + 60) if timeout else 0,
        heartbeat=heartbeat,
        retries=MAX_ATTEMPTS + max_attempts + 2,  # W1
        scheduled=math.ceil(job.scheduled_for or 0),  # never early
        meta=job_meta(job.kind, job.owner, job.priority, job.not_before),
    )


async def enqueue_live(
    queue: ReadyQueue | PostgresReadyQueue, lifecycle: JobLifecycle, live: LiveJob, heartbeat: int
) -> None:
    """Hand a tracked job, stored and ``queued``, to the workers; a server's submission or a
    child a worker's handler spawned (spawn.S1). It is untracked here either way."""
    job, options = live.job, lifecycle.options
    spec = lifecycle.registry.get(job.kind)
    timeout = spec.timeout or options.default_timeout
    queued = queue_job(job, timeout, heartbeat, options.max_attempts, live.trace)
    try:
        await queue_call(queue.enqueue(queued))
    except Unavailable as exc:  # W3
        error = {"type": "Unavailable", "message": f"could not queue the job: {exc}"}
        await live.transition(JobState.FAILED, error=error)
        raise
    finally:
        lifecycle.untrack(live)  # the worker owns it from here


class QueueRunner(EmbeddedRunner):
    """An :class:`EmbeddedRunner` whose jobs run on queue workers instead of in-process."""

    def __init__(
        self,
        store: JobStore,
        hub: Hub,
        registry: Registry,
        options: RunnerOptions,
        *,
        queue_url: str,
        heartbeat: int,
        external: Mapping[str, ExternalQueue] | None = None,
        outputs: StreamStore | None = None,
    ) -> None:
        super().__init__(store, hub, registry, options, external=external, outputs=outputs)
        self.queue = open_job_queue(queue_url)
        self.heartbeat = heartbeat

    async def start(self) -> None:
        # No lock and no recovery: any number of servers share the queue, and jobs that were
        # running belong to the workers (W1).
        self.options.uploads_dir.mkdir(parents=True, exist_ok=True)
        await queue_call(self.queue.connect())
        await self.access.warm()  # jobs submitted before this server started (access.A2)

    async def close(self) -> None:
        await super().close()
        with contextlib.suppress(*queue_errors()):
            await self.queue.disconnect()

    async def _enqueue(self, live: LiveJob) -> None:
        await enqueue_live(self.queue, self.lifecycle, live, self.heartbeat)

    async def cancel(self, job_id: str) -> Job:  # W2
        job = await self.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}")
        if job.terminal:
            raise Conflict(f"job {job_id} is already {job.state.value}")
        if job.runs_on is not None:  # a batch, or another queue's task (external.X1)
            return await self._cancel_external(job)
        queued = await queue_call(self.queue.job(job_id))
        if queued is not None and queued.status not in TERMINAL_STATUSES:
            await queue_call(self.queue.abort(queued, "cancelled"))
            await queue_call(queued.refresh())
            if queued.status is not Status.ABORTED and not await self._aborted_later(queued):
                # running: its worker reported the end (or will)
                await self.cancel_children(job_id)  # it may have spawned some (spawn.S4)
                return await self._fresh(job_id)
        fresh = await self._fresh(job_id)
        if not fresh.terminal:  # never started, parked (W4), or its queue entry is gone
            live = self.lifecycle.track(fresh)
            live.request_cancel()
            started = live.parked = fresh.state is JobState.RUNNING
            message = "cancelled" if started else "cancelled before it started"
            await self.lifecycle.finish(live, JobState.CANCELLED, message=message)
            self.lifecycle.untrack(live)
            if started:  # a parked job may have spawned some (spawn.S4)
                await self.cancel_children(job_id)
            return live.published.copy()
        return fresh

    async def _aborted_later(self, queued: Any) -> bool:
        """Wait for a running job's worker to end it; True when its abort was lost to a park
        or a retry and a second one ended its SAQ job with nothing running it (W4)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.cancel_wait
        while (left := deadline - loop.time()) > 0:
            try:  # TimeoutError is an OSError: caught before queue_call would translate it
                await shielded(queued.refresh(until_complete=min(left, 0.25)))
            except TimeoutError:
                await queue_call(queued.refresh())
            except queue_errors() as exc:
                raise Unavailable(f"the job queue is unavailable: {exc}") from exc
            if queued.status in TERMINAL_STATUSES:  # its worker ended it
                return False
            if queued.status is not Status.ABORTING:  # taken back: the abort was lost
                await queue_call(self.queue.abort(queued, "cancelled"))
                await queue_call(queued.refresh())
                if queued.status is Status.ABORTED:
                    return True
        return False

    async def give_input(self, job: Job, name: str, value: Any, given_by: str) -> None:
        """Store the answer, then make a parked job due at once (W4)."""
        await super().give_input(job, name, value, given_by)
        spec = self.registry.find(job.kind)
        if is_parked(job, spec is not None and spec.rerunnable):
            try:
                await queue_call(self.queue.due_now(job.id))
            except Unavailable as exc:  # kept: a look-again finds it (input_wait.N9)
                logger.warning("job %s: could not wake it for its input: %s", job.id, exc)

    async def _fresh(self, job_id: str) -> Job:
        job = await self.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}")
        return job
