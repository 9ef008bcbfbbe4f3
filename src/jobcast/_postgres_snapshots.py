"""The processes' metrics snapshots in the PostgreSQL broker's database (``shared_metrics.py``,
M2): one row per process, replaced at each snapshot, expired rows dropped as they are read."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg

from jobcast.brokers._postgres_sql import parse_url


class PostgresSnapshots:
    failures: tuple[type[BaseException], ...] = (
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
        OSError,
        TimeoutError,
    )

    def __init__(self, broker_url: str) -> None:
        self._location = parse_url(broker_url)
        self._table = f"{self._location.prefix}_metrics"
        self._pool: Any = None
        self._opening = asyncio.Lock()

    async def _open(self) -> Any:
        async with self._opening:
            if self._pool is None:
                schema = self._location.schema
                pool = await asyncpg.create_pool(
                    self._location.dsn,
                    min_size=1,
                    max_size=1,
                    server_settings={"search_path": schema} if schema else None,
                    command_timeout=10,
                )
                async with pool.acquire() as conn, conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", self._table)
                    await conn.execute(
                        f"CREATE TABLE IF NOT EXISTS {self._table} (process text PRIMARY KEY,"
                        " snapshot bytea NOT NULL, expires_at double precision NOT NULL)"
                    )
                self._pool = pool
            return self._pool

    async def put(self, process: str, snapshot: bytes, ttl_ms: int) -> None:
        pool = await self._open()
        await pool.execute(
            f"INSERT INTO {self._table} VALUES ($1, $2, $3) ON CONFLICT (process)"
            " DO UPDATE SET snapshot = excluded.snapshot, expires_at = excluded.expires_at",
            process,
            snapshot,
            time.time() + ttl_ms / 1000,
        )

    async def read_all(self) -> dict[str, bytes]:
        pool = await self._open()
        async with pool.acquire() as conn:
            await conn.execute(f"DELETE FROM {self._table} WHERE expires_at < $1", time.time())
            rows = await conn.fetch(f"SELECT process, snapshot FROM {self._table}")
        return {row["process"]: row["snapshot"] for row in rows}

    async def forget(self, process: str) -> None:
        if self._pool is not None:
            await self._pool.execute(f"DELETE FROM {self._table} WHERE process = $1", process)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
