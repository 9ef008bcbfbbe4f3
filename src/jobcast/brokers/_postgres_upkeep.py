"""The PostgreSQL broker's background work on the tables: retention (``postgres.py``, G4) and
moving the outbox into the history (G6). Any instance may run either; advisory locks keep the
age pass and the mover to one instance at a time."""

from __future__ import annotations

from typing import Any

from jobcast.brokers._postgres_sql import Statements

MOVE_BATCH = 1000  # outbox rows per move


async def trim_topics(pool: Any, sql: Statements, topics: set[str], keep: int) -> None:
    """At most ``keep`` events in each of ``topics``; marked and dropped in one statement."""
    if topics:
        await pool.execute(sql.trim_topics, sorted(topics), keep)


async def trim_age(pool: Any, sql: Statements, cutoff: float) -> None:
    """Drop the events older than ``cutoff``, marking each topic's newest dropped position,
    and fold topics left empty into the watermark, all in one transaction."""
    async with pool.acquire() as conn, conn.transaction():
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock(hashtext($1))", sql.trim_lock):
            return  # another instance is at it
        expired = await conn.fetch(sql.expired, cutoff)
        if not expired:
            return
        topics = [r[0] for r in expired]
        positions = [r[1] for r in expired]
        await conn.execute(sql.mark_many, topics, positions)
        await conn.execute(sql.drop_expired, cutoff, max(positions))
        watermark = await conn.fetchval(sql.fold, topics, positions)
        if watermark is not None:
            await conn.execute(sql.drop_marks, watermark)


async def move_outbox(pool: Any, sql: Statements) -> tuple[int, int]:
    """Move committed outbox rows into the history, oldest first: (rows moved, newest
    position given, or 0)."""
    moved = newest = 0
    while True:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", sql.move_lock)
            row = await conn.fetchrow(sql.move, MOVE_BATCH, sql.channel)
        if row is None:
            return moved, newest
        moved, newest = moved + row["n"], row["position"]
