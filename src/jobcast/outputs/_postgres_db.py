"""The PostgreSQL backend's connections: a small pool for statements, and one connection that
LISTENs for other instances' writes and wakes this one's readers (``postgres.py``, S3, S4)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg

from jobcast.errors import Unavailable
from jobcast.outputs._postgres_sql import Location, StreamStatements
from jobcast.outputs.store import Wakeups

logger = logging.getLogger("jobcast.outputs")
FAILURES = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


class StreamsDatabase:
    def __init__(self, location: Location, sql: StreamStatements, wakeups: Wakeups) -> None:
        self.location = location
        self.sql = sql
        self.wakeups = wakeups
        self.me = uuid.uuid4().hex[:12]  # S3: this instance's own notifications
        self.listener: Any = None  # asyncpg.Connection, LISTENing
        self._pool: Any = None  # asyncpg.Pool
        self._relistening: asyncio.Task[None] | None = None
        self._closing = False

    def _settings(self) -> dict[str, str] | None:
        return {"search_path": self.location.schema} if self.location.schema else None

    async def open(self) -> None:
        """Open the pool, create the tables if missing, and listen."""
        schema = self.location.schema
        try:
            self._pool = await asyncpg.create_pool(
                self.location.dsn,
                min_size=1,
                max_size=2,  # a small pool of its own: jobs' flushes commit in groups (S2)
                server_settings=self._settings(),
                command_timeout=15,  # a silent database: 503, not a hang
            )
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtext($1))", self.sql.schema_lock
                )
                if schema:
                    await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
                await conn.execute(self.sql.create_tables)
            await self._listen()  # before any write: no wake-up is missed
        except FAILURES as exc:
            await self.close()
            raise Unavailable(f"cannot open output streams in PostgreSQL: {exc}") from exc

    async def close(self) -> None:
        self._closing = True
        if self._relistening is not None:
            self._relistening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._relistening
        listener, self.listener = self.listener, None
        if listener is not None:
            with contextlib.suppress(*FAILURES):
                await listener.close(timeout=2)
        pool, self._pool = self._pool, None
        if pool is not None:
            with contextlib.suppress(*FAILURES):
                await asyncio.wait_for(pool.close(), 5)

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        """A pooled connection; its failures are :class:`Unavailable` (S4)."""
        if self._pool is None:
            raise RuntimeError("the stream store is not open")
        try:
            async with self._pool.acquire() as conn:
                yield conn
        except FAILURES as exc:
            raise Unavailable(f"the output streams' database failed: {exc}") from exc

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        async with self.connection() as conn, conn.transaction():
            yield conn

    def payload(self, path: str, incarnation: int, tail: int) -> str:
        """A write's notification (S3): positions and the path, never bytes."""
        return f"{self.me} {incarnation} {tail} {path}"

    async def announce(self, conn: Any, path: str, incarnation: int, tail: int) -> None:
        """S3: sent when the transaction commits, not before."""
        await conn.execute(self.sql.notify, self.sql.channel, self.payload(path, incarnation, tail))

    # -- listening ---------------------------------------------------------------------------

    async def _listen(self) -> None:
        conn = await asyncpg.connect(self.location.dsn, server_settings=self._settings())
        await conn.add_listener(self.sql.channel, self._notified)
        conn.add_termination_listener(self._listener_lost)
        self.listener = conn

    def _notified(self, conn: object, pid: int, channel: str, payload: str) -> None:
        sender, _, rest = payload.partition(" ")
        path = rest.split(" ", 2)[-1]
        if sender != self.me and path:
            self.wakeups.notify(path)

    def _listener_lost(self, conn: object) -> None:
        if not self._closing:
            self._relistening = asyncio.create_task(
                self._relisten(), name="jobcast-stream-relisten"
            )

    async def _relisten(self) -> None:
        backoff = 0.05
        while not self._closing:
            try:
                await self._listen()
            except FAILURES as exc:
                logger.warning("stream wake-ups lost (%s); retrying in %.2f s", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            self.wakeups.notify_all()  # what changed while nobody listened
            return
