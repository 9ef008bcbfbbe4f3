"""The queue of ``jobcast worker`` in PostgreSQL: SAQ's PostgreSQL queue, taken by priority
within the per-kind and per-owner limits, for a deployment that runs no Redis.

It keeps SAQ's job table, its records and everything that reads them (SAQ's worker, status,
heartbeats, ``refresh``, worker stats), and replaces how a job is taken, swept and aborted,
so the guarantees of the Redis queue (``ready_queue.py``, ``run_limits.py``, ``sweep.py``)
hold here too.

Decisions (cited as P1..P7):

P1. Order: a job's jobcast priority (``rank``) and the exact time it may start (``ready_at``,
    where SAQ's ``scheduled`` is whole seconds) are columns of its row; a worker takes the
    highest rank, then the lowest key. Keys are jobcast ids, which grow with their creation
    time (``model.new_job_id``), so equal ranks start in submission order (schedule.P1).
P2. Limits: a job holds its kind's and its owner's slots while its row is ``active`` or
    ``aborting``, so the counts are the rows themselves: no leases to renew. A take counts
    them and picks the first job whose kind and owner have room, in one transaction under a
    per-queue advisory lock, so no two workers see one slot free. A dead worker's job holds
    its slots until the sweep (P4) takes it back, as a lapsed lease does in Redis.
P3. No polling: a worker with nothing to take waits for a notification on the queue's channel
    (a job made ready, a limited job ended), held on one ``LISTEN`` connection per worker
    process, until the next delayed job's time at the latest, and looks again at least every
    ``WAKE_POLL`` seconds (a missed notification costs that much). The tasks of one process
    take one at a time, and a take that found nothing stands for all of them until the next
    notification, so an idle process asks the database once a second, not once per task.
P4. Sweep: one sweeper at a time (a transaction-scoped advisory lock held while it sweeps,
    which a dead sweeper's connection gives up). A job is marked swept only if, under its row
    lock, it is still stuck: a job its worker has just finished or handed back is left alone.
    The sweep waits ``sweep.ABORT_WAIT`` for the worker's answer, then re-queues the job (or
    ends it, when SAQ may not retry it).
P5. Abort: the reason lives in its own column (a worker's heartbeat rewrites SAQ's record,
    its error included), so a worker tells a user's cancel from a sweep (worker.K2). A job
    still queued ends here; a running one is marked ``aborting`` for its worker to stop.
P6. Tables: ``{prefix}_queue_jobs`` and ``{prefix}_queue_stats`` (the URL's ``prefix``, as the
    broker's), with SAQ's columns and jobcast's (``_postgres_queue_sql.py``), created under a
    blocking advisory lock, so processes that start together never race (SAQ's own creation
    skips when another process holds its lock, tables made or not).
P7. A job handed back for later (a parked job, input_wait.N7) is made due at once by
    ``due_now`` (only a row still ``queued`` with a later ``ready_at``), and ``on_retried`` is
    awaited after each retry is committed, as on Redis (ready_queue.Q7, worker.K8).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from psycopg import AsyncConnection, sql
from psycopg_pool import AsyncConnectionPool
from saq.job import TERMINAL_STATUSES, Job, Status
from saq.queue.postgres import PostgresQueue
from saq.utils import now, now_seconds

from jobcast.brokers._postgres_sql import parse_url
from jobcast.jobs._postgres_queue_sql import QueueSql
from jobcast.jobs.sweep import ABORT_WAIT

logger = logging.getLogger("jobcast.worker")

#: Seconds a worker with nothing to take waits before it looks again anyway (P3).
WAKE_POLL = 1.0


def open_postgres_queue(url: str, name: str) -> PostgresReadyQueue:
    """``postgresql://.../db?prefix=p&schema=s&pool_size=n`` (as the broker's URL)."""
    location = parse_url(url)
    kwargs: dict[str, Any] = {"autocommit": True}
    if location.schema:
        kwargs["options"] = f"-c search_path={location.schema}"
    pool = AsyncConnectionPool(
        location.dsn, kwargs=kwargs, min_size=1, max_size=location.pool_size + 1, open=False
    )
    return PostgresReadyQueue(
        pool, location.prefix, location.dsn, kwargs, name=name, schema=location.schema
    )


class PostgresReadyQueue(PostgresQueue):
    """SAQ's PostgreSQL queue, taken by priority within the limits (P1-P6). A worker sets
    ``limits`` and ``owner_limit`` before it starts, as on ``ReadyQueue`` (no lease: P2)."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        prefix: str,
        dsn: str,
        connect_kwargs: Mapping[str, Any],
        *,
        name: str,
        schema: str | None = None,
    ) -> None:
        statements = QueueSql(prefix, schema)
        super().__init__(
            pool,
            name=name,
            jobs_table=statements.jobs_name,
            stats_table=statements.stats_name,
            manage_pool_lifecycle=True,
        )
        self.sql = statements
        self.prefix = prefix
        self._dsn, self._connect_kwargs = dsn, dict(connect_kwargs)
        self.limits: Mapping[str, int] = {}
        self.owner_limit: int | None = None
        #: Awaited after each retry, the job back in the queue (P7).
        self.on_retried: Callable[[Job], Awaitable[None]] | None = None
        self._taking = asyncio.Lock()
        #: The last take that found nothing: the wake-up it saw, until when it holds (P3).
        self._idle: tuple[asyncio.Event, float] | None = None
        self.schema = schema
        # per deployment, as the broker's channel: deployments in other schemas do not wake us
        self._channel = f"{schema or 'public'}.{prefix}_queue:{name}"
        self._wakeup = asyncio.Event()
        self._listening: asyncio.Task[None] | None = None

    # -- P6 ----------------------------------------------------------------------------------

    async def init_db(self) -> None:
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [self._lock("schema")])
            await conn.execute(self.sql.create)

    async def disconnect(self) -> None:
        if self._listening is not None:
            self._listening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listening
            self._listening = None
        await super().disconnect()

    # -- P1: enqueue, retry ------------------------------------------------------------------

    async def _enqueue(self, job: Job) -> Job | None:
        kind, owner, rank = _meta(job)
        ready_at = (job.meta or {}).get("not_before") or job.scheduled or 0
        params = {
            "key": job.key,
            "job": self.serialize(job),
            "queue": self.name,
            "status": job.status,
            "scheduled": job.scheduled or int(now_seconds()),
            "kind": kind,
            "owner": owner,
            "rank": rank,
            "ready_at": float(ready_at),
        }
        async with self.pool.connection() as conn:
            if await (await conn.execute(self.sql.enqueue, params)).fetchone() is None:
                return None
            await self._wake(conn)
        return job

    async def _retry(self, job: Job, error: str | None) -> None:
        delay = job.next_retry_delay()
        ready_at = time.time() + delay if delay else 0.0  # 0: at once, at its place (P1)
        job.scheduled = int(ready_at)
        async with self.pool.connection() as conn:
            await conn.execute(
                self.sql.retry, [self.serialize(job), job.scheduled, ready_at, job.key]
            )
            await self._wake(conn)
        if self.on_retried is not None:  # P7
            await self.on_retried(job)

    async def due_now(self, key: str) -> bool:
        """Make the job ``key``, waiting for a later time, due now (P7); False if it was not
        waiting for one."""
        at = time.time()
        async with self.pool.connection() as conn:
            row = await _one(conn, self.sql.due_now, [int(at), key, self.name, at])
            if row is None:
                return False
            await self._wake(conn)
        return True

    async def _finish(self, job: Job, status: Status, **kwargs: Any) -> None:
        await super()._finish(job, status, **kwargs)
        kind, owner, _ = _meta(job)
        if kind in self.limits or (self.owner_limit and owner):  # its slots are free (P3)
            await self._wake(kwargs.get("connection"))

    async def schedule(self, lock: int = 1) -> list[str]:
        return []  # a take starts a job at its exact time (P1)

    # -- P2, P3: take ------------------------------------------------------------------------

    async def dequeue(
        self,
        timeout: float = 0.0,  # noqa: ASYNC109  (SAQ's worker passes it)
        poll_interval: float = 0.0,
    ) -> Job | None:
        self._listen()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout > 0 else None
        while self._connected:
            woken = self._wakeup  # before the take: a job made ready during it wakes us
            job, until = await self._take_once(woken)
            if job is not None:
                return job
            wait = max(0.001, until - time.time())
            if deadline is not None:
                wait = min(wait, deadline - loop.time())
            if wait <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), wait)
        return None

    async def _take_once(self, woken: asyncio.Event) -> tuple[Job | None, float]:
        """A job, or None and the time to look again: one task of this process takes at a
        time, and after a take that found nothing the others wait for a wake-up instead of
        asking again (P3), so idle workers cost the database one take a second each."""
        async with self._taking:
            if self._idle is not None and self._idle[0] is woken and time.time() < self._idle[1]:
                return None, self._idle[1]
            job, next_at = await self._take()
            if job is not None:
                return job, 0.0
            until = time.time() + WAKE_POLL
            if next_at is not None:
                until = min(until, next_at)
            self._idle = (woken, until)
            return None, until

    async def _take(self) -> tuple[Job | None, float | None]:
        limited = list(self.limits)
        params = {
            "queue": self.name,
            "kinds": limited,
            "caps": [self.limits[kind] for kind in limited],
            "owner_limit": self.owner_limit or 0,
            "now": time.time(),
        }
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [self._lock("take")])
            row = await (await conn.execute(self.sql.take, params)).fetchone()
            if row is None:
                upcoming = [self.name, time.time()]
                found = await (await conn.execute(self.sql.upcoming, upcoming)).fetchone()
                return None, (found[0] if found else None)
            job = self.deserialize(row[1], Status.ACTIVE)
            if job is None:  # an unreadable record would stand first for ever: drop it
                logger.warning("dropping the unreadable queue record of %s", row[0])
                await conn.execute(self.sql.delete, [row[0]])
                return None, 0.0
            job.started = job.touched = now()
            await self._update(job, status=Status.ACTIVE, connection=conn)
        return job, None

    def _listen(self) -> None:
        if self._listening is None or self._listening.done():
            self._listening = asyncio.create_task(
                self._listen_forever(), name="jobcast-queue-listen"
            )

    async def _listen_forever(self) -> None:
        backoff = WAKE_POLL
        while True:
            try:
                conn = await AsyncConnection.connect(self._dsn, **self._connect_kwargs)
                async with conn:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
                    backoff = WAKE_POLL
                    self._set_wakeup()  # whatever was sent before we listened
                    async for _ in conn.notifies():
                        self._set_wakeup()
            except Exception as exc:  # the takes poll meanwhile (P3)
                logger.warning("queue notifications lost (%s); listening again", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)

    def _set_wakeup(self) -> None:
        self._wakeup.set()
        self._wakeup = asyncio.Event()

    async def _wake(self, conn: AsyncConnection[Any] | None = None) -> None:
        notify = sql.SQL("NOTIFY {}").format(sql.Identifier(self._channel))
        if conn is not None:
            await conn.execute(notify)
            return
        async with self.pool.connection() as own:
            await own.execute(notify)

    def _lock(self, what: str) -> str:
        return f"{self.sql.jobs_name}:{self.name}:{what}"

    # -- P4, P5: sweep and abort -------------------------------------------------------------

    async def sweep(self, lock: int = 60, abort: float = ABORT_WAIT) -> list[str]:
        swept: list[str] = []
        async with self.pool.connection() as conn, conn.transaction():
            mine = "SELECT pg_try_advisory_xact_lock(hashtext(%s))"
            if not await _one(conn, mine, [self._lock("sweep")]):
                return swept  # another worker is sweeping (P4)
            await conn.execute(self.sql.delete_ended, [self.name, now_seconds()])
            await conn.execute(self.sql.delete_stats, [now_seconds()])
            rows = await (await conn.execute(self.sql.running, [self.name])).fetchall()
            for record, status in rows:
                job = self.deserialize(record, status)
                if job is not None and job.stuck and await self._mark_swept(job):
                    await self._recover(job, abort)
                    swept.append(job.key)
        return swept

    async def _mark_swept(self, job: Job) -> bool:
        """Ask the worker of ``job`` to stop, if it is still stuck under its row lock (P4)."""
        error = self.swept_error_message
        async with self.pool.connection() as conn, conn.transaction():
            row = await (await conn.execute(self.sql.lock_row, [job.key])).fetchone()
            current = self.deserialize(*row) if row else None
            if current is None or current.status not in (Status.ACTIVE, Status.ABORTING):
                return False  # its worker has just finished it or handed it back
            if not current.stuck:
                return False  # its worker has just touched it
            job.replace(current)
            job.status, job.error = Status.ABORTING, error
            await conn.execute(self.sql.mark_aborting, [self.serialize(job), error, job.key])
        logger.info("sweeping %s", job.info())
        return True

    async def _recover(self, job: Job, abort_wait: float) -> None:
        try:
            await job.refresh(abort_wait)
        except TimeoutError:
            logger.info("no answer from the worker of %s: it is gone", job.key)
        if job.retryable:
            await self.retry(job, error=self.swept_error_message)
        else:
            await self.finish(job, Status.ABORTED, error=self.swept_error_message)

    async def abort(self, job: Job, error: str, ttl: float = 5) -> None:
        async with self.pool.connection() as conn, conn.transaction():
            status = await self.get_job_status(job.key, for_update=True, connection=conn)
            if status in TERMINAL_STATUSES:
                return
            if status is None or status is Status.QUEUED:  # nobody runs it: it ends here
                await self.finish(job, Status.ABORTED, error=error, connection=conn)
                return
            job.status, job.error = Status.ABORTING, error
            job.touched = now()
            await conn.execute(self.sql.mark_aborting, [self.serialize(job), error, job.key])

    async def abort_reason(self, job: Job) -> str | None:
        """Why ``job`` was aborted (P5): ``swept_error_message`` when a sweep did it."""
        async with self.pool.connection() as conn:
            reason = await _one(conn, self.sql.abort_reason, [job.key])
        return reason if isinstance(reason, str) else None

    async def ready(self) -> list[str]:
        """The keys of the jobs that may start, in the order they would be taken (P1)."""
        async with self.pool.connection() as conn:
            rows = await (await conn.execute(self.sql.ready, [self.name])).fetchall()
        return [row[0] for row in rows]


async def _one(conn: AsyncConnection[Any], statement: Any, params: list[Any]) -> Any:
    """The first column of the first row (None without one)."""
    row = await (await conn.execute(statement, params)).fetchone()
    return row[0] if row else None


def _meta(job: Job) -> tuple[str, str, int]:
    meta = job.meta or {}
    kind, owner, rank = meta.get("kind"), meta.get("owner"), meta.get("priority", 0)
    return (
        kind if isinstance(kind, str) else "",
        owner if isinstance(owner, str) else "",
        rank if isinstance(rank, int) and not isinstance(rank, bool) else 0,
    )


class RowLimits:
    """The run limits of a worker on this queue: the take counted the running rows (P2), so a
    job handed out holds its slots until its row stops being ``active``; nothing to acquire,
    renew or release, unlike Redis's leases (``run_limits.py``)."""

    def __init__(self, kinds: Mapping[str, int], owner_limit: int | None) -> None:
        self.kinds = kinds
        self.owner_limit = owner_limit

    def limited(self, kind: str, owner: str) -> bool:
        return kind in self.kinds or (self.owner_limit is not None and bool(owner))

    async def acquire(self, kind: str, owner: str, job_id: str) -> bool:
        return True

    async def renew(self, kind: str, owner: str, job_id: str) -> None:
        return None

    async def release(self, kind: str, owner: str, job_id: str) -> None:
        return None
