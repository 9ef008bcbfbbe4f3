"""Real Redis and PostgreSQL for the scale-out tests.

These suites always run (CI starts both services in ``.ci/run``); a developer without them sets
``JOBCAST_TEST_NO_SERVICES=1`` to skip them explicitly. Nothing is skipped silently: an
unreachable service is a failure.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

REDIS_URL = os.environ.get("JOBCAST_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
POSTGRES_URL = os.environ.get(
    "JOBCAST_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1/test"
)

needs_services = pytest.mark.skipif(
    os.environ.get("JOBCAST_TEST_NO_SERVICES") == "1",
    reason="JOBCAST_TEST_NO_SERVICES=1: Redis/PostgreSQL suites skipped on request",
)


def unique_prefix() -> str:
    return f"jobcast-test-{uuid.uuid4().hex[:12]}"


def redis_url(prefix: str, base: str = REDIS_URL) -> str:
    """A broker URL whose keys all live under ``prefix``."""
    return f"{base}?prefix={prefix}"


def delete_prefix(prefix: str, base: str = REDIS_URL) -> None:
    """Remove every key a test left under ``prefix``."""
    import redis

    client = redis.Redis.from_url(base)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def redis_prefix() -> Iterator[str]:
    """A fresh key prefix, cleaned up afterwards (wrap in a fixture)."""
    prefix = unique_prefix()
    yield prefix
    delete_prefix(prefix)


def drop_schema(store_url: str) -> None:
    """Drop the ``?schema=`` a PostgreSQL store test created."""
    import asyncio

    import asyncpg

    schema = store_url.rsplit("schema=", 1)[1]
    dsn = POSTGRES_URL.replace("postgresql+asyncpg", "postgresql")

    async def drop() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()

    asyncio.run(drop())


def postgres_broker_url() -> str:
    """A PostgreSQL broker URL whose tables are fresh (``drop_postgres_broker`` removes them)."""
    return f"{POSTGRES_URL}?prefix=t{uuid.uuid4().hex[:12]}"


def drop_postgres_broker(url: str) -> None:
    """Drop the tables of the broker at ``url`` (its ``?prefix=``)."""
    import asyncio

    asyncio.run(drop_postgres_broker_tables(url))


async def drop_postgres_broker_tables(url: str) -> None:
    """``drop_postgres_broker`` from a running event loop."""
    import asyncpg

    prefix = url.rsplit("prefix=", 1)[1]
    dsn = POSTGRES_URL.replace("postgresql+asyncpg", "postgresql")
    tables = ", ".join(f"{prefix}_{name}" for name in BROKER_TABLES)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"DROP TABLE IF EXISTS {tables}")
    finally:
        await conn.close()


BROKER_TABLES = (
    "broker",
    "events",
    "trimmed",
    "expired",
    "outbox",
    "tickets",
    "limit_hits",
    "metrics",
    "stream_producers",  # before the streams they belong to
    "stream_chunks",
    "streams",
)
