"""``jobcast worker``: run queued jobs from any machine, publishing through the shared broker.

A worker takes "run job X" from the SAQ queue (``worker_queue.py``), loads X from the shared
store and runs it through the lifecycle engine the embedded runner uses (``lifecycle.py``,
``JobLifecycle.claim``): the same handler registry, timeouts, cancellation and coalesced
progress (``LiveJob``), so a job behaves the same wherever it runs. Its events go to the shared
broker (Redis or PostgreSQL), so every server instance streams them. The queue is Redis's
(``ready_queue.py``) or PostgreSQL's (``postgres_queue.py``), by ``JOBCAST_QUEUE_URL``.

Decisions (cited as K1..K8):

K1. A heartbeat task touches the SAQ job every third of ``worker_heartbeat_seconds``; a worker
    that dies stops touching it, the sweep (K4, run by every other worker) re-queues it, and the
    next worker finds it ``running`` in the store and applies lifecycle.R3: re-run when its
    handler is ``retry_safe`` and attempts remain, else fail it as ``Interrupted``.
K2. When SAQ cancels our task, the SAQ job tells why: ``aborting`` means a user cancelled
    (the job ends ``cancelled``), unless a sweep aborted it, as the abort's reason says: this
    worker missed its heartbeats (cut off from the queue, or too busy) and another one takes the
    job over. That, and anything else (this worker shutting down), is one of lifecycle.R3's
    interruptions, never a cancellation nobody asked for. Either way the lifecycle's own task
    publishes the terminal event before we return.
K3. A job already terminal when it is dequeued (cancelled while queued, or finished by a
    previous attempt) is skipped.
K4. Every worker sweeps the queue once a heartbeat, with jobcast's sweep (``sweep.py``; on
    PostgreSQL the queue's own, postgres_queue.P4) in place of SAQ's, whose races could run
    one job twice.
K5. A worker reports its job metrics (durations of the jobs it ran, its store writes and
    errors) as a process of its own in the shared metrics snapshots, so any server's
    ``/metrics`` covers the jobs that ran on workers too.
K6. A retry (lifecycle.R4) goes back to SAQ, not to a timer in this worker: once the job is
    stored ``queued`` with ``next_attempt_at``, the worker function raises :class:`RetryLater`
    with SAQ's ``retry_delay`` set to the time left, and SAQ re-enqueues the same SAQ job
    scheduled for then. Any worker may take the next attempt; a worker that dies during the
    wait loses nothing, since the wait lives in the queue and the store. A job dequeued before its
    ``scheduled_for`` or ``next_attempt_at`` (a sweep re-queued it at once) goes back the same
    way, for the time left, without counting as an attempt.
K7. A kind with a ``concurrency`` limit, and with ``JOBCAST_JOB_OWNER_CONCURRENCY`` an owner,
    runs only while it holds a lease in the queue's Redis (``run_limits.py``): the limits hold
    across all workers. The queue takes the leases as it hands the job out, by priority
    (``ready_queue.py``), so a job is handed out only when it may run; should its lease have
    lapsed and its slot be taken meanwhile, it goes back to SAQ after ``FULL_WAIT`` without
    counting as an attempt. On PostgreSQL a job's running row is its slot, taken and freed
    with the row (postgres_queue.P2): nothing to renew. Every worker of a deployment should
    have the same handlers and owner limit: each takes jobs by its own.
K8. Parking (input_wait.N7-N10): every re-runnable handler here parks, async ones too, so a
    job waiting for input holds no SAQ task. A run that parked hands its SAQ job back as a
    retry (K6's way, not an attempt) for its wait's ``timeout_at``, or
    ``input_wait.PARK_RECHECK`` seconds at most; a server that stores the answer makes it
    due at once (``due_now``, ready_queue.Q7). Once SAQ holds it again (the queue's
    ``on_retried``), this worker reads the store: an answer that raced the park makes it
    due itself. A parked job dequeued before it is due (a look-again, a stale wake) goes
    back for the time left without running its handler, holding no lease; a due one runs
    on, ``attempts`` unchanged. One found ``running`` whose worker died while it parked is
    parked, not interrupted (K1 does not apply).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import redis.asyncio as redis
from prometheus_client import CollectorRegistry, generate_latest
from saq import Worker
from saq.job import Status
from saq.types import PartialTimersDict

from jobcast.brokers import POSTGRES_SCHEMES
from jobcast.brokers.redis import RedisBroker, shielded
from jobcast.brokers.redis_urls import split_url
from jobcast.config import Settings
from jobcast.errors import InvalidInput, JobcastError
from jobcast.hub import Hub
from jobcast.jobs import builtin, input_wait
from jobcast.jobs.access import announcement
from jobcast.jobs.lifecycle import JobLifecycle
from jobcast.jobs.metrics import JobsCollector
from jobcast.jobs.model import Job, JobState
from jobcast.jobs.ready_queue import ReadyQueue
from jobcast.jobs.registry import Registry
from jobcast.jobs.run_limits import FULL_WAIT, RunLimits
from jobcast.jobs.sweep import Sweeper
from jobcast.jobs.worker_queue import TASK, enqueue_live, open_job_queue, queue_call, queue_job
from jobcast.outputs.redis import RedisStreamStore
from jobcast.shared_metrics import SharedMetrics
from jobcast.stores import open_store
from jobcast.stores.base import JobStore

if TYPE_CHECKING:
    from jobcast.brokers.postgres import PostgresBroker
    from jobcast.jobs.postgres_queue import RowLimits
    from jobcast.outputs.postgres import PostgresStreamStore

logger = logging.getLogger("jobcast.worker")


class RetryLater(Exception):  # an instruction to SAQ, not a failure
    """Raised to SAQ by the worker function: run this SAQ job again after its retry delay (K6)."""


def load_registry(settings: Settings) -> Registry:
    registry = Registry()
    registry.update(builtin.registry)  # the built-in kinds are always available
    for module in settings.handlers:
        registry.load_module(module)
    return registry


class JobWorker:
    """One worker process: a SAQ worker whose single function runs jobcast jobs."""

    def __init__(self, settings: Settings, registry: Registry | None = None) -> None:
        if not settings.queue_url:
            store = settings.resolved_store_url
            if urlsplit(store).scheme in POSTGRES_SCHEMES:  # the PostgreSQL-only deployment
                raise InvalidInput(
                    "set JOBCAST_QUEUE_URL to the store's URL (JOBCAST_STORE_URL) on every"
                    " process, servers too, to run jobs on workers from the store's database"
                )
            raise InvalidInput(
                "set JOBCAST_QUEUE_URL=redis://host:port/db or postgresql://... to run a worker"
            )
        if not _shared_broker(settings.resolved_broker_url):
            raise InvalidInput(
                "workers publish through the shared broker: set JOBCAST_BROKER_URL=redis://..."
                " or postgresql://... (or a PostgreSQL JOBCAST_STORE_URL)"
            )
        self.settings = settings
        self.registry = registry or load_registry(settings)

    async def run(self) -> None:
        """Run until SIGTERM/SIGINT (a graceful stop hands running jobs back: lifecycle.R3)."""
        settings = self.settings
        broker = _publisher(settings)
        await broker.connect()  # publish-only: no fan-out in a worker
        hub = Hub(broker, settings.hub_options())
        store = open_store(settings.resolved_store_url)
        outputs = _output_streams(settings)
        metrics: SharedMetrics | None = None
        try:
            await store.open()
            await outputs.open()
            queue = self.queue = open_job_queue(settings.queue_url or "")
            self.jobs = JobLifecycle(
                store,
                hub,
                self.registry,
                settings.runner_options(),
                outputs=outputs,
                enqueue=self._spawned,
                park_async=True,  # K8
            )
            if settings.metrics_snapshot_seconds > 0:  # K5
                metrics = self._shared_metrics(store)
                metrics.start()
            self._parking: set[str] = set()  # K8: SAQ keys handed back by a park
            queue.on_retried = self._retried
            kinds = self.registry.limits()
            owner_limit = settings.job_owner_concurrency
            queue.limits, queue.owner_limit = kinds, owner_limit
            if isinstance(queue, ReadyQueue):
                queue.sweep = Sweeper(queue)  # type: ignore[method-assign]  # K4
                leases = RunLimits(  # K7
                    queue.redis, queue.prefix, settings.worker_heartbeat_seconds, kinds, owner_limit
                )
                queue.lease = leases.lease
                self.limits: RunLimits | RowLimits = leases
            else:  # PostgreSQL: its own sweep, and the rows are the slots (postgres_queue.P2)
                from jobcast.jobs.postgres_queue import RowLimits

                self.limits = RowLimits(kinds, owner_limit)
            beat = settings.worker_heartbeat_seconds
            timers: PartialTimersDict = {
                "sweep": beat,
                "abort": 1,
                "schedule": 1,
                "worker_info": 10,
            }
            worker: Worker[Any] = Worker(
                queue,
                functions=[(TASK, self._run_job)],
                concurrency=settings.job_concurrency,
                timers=timers,
                cancellation_hard_deadline_s=15.0,
            )
            await queue.connect()  # SAQ's worker leaves it to its caller
            try:
                logger.info("worker ready: kinds %s", ", ".join(self.registry.kinds))
                await worker.start()
            finally:
                await queue.disconnect()
        finally:
            if metrics is not None:
                await metrics.close()
            await outputs.close()
            if isinstance(outputs, RedisStreamStore):
                await outputs.client.aclose()
            await store.close()
            await broker.close()

    def _shared_metrics(self, store: JobStore) -> SharedMetrics:
        registry = CollectorRegistry()
        registry.register(JobsCollector(lambda: store, lambda: self.jobs))
        settings = self.settings
        return SharedMetrics(
            settings.resolved_broker_url,
            settings.metrics_snapshot_seconds,
            lambda: generate_latest(registry),
        )

    async def _spawned(self, child: Job, replayed: bool) -> Job:
        """Queue a child a handler here spawned (spawn.S1) for any worker, as a server would;
        a replayed one still ``queued`` is queued again (the queue ignores a job it holds)."""
        jobs = self.jobs
        if replayed:
            if child.state is JobState.QUEUED:
                spec = self.registry.get(child.kind)
                timeout = spec.timeout or jobs.options.default_timeout
                heartbeat = self.settings.worker_heartbeat_seconds
                queued = queue_job(child, timeout, heartbeat, jobs.options.max_attempts)
                await queue_call(self.queue.enqueue(queued))
            return child
        try:  # before its first event, so every server's filters know its owner (access.A1)
            await jobs.hub.publish_many([announcement(child)])
        except JobcastError as exc:
            logger.warning("job %s: could not announce it: %s", child.id, exc)
        live = jobs.track(child)
        await live.transition(JobState.QUEUED)
        await enqueue_live(self.queue, jobs, live, self.settings.worker_heartbeat_seconds)
        return live.published.copy()

    async def _run_job(
        self, ctx: dict[str, Any], *, job_id: str, trace: dict[str, str] | None = None
    ) -> None:
        queued = ctx["job"]
        meta = queued.meta or {}
        kind, owner = str(meta.get("kind", "")), str(meta.get("owner", ""))
        try:
            job = await self.jobs.store.get(job_id)
            if job is None or job.terminal:  # K3
                return
            kind, owner = job.kind, job.owner
            if self._parked(job):  # K8: run it only once it is due
                left = await input_wait.parked_for(self.jobs.store, job)
                if left is not None:
                    self._hand_back(queued, left)
            early = job.not_before - time.time() if job.state is JobState.QUEUED else 0.0
            if early > 0:  # K6: handed out before its time (a sweep re-queued it): not yet
                queued.retries += 1
                queued.retry_delay = early
                queued.retry_backoff = False
                raise RetryLater(f"job {job.id} may not start for {early:.1f} s")
            if not await self.limits.acquire(kind, owner, queued.id):
                queued.retries += 1  # K7: waiting for a slot is not an attempt
                queued.retry_delay = FULL_WAIT
                queued.retry_backoff = False
                raise RetryLater(f"job {job.id}: its kind or owner is at its limit")
            limited = self.limits.limited(kind, owner)
            await self._run_claimed(job, queued, limited=limited, trace=trace)
        finally:  # the queue may have taken leases for it (ready_queue.Q3)
            await shielded(self.limits.release(kind, owner, queued.id))

    async def _run_claimed(
        self, job: Job, queued: Any, *, limited: bool, trace: dict[str, str] | None = None
    ) -> None:
        jobs = self.jobs
        if job.state is JobState.RUNNING and not self._parked(job):  # K1: its worker died
            why = "the worker running it stopped"
            if not await jobs.resume_interrupted(job, why):
                return
        live = jobs.claim(job, trace)  # tracing.O3
        task = live.task
        if task is None:  # claim always starts one; nothing to wait for otherwise
            return
        beat = asyncio.create_task(self._heartbeat(queued, job if limited else None))
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:  # K2
            queue = queued.get_queue()
            current = await shielded(queue.job(queued.key))
            # The abort's reason is kept apart: the job's error is rewritten by our heartbeat.
            reason = await shielded(queue.abort_reason(queued))
            cancelled = (
                current is not None
                and current.status in (Status.ABORTING, Status.ABORTED)
                and reason != queue.swept_error_message
            )
            jobs.stop(live, "cancel" if cancelled else "shutdown")
            await task
        finally:
            beat.cancel()
        if live.parked:  # K8
            left = input_wait.parked_for_now(live.job)
            self._parking.add(queued.key)
            self._hand_back(queued, left)
        if jobs.waits_for_retry(live) and live.job.next_attempt_at is not None:  # K6
            queued.retry_delay = max(0.0, live.job.next_attempt_at - time.time())
            queued.retry_backoff = False
            raise RetryLater(f"attempt {live.job.attempts} failed; retrying")

    def _parked(self, job: Job) -> bool:
        spec = self.registry.find(job.kind)
        return input_wait.is_parked(job, spec is not None and spec.rerunnable)

    @staticmethod
    def _hand_back(queued: Any, left: float) -> None:
        """Give a parked job's SAQ job back until it is due (K8): not an attempt."""
        queued.retries += 1
        queued.retry_delay = min(left, input_wait.PARK_RECHECK)
        queued.retry_backoff = False
        raise RetryLater(f"job {queued.key} waits for input")

    async def _retried(self, queued: Any) -> None:
        """SAQ holds a job again; one this worker parked is made due if its answer raced
        the park (K8). A failure here costs only a look-again's delay."""
        if queued.key not in self._parking:
            return
        self._parking.discard(queued.key)
        try:
            job = await self.jobs.store.get(queued.key)
            store = self.jobs.store
            if (
                job is not None
                and self._parked(job)
                and await input_wait.parked_for(store, job) is None
            ):
                await self.queue.due_now(queued.key)
        except Exception as exc:  # the store or queue failed: PARK_RECHECK still looks
            logger.warning("job %s: could not look for its answer: %s", queued.key, exc)

    async def _heartbeat(self, queued: Any, limited: Job | None) -> None:  # K1
        while True:
            await asyncio.sleep(self.settings.worker_heartbeat_seconds / 3)
            with contextlib.suppress(Exception):  # a missed beat only risks an early sweep
                await shielded(queued.update())  # so that beat.cancel() always lands
            if limited is not None:  # K7: keep the kind's and owner's leases
                with contextlib.suppress(Exception):
                    await shielded(self.limits.renew(limited.kind, limited.owner, queued.id))


def _shared_broker(url: str) -> bool:
    return url.startswith(("redis://", "rediss://")) or urlsplit(url).scheme in POSTGRES_SCHEMES


def _publisher(settings: Settings) -> RedisBroker | PostgresBroker:
    url = settings.resolved_broker_url
    if urlsplit(url).scheme in POSTGRES_SCHEMES:
        from jobcast.brokers.postgres import PostgresBroker  # the 'postgres' extra

        return PostgresBroker(url, settings.retention())
    return RedisBroker(url, settings.retention())


def _output_streams(settings: Settings) -> RedisStreamStore | PostgresStreamStore:
    """Jobs' output streams (ctx.stream): in the deployment's Redis or PostgreSQL, where the
    servers serve them."""
    url = settings.resolved_broker_url
    if urlsplit(url).scheme in POSTGRES_SCHEMES:
        from jobcast.brokers._postgres_sql import parse_url
        from jobcast.outputs.postgres import PostgresStreamStore

        return PostgresStreamStore(parse_url(url), max_stream_bytes=settings.max_stream_bytes)
    redis_url, prefix, _ = split_url(url)
    client = redis.Redis.from_url(redis_url)
    return RedisStreamStore(client, prefix, max_stream_bytes=settings.max_stream_bytes)


def run_worker(settings: Settings) -> None:
    """The ``jobcast worker`` command's body."""
    asyncio.run(JobWorker(settings).run())
