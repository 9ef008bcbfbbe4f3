"""Idempotency keys in the SQL job store (``sql.py`` Q7): the statements of a keyed submission
and of a keyed publish, each run inside one of the store's write transactions."""

from __future__ import annotations

import time

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from jobcast.jobs.model import Job
from jobcast.stores._sql_tables import (
    event_keys_table,
    job_keys_table,
    job_tags_table,
    jobs_table,
    row_values,
    tag_rows,
)


def insert_for(is_sqlite: bool) -> type[sqlite.Insert] | type[postgresql.Insert]:
    """The dialect's INSERT, which has ``on_conflict_do_nothing`` (both spell it alike)."""
    return sqlite.Insert if is_sqlite else postgresql.Insert


async def create_keyed(
    conn: AsyncConnection,
    is_sqlite: bool,
    job: Job,
    key: str,
    request_hash: str,
    retention: float,
) -> tuple[str, str] | None:
    """Insert ``job`` under its owner's ``key``; or the earlier job's id and request hash."""
    keys, now = job_keys_table, time.time()
    row = {"job_id": job.id, "request_hash": request_hash, "created_at": now}
    claim = insert_for(is_sqlite)(keys).values(owner=job.owner, key=key, **row)
    expired = (keys.c.owner == job.owner) & (keys.c.created_at < now - retention)
    await conn.execute(keys.delete().where(expired))  # the owner's old keys are free again
    if (await conn.execute(claim.on_conflict_do_nothing())).rowcount != 1:
        mine = (keys.c.owner == job.owner) & (keys.c.key == key)
        earlier = sa.select(keys.c.job_id, keys.c.request_hash).where(mine)
        found = (await conn.execute(earlier)).one()
        return str(found[0]), str(found[1])
    await conn.execute(jobs_table.insert().values(id=job.id, **row_values(job)))
    if job.tags:  # sql.Q8
        await conn.execute(job_tags_table.insert(), tag_rows(job))
    return None


async def claim_publish(
    conn: AsyncConnection,
    is_sqlite: bool,
    subject: str,
    key: str,
    request_hash: str,
    retention: float,
) -> tuple[str, list[str] | None] | None:
    """Claim ``subject``'s ``key`` for a publish; or the earlier publish's hash and ids."""
    keys, now = event_keys_table, time.time()
    values = {"subject": subject, "key": key, "request_hash": request_hash, "created_at": now}
    claim = insert_for(is_sqlite)(keys).values(**values).on_conflict_do_nothing()
    expired = (keys.c.subject == subject) & (keys.c.created_at < now - retention)
    await conn.execute(keys.delete().where(expired))
    if (await conn.execute(claim)).rowcount == 1:
        return None
    mine = (keys.c.subject == subject) & (keys.c.key == key)
    found = (await conn.execute(sa.select(keys.c.request_hash, keys.c.ids).where(mine))).one()
    return str(found[0]), orjson.loads(found[1]) if found[1] is not None else None


async def record_publish(
    conn: AsyncConnection, subject: str, key: str, ids: list[str] | None
) -> None:
    """The ids a claimed publish got; ``None``: it failed, and its key is free again."""
    keys = event_keys_table
    mine = (keys.c.subject == subject) & (keys.c.key == key)
    if ids is None:
        await conn.execute(keys.delete().where(mine))
    else:
        await conn.execute(keys.update().where(mine).values(ids=orjson.dumps(ids).decode()))
