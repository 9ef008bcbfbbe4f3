"""``jobcast worker``: run queued jobs from any machine, publishing through the shared broker.

A worker takes "run job X" from the SAQ queue (``worker_queue.py``), loads X from the shared
store and runs it through the embedded runner's own path (``EmbeddedRunner.claim``): the same
handler registry, timeouts, cancellation and coalesced progress (``LiveJob``), so a job behaves
the same wherever it runs. Its events go to the shared Redis broker, so every server instance
streams them.

Decisions (cited as K1..K6):

K1. A heartbeat task touches the SAQ job every third of ``worker_heartbeat_seconds``; a worker
    that dies stops touching it, SAQ's sweep (run by every other worker) re-queues it, and the
    next worker finds it ``running`` in the store and applies runner.R3: re-run when its
    handler is ``retry_safe`` and attempts remain, else fail it as ``Interrupted``.
K2. When SAQ cancels our task, the SAQ job's status tells why: ``aborting`` means a user
    cancelled (the job ends ``cancelled``); anything else is this worker shutting down (R3).
    Either way the runner's own task publishes the terminal event before we return.
K3. A job already terminal when it is dequeued (cancelled while queued, or finished by a
    previous attempt) is skipped.
K4. SAQ's sweep asks a stuck job's worker to abort it and waits up to 5 s for an answer, one
    job after another: a dead worker that held 20 jobs would delay recovery by 100 s. Live
    workers poll for aborts every second (the ``abort`` timer), so two seconds is enough.
K5. A worker reports its job metrics (durations of the jobs it ran, its store writes and
    errors) as a process of its own in the shared metrics snapshots, so any server's
    ``/metrics`` covers the jobs that ran on workers too.
K6. One sweep at a time, across all workers. SAQ's sweep lock is a throttle that expires after
    ``lock`` seconds (its poll interval, our heartbeat), while a sweep may take longer (K4's
    wait per stuck job). A second sweep that overlapped the first would abort a job the first
    had just re-queued, or re-queue one a live worker had just taken: a job stuck in
    ``running`` for ever, a cancellation nobody asked for, or two runs of one job. So a sweep
    holds a Redis lock of its own, renewed while it lasts; a worker that finds it taken skips
    its turn. A sweeper that dies mid-sweep delays the next one by at most ``SWEEP_GUARD``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from redis.asyncio.lock import Lock
from redis.exceptions import LockError, RedisError
from saq import Worker
from saq.job import Status
from saq.queue.redis import RedisQueue
from saq.types import PartialTimersDict

from jobcast.brokers.redis import RedisBroker, shielded
from jobcast.config import Settings
from jobcast.errors import InvalidInput
from jobcast.hub import Hub
from jobcast.jobs import builtin
from jobcast.jobs.metrics import JobsCollector
from jobcast.jobs.model import JobState
from jobcast.jobs.registry import Registry
from jobcast.jobs.runner import EmbeddedRunner
from jobcast.jobs.worker_queue import TASK, open_queue
from jobcast.server.metrics_shared import SharedMetrics
from jobcast.stores import open_store
from jobcast.stores.base import JobStore

logger = logging.getLogger("jobcast.worker")

#: Seconds the sweep waits for a stuck job's worker to acknowledge an abort (K4).
SWEEP_ABORT_WAIT = 2.0
#: Seconds a sweep's lock outlives its holder (K6); renewed every third of that while it sweeps.
SWEEP_GUARD = 30.0

Sweep = Callable[[int, float], Coroutine[Any, Any, list[str]]]


def exclusive_sweep(queue: RedisQueue, sweep: Sweep) -> Sweep:
    """``sweep`` (SAQ's ``queue.sweep``) run by one worker at a time (K6); SAQ's worker
    passes only ``lock``, so ``abort`` is K4's."""
    name = f"saq:{queue.name}:jobcast-sweep"

    async def guarded(lock: int = 60, abort: float = SWEEP_ABORT_WAIT) -> list[str]:
        guard = queue.redis.lock(name, timeout=SWEEP_GUARD, blocking=False)
        if not await shielded(guard.acquire()):
            return []  # another worker is sweeping
        keeper = asyncio.create_task(_keep(guard))
        try:
            return await sweep(lock, abort)
        finally:
            keeper.cancel()
            with contextlib.suppress(LockError, RedisError, OSError):
                await shielded(guard.release())

    return guarded


async def _keep(guard: Lock) -> None:
    while True:
        await asyncio.sleep(SWEEP_GUARD / 3)
        with contextlib.suppress(LockError, RedisError, OSError):  # it may still expire: K6
            await shielded(guard.reacquire())


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
            raise InvalidInput("set JOBCAST_QUEUE_URL=redis://host:port/db to run a worker")
        if not settings.resolved_broker_url.startswith(("redis://", "rediss://")):
            raise InvalidInput(
                "workers publish through the shared broker: set JOBCAST_BROKER_URL=redis://..."
            )
        self.settings = settings
        self.registry = registry or load_registry(settings)

    async def run(self) -> None:
        """Run until SIGTERM/SIGINT (a graceful stop: running jobs are handed back, R3)."""
        settings = self.settings
        broker = RedisBroker(settings.resolved_broker_url, settings.retention())
        await broker.connect()  # publish-only: no fan-out in a worker
        hub = Hub(broker, settings.hub_options())
        store = open_store(settings.resolved_store_url)
        metrics: SharedMetrics | None = None
        try:
            await store.open()
            self.runner = EmbeddedRunner(store, hub, self.registry, settings.runner_options())
            if settings.metrics_snapshot_seconds > 0:  # K5
                metrics = self._shared_metrics(store)
                metrics.start()
            queue = open_queue(settings.queue_url or "")
            queue.sweep = exclusive_sweep(queue, queue.sweep)  # type: ignore[method-assign,assignment]  # K6
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
            logger.info("worker ready: kinds %s", ", ".join(self.registry.kinds))
            await worker.start()
        finally:
            if metrics is not None:
                await metrics.close()
            await store.close()
            await broker.close()

    def _shared_metrics(self, store: JobStore) -> SharedMetrics:
        registry = CollectorRegistry()
        registry.register(JobsCollector(lambda: store, lambda: self.runner))
        settings = self.settings
        return SharedMetrics(
            settings.resolved_broker_url,
            settings.metrics_snapshot_seconds,
            lambda: generate_latest(registry),
        )

    async def _run_job(self, ctx: dict[str, Any], *, job_id: str) -> None:
        runner, queued = self.runner, ctx["job"]
        job = await runner.store.get(job_id)
        if job is None or job.terminal:  # K3
            return
        if job.state is JobState.RUNNING:  # K1: its previous worker died
            why = "the worker running it stopped"
            if not await runner.resume_interrupted(job, why):
                return
        live = runner.claim(job)
        task = live.task
        if task is None:  # claim always starts one; nothing to wait for otherwise
            return
        beat = asyncio.create_task(self._heartbeat(queued))
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:  # K2
            current = await shielded(queued.get_queue().job(queued.key))
            aborted = current is not None and current.status in (Status.ABORTING, Status.ABORTED)
            runner.stop(live, "cancel" if aborted else "shutdown")
            await task
        finally:
            beat.cancel()

    async def _heartbeat(self, queued: Any) -> None:  # K1
        while True:
            await asyncio.sleep(self.settings.worker_heartbeat_seconds / 3)
            with contextlib.suppress(Exception):  # a missed beat only risks an early sweep
                await shielded(queued.update())  # so that beat.cancel() always lands


def run_worker(settings: Settings) -> None:
    """The ``jobcast worker`` command's body."""
    asyncio.run(JobWorker(settings).run())
