"""Spent tickets and rate-limit counters in PostgreSQL, for a deployment without Redis.

With the PostgreSQL broker, instances share nothing but the database, so what
``shared_state.py`` keeps in Redis lives there: a ticket is spent once anywhere (a primary key
insert), and a rate limit is a moving window over one table of hits, counted under a
transaction-scoped advisory lock per key so two instances never both admit the last hit. Both
use one small pool, opened on first use (the deployment owns it and closes it).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
from limits.aio.storage import MovingWindowSupport, Storage

from jobcast.brokers._postgres_sql import Location, parse_url
from jobcast.errors import Unavailable

_FAILURES = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)
#: One in this many hits also deletes every key's expired hits (a key's own go at each hit).
_SWEEP_EVERY = 1000


class PostgresState:
    """The tables and the pool shared by the tickets and the rate-limit storage."""

    def __init__(self, url: str) -> None:
        self.location: Location = parse_url(url)
        p = self.location.prefix
        self.tickets = f"{p}_tickets"
        self.hits = f"{p}_limit_hits"
        self._pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()

    async def pool(self) -> Any:
        """The pool, opened (and the tables created) on first use."""
        async with self._opening:
            if self._pool is None:
                schema = self.location.schema
                pool = await asyncpg.create_pool(
                    self.location.dsn,
                    min_size=1,
                    max_size=2,
                    server_settings={"search_path": schema} if schema else None,
                    command_timeout=10,  # a database that stopped answering: 503, not a hang
                )
                async with pool.acquire() as conn, conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", self.hits)
                    await conn.execute(
                        f"CREATE TABLE IF NOT EXISTS {self.tickets} (id text PRIMARY KEY,"
                        " expires_at double precision NOT NULL);"
                        f"CREATE TABLE IF NOT EXISTS {self.hits} (key text NOT NULL,"
                        " at double precision NOT NULL, expires_at double precision NOT NULL);"
                        f"CREATE INDEX IF NOT EXISTS {self.hits}_by_key ON {self.hits} (key, at);"
                    )
                self._pool = pool
            return self._pool

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None


class PostgresSpentTickets:
    def __init__(self, state: PostgresState) -> None:
        self._state = state

    async def spend(self, ticket_id: str, expires_at: float) -> bool:
        table = self._state.tickets
        try:
            pool = await self._state.pool()
            async with pool.acquire() as conn:
                await conn.execute(f"DELETE FROM {table} WHERE expires_at < $1", time.time())
                inserted = await conn.fetchval(
                    f"INSERT INTO {table} VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING 1",
                    ticket_id,
                    expires_at,
                )
        except _FAILURES as exc:
            raise Unavailable(f"cannot check the ticket: {exc}") from exc
        return inserted is not None


class PostgresRateLimitStorage(Storage, MovingWindowSupport):
    """The ``limits`` moving window in PostgreSQL (errors become ``StorageError``)."""

    STORAGE_SCHEME = ["jobcast+postgresql"]

    def __init__(self, state: PostgresState) -> None:
        super().__init__(wrap_exceptions=True)
        self._state = state
        self._hits = 0

    @property
    def base_exceptions(self) -> tuple[type[Exception], ...]:
        return _FAILURES

    async def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        if amount > limit:
            return False
        table, now = self._state.hits, time.time()
        self._hits += 1
        pool = await self._state.pool()
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", key)
            await conn.execute(f"DELETE FROM {table} WHERE key = $1 AND at < $2", key, now - expiry)
            if self._hits % _SWEEP_EVERY == 0:
                await conn.execute(f"DELETE FROM {table} WHERE expires_at < $1", now)
            count = await conn.fetchval(f"SELECT count(*) FROM {table} WHERE key = $1", key)
            if count + amount > limit:
                return False
            await conn.executemany(
                f"INSERT INTO {table} VALUES ($1, $2, $3)", [(key, now, now + expiry)] * amount
            )
        return True

    async def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        now = time.time()
        pool = await self._state.pool()
        row = await pool.fetchrow(
            f"SELECT min(at), count(*) FROM {self._state.hits} WHERE key = $1 AND at >= $2",
            key,
            now - expiry,
        )
        return (row[0], row[1]) if row[1] else (now, 0)

    # The fixed-window operations: the moving window above is the only strategy jobcast uses.
    async def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        raise NotImplementedError("jobcast counts in a moving window")

    async def get(self, key: str) -> int:
        return (await self.get_moving_window(key, 0, 3600))[1]

    async def get_expiry(self, key: str) -> float:
        return time.time()

    async def check(self) -> bool:
        pool = await self._state.pool()
        return bool(await pool.fetchval("SELECT 1"))

    async def reset(self) -> int | None:
        pool = await self._state.pool()
        await pool.execute(f"DELETE FROM {self._state.hits}")
        return None

    async def clear(self, key: str) -> None:
        pool = await self._state.pool()
        await pool.execute(f"DELETE FROM {self._state.hits} WHERE key = $1", key)
