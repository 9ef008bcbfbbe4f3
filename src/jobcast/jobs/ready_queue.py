"""The SAQ queue of ``jobcast worker``: priorities first, then submission order, within the
per-kind and per-owner limits, decided by Redis when a worker takes a job.

SAQ's Redis queue is one list, first in, first out: it has no priorities (only its PostgreSQL
queue has). This queue keeps SAQ's job records, its ``incomplete`` set, its ``active`` list
and everything that reads them (SAQ's worker, jobcast's sweep, aborts), and replaces the
``queued`` list by sorted sets that a worker takes from with one script.

Decisions (cited as Q1..Q7):

Q1. Jobs that may start wait in one sorted set per kind (``ready:{kind}``), scored by minus
    their priority. Members are SAQ job ids, ``saq:job:{queue}:{jobcast id}``, and jobcast ids
    grow with their creation time (``model.new_job_id``), so Redis's order for equal scores,
    by member, is submission order: no counter, and exactly the embedded runner's order
    (schedule.P1). A retried job keeps its place among its priority, where the embedded
    runner queues it again behind the jobs already waiting.
Q2. A job's kind, owner and priority travel in the SAQ job's ``meta`` (``worker_queue.W1``);
    the scripts read them with ``cjson``, so SAQ's record stays the one copy.
Q3. Taking a job is one script (``TAKE``): among the heads of the kinds whose limit has room,
    the lowest score, then the lowest id; it takes the kind's and the owner's leases (the
    keys of ``run_limits.py``) and moves the job to SAQ's ``active`` list, atomically, so no
    two workers see one slot free and no job waits behind a kind that is full
    (schedule.P5 for workers).
Q4. A job whose owner is at its limit when it comes up is parked in ``parked:{owner}`` with its
    score (schedule.P6); every take first puts back the best parked jobs of each owner, as
    many as it has room for again, so an owner with thousands of queued jobs costs a few
    moves per job that starts, and one whose last job's worker died (its lease lapsed) is
    not parked for ever.
Q5. Taking never polls Redis in a loop: a worker with nothing to take blocks on the ``wake``
    list, where each job made ready and each released lease pushes a token (trimmed to
    ``WAKE_MAX``), until the next delayed job's time at the latest, and looks again at least
    every ``WAKE_POLL`` seconds for leases that lapsed. A take that finds nothing to take
    clears the tokens: whatever was made ready before it, it saw, so they are all stale, and
    workers do not spin through them later. Each take first moves the jobs whose
    time came (SAQ's ``incomplete`` set, scored by the exact time) to their kind's set, so a
    delayed job or a retry starts within milliseconds of its time when a worker is free,
    where SAQ's scheduler, a timer of whole seconds, could be two seconds late.
Q6. Jobs queued by an earlier version in SAQ's ``queued`` list are taken after the sorted
    sets are empty, first in, first out, so an upgrade loses none.
Q7. A job handed back for later (a parked job, input_wait.N7) is made due at once by
    ``due_now`` when its answer comes (one script: only if it still waits in ``incomplete``
    with a time, so a job running or already ready is left alone), and ``on_retried``, when a
    worker sets it, is awaited after each hand-back, once the job waits in the queue again:
    the worker's look at the store then (worker.K8) closes the gap with a racing answer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

import orjson
from saq.job import Job, Status
from saq.queue.redis import RedisQueue
from saq.utils import now_seconds

from jobcast.jobs._ready_scripts import ABORT, DUE_NOW, ENQUEUE, SCHEDULE, TAKE

#: Tokens kept on the wake list (Q5): more than the waiting workers' tasks ever need.
WAKE_MAX = 1024
#: Seconds a worker with nothing to take waits before it looks again anyway (Q5).
WAKE_POLL = 1.0


def job_meta(kind: str, owner: str, priority: int, not_before: float) -> dict[str, Any]:
    """What a SAQ job carries for this queue (Q2); ``not_before`` (epoch seconds, 0: at once)
    is exact where SAQ's ``scheduled`` is whole seconds."""
    return {"kind": kind, "owner": owner, "priority": priority, "not_before": not_before}


class ReadyQueue(RedisQueue):
    """SAQ's Redis queue, taken by priority within the limits (Q1-Q6).

    A worker sets ``limits`` (its kinds' ``concurrency``), ``owner_limit`` and ``lease``
    (seconds a lease lasts unrenewed) before it starts; a server only enqueues and aborts.
    """

    def __init__(self, redis: Any, **kwargs: Any) -> None:
        super().__init__(redis, **kwargs)
        self.prefix = self.namespace("")
        self.limits: Mapping[str, int] = {}
        self.owner_limit: int | None = None
        self.lease = 30.0
        #: Awaited after each retry, the job back in the queue (Q7).
        self.on_retried: Callable[[Job], Awaitable[None]] | None = None
        self._scripts: dict[str, Any] = {}

    def _script(self, source: str) -> Any:
        script = self._scripts.get(source)
        if script is None:
            script = self._scripts[source] = self.redis.register_script(source)
        return script

    async def _enqueue(self, job: Job) -> Job | None:
        keys = [self._incomplete, job.id, job.abort_id]
        at = (job.meta or {}).get("not_before") or job.scheduled  # Q5: to the millisecond
        args = [self.prefix, WAKE_MAX, self.serialize(job), at]
        async with self._op_sem:
            if not await self._script(ENQUEUE)(keys=keys, args=args, client=self.redis):
                return None
        return job

    async def schedule(self, lock: int = 1) -> list[str]:
        keys = [self._schedule, self._incomplete]
        due = await self._script(SCHEDULE)(
            keys=keys, args=[self.prefix, WAKE_MAX, lock, now_seconds()]
        )
        return [job_id.decode() for job_id in due or []]

    async def dequeue(
        self,
        timeout: float = 0.0,  # noqa: ASYNC109  (SAQ's worker passes it)
        poll_interval: float = 0.0,
    ) -> Job | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout > 0 else None
        while True:
            job_id, next_at = await self._take()
            if job_id:
                job = await self._get_job_by_id(job_id)
                if job is not None:
                    return job
                continue  # its record is gone: jobcast's sweep drops the id (sweep.py)
            wait = WAKE_POLL if deadline is None else min(WAKE_POLL, deadline - loop.time())
            if next_at:  # Q5: wake at the next job's time
                wait = min(wait, max(0.001, float(next_at) - time.time()))
            if wait <= 0:
                return None
            wake = self.redis.blpop([self.prefix + "wake"], timeout=wait)  # Q5
            await cast("Awaitable[Any]", wake)  # redis-py types it sync or async

    async def _take(self) -> tuple[bytes, bytes]:
        now = time.time()
        args = [
            self.prefix,
            WAKE_MAX,
            now,
            now + self.lease,
            orjson.dumps(dict(self.limits)).decode(),
            self.owner_limit or 0,
        ]
        keys = [self._active, self._incomplete]
        taken, next_at = await self._script(TAKE)(keys=keys, args=args)
        return taken, next_at

    async def abort(self, job: Job, error: str, ttl: float = 5) -> None:
        job.status = Status.ABORTING
        job.error = error
        kind, owner = _kind_and_owner(job)
        keys = [self._active, self._incomplete, job.id, job.abort_id]
        args = [self.prefix, WAKE_MAX, self.serialize(job), ttl, error, job.status, kind, owner]
        async with self._op_sem:
            waiting = await self._script(ABORT)(keys=keys, args=args)
        if waiting:  # nobody runs it: it ends here, as SAQ ends a job still queued
            await self.finish(job, Status.ABORTED, error=error)
            await self.redis.delete(job.abort_id)

    async def abort_reason(self, job: Job) -> str | None:
        """Why ``job`` was aborted: in its abort key, as its error is rewritten by its
        worker's heartbeat; ``swept_error_message`` when a sweep did it (worker.K2)."""
        raw = await self.redis.get(job.abort_id)
        return raw.decode() if raw else None

    async def _retry(self, job: Job, error: str | None) -> None:
        delay = job.next_retry_delay()
        kind, _ = _kind_and_owner(job)
        ready = f"{self.prefix}ready:{kind}"
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.lrem(self._active, 1, job.id)
            pipe.zrem(ready, job.id)
            if delay:
                pipe.zadd(self._incomplete, {job.id: time.time() + delay})
            else:  # Q1: back at its place; 0 so the scheduler never hands it out twice
                pipe.zadd(self._incomplete, {job.id: 0})
                pipe.zadd(ready, {job.id: -_priority(job)})
                pipe.sadd(f"{self.prefix}ready-kinds", kind)
                pipe.rpush(f"{self.prefix}wake", 1)
                pipe.ltrim(f"{self.prefix}wake", -WAKE_MAX, -1)
            pipe.set(job.id, self.serialize(job))
            await pipe.execute()
        await self.notify(job)
        if self.on_retried is not None:  # Q7
            await self.on_retried(job)

    async def due_now(self, key: str) -> bool:
        """Make the job ``key``, waiting for a later time, due now (Q7); False if it was not
        waiting for one."""
        keys = [self._incomplete, self.job_id(key)]
        async with self._op_sem:
            return bool(await self._script(DUE_NOW)(keys=keys, args=[self.prefix, WAKE_MAX]))

    async def ready(self) -> list[str]:
        """The SAQ ids of the jobs that may start (parked ones included), in the order they
        would be taken if no limit stood in the way (Q1), then the earlier version's (Q6)."""
        entries: list[tuple[float, bytes]] = []
        for key in await self._waiting_sets():
            members = await self.redis.zrange(key, 0, -1, withscores=True)
            entries += [(score, member) for member, score in members]
        legacy = await cast("Awaitable[list[bytes]]", self.redis.lrange(self._queued, 0, -1))
        return [member.decode() for _, member in sorted(entries)] + [m.decode() for m in legacy]

    async def count(self, kind: Any) -> int:
        if kind != "queued":
            return await super().count(kind)
        total = await cast("Awaitable[int]", self.redis.llen(self._queued))
        for key in await self._waiting_sets():
            total += await self.redis.zcard(key)
        return total

    async def _waiting_sets(self) -> list[str]:
        """The sorted sets of the jobs that may start: each kind's, each full owner's."""
        redis, prefix = self.redis, self.prefix
        kinds = await cast("Awaitable[set[bytes]]", redis.smembers(f"{prefix}ready-kinds"))
        owners = await cast("Awaitable[set[bytes]]", redis.smembers(f"{prefix}parked-owners"))
        return [f"{prefix}ready:{kind.decode()}" for kind in kinds] + [
            f"{prefix}parked:{owner.decode()}" for owner in owners
        ]


def _kind_and_owner(job: Job) -> tuple[str, str]:
    meta = job.meta or {}
    kind, owner = meta.get("kind"), meta.get("owner")
    return (kind if isinstance(kind, str) else "", owner if isinstance(owner, str) else "")


def _priority(job: Job) -> int:
    priority = (job.meta or {}).get("priority", 0)
    return priority if isinstance(priority, int) else 0
