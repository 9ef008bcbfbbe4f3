"""Handing the jobs of dead workers to live ones: jobcast's sweep of the SAQ queue.

Every worker sweeps the queue once a heartbeat (``worker_heartbeat_seconds``): a job in SAQ's
active list whose worker stopped touching it is aborted, then re-queued (or ended), and the
worker that takes it next applies lifecycle.R3 (``worker.py``, K1). SAQ's own sweep
(``RedisQueue.sweep``) does this with two races that cost a job its one run, so jobcast
workers run this one in its place.

Decisions (cited as S1..S3):

S1. One sweep at a time, across all workers. SAQ's sweep lock is a throttle that expires after
    one heartbeat, while a sweep may take longer (S3's wait per stuck job). Two overlapping
    sweeps abort a job the other has just re-queued, or re-queue one a live worker has just
    taken: a job stuck ``running`` for ever, a cancellation nobody asked for, or two runs of
    one job. So a sweep holds a Redis lock, renewed while it lasts; a worker that finds it
    taken skips its turn, and a sweeper that dies mid-sweep holds it at most ``GUARD``.
S2. A job in the active list whose status is not ``active`` was either dequeued a moment ago
    (its worker marks it ``active`` right after) or dequeued by a worker that died before it
    could. SAQ sweeps both at first sight, so it aborts and re-queues jobs it has just handed
    to a live worker (SAQ issue 277). Such a job is swept here only when an earlier sweep by
    this worker, at least one heartbeat before, saw it so too.
S3. A sweep asks a stuck job's worker to abort it and waits for the answer, one job after
    another: SAQ waits 5 s, so a dead worker that held 20 jobs delayed recovery by 100 s. Live
    workers poll for aborts every second (the worker's ``abort`` timer): 2 s is enough.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from typing import cast

from redis.asyncio.lock import Lock
from redis.exceptions import LockError, RedisError
from saq.job import Job, Status
from saq.queue.redis import RedisQueue

from jobcast.brokers.redis import shielded

logger = logging.getLogger("jobcast.worker")

#: Seconds a sweep waits for a stuck job's worker to acknowledge an abort (S3).
ABORT_WAIT = 2.0
#: Seconds a sweep's lock outlives a sweeper that died (S1); renewed every third of that.
GUARD = 6.0


class Sweeper:
    """A worker's sweep: ``queue.sweep = Sweeper(queue)``. SAQ's worker calls it each heartbeat
    with ``lock``, the heartbeat in seconds; ``abort`` is the wait for an abort's answer (S3)."""

    def __init__(self, queue: RedisQueue) -> None:
        self.queue = queue
        self.guard_name = queue.namespace("jobcast-sweep")
        #: Jobs seen not running at the last sweep, and since when (S2).
        self.suspects: dict[str, float] = {}

    async def __call__(self, lock: int = 60, abort: float = ABORT_WAIT) -> list[str]:
        guard = self.queue.redis.lock(self.guard_name, timeout=GUARD, blocking=False)
        if not await shielded(guard.acquire()):
            return []  # another worker is sweeping (S1)
        keeper = asyncio.create_task(_keep(guard))
        try:
            return await self._sweep(lock, abort)
        finally:
            keeper.cancel()
            with contextlib.suppress(LockError, RedisError, OSError):
                await shielded(guard.release())

    async def _sweep(self, heartbeat: float, abort_wait: float) -> list[str]:
        queue, redis = self.queue, self.queue.redis
        active = queue.namespace("active")
        listed = cast("Awaitable[list[bytes]]", redis.lrange(active, 0, -1))  # typed sync|async
        ids = [raw.decode() for raw in await listed]
        records = await redis.mget(ids) if ids else []
        now = time.monotonic()
        suspects, self.suspects = self.suspects, {}
        swept = []
        for job_id, record in zip(ids, records, strict=True):
            job = queue.deserialize(record)
            if job is not None and not job.stuck:
                if job.status is Status.ACTIVE:
                    continue  # running, and its worker is alive
                seen = suspects.get(job_id)
                if seen is None or now - seen < heartbeat:  # S2
                    self.suspects[job_id] = now if seen is None else seen
                    continue
            if job is None:  # its record is gone: only the id is left to drop
                async with redis.pipeline(transaction=True) as pipe:
                    pipe.lrem(active, 0, job_id)
                    pipe.zrem(queue.namespace("incomplete"), job_id)
                    await pipe.execute()
            else:
                await self.recover(job, abort_wait)
            swept.append(job_id)
        return swept

    async def recover(self, job: Job, abort_wait: float = ABORT_WAIT) -> None:
        """Abort ``job`` where it runs, then re-queue it if SAQ may retry it (S3)."""
        queue, error = self.queue, self.queue.swept_error_message
        logger.info("sweeping %s", job.info())
        await queue.abort(job, error=error)
        try:
            await job.refresh(abort_wait)
        except TimeoutError:
            logger.info("no answer from the worker of %s: it is gone", job.key)
        if job.retryable:
            await queue.retry(job, error=error)
        else:
            await queue.finish(job, Status.ABORTED, error=error)


async def _keep(guard: Lock) -> None:
    while True:
        await asyncio.sleep(GUARD / 3)
        with contextlib.suppress(LockError, RedisError, OSError):  # it may still lapse: S1
            await shielded(guard.reacquire())
