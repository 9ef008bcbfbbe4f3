"""Inputs to running jobs (``sql.py`` Q9) and batches (Q10) in the SQL job store: their
statements, each run inside one of the store's transactions."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from jobcast.jobs.model import Job, JobState
from jobcast.stores._sql_keys import insert_for
from jobcast.stores._sql_tables import (
    UPDATE_JOB,
    job_batches_table,
    job_from_row,
    job_inputs_table,
    job_tags_table,
    jobs_table,
    row_values,
    tag_rows,
)
from jobcast.stores.base import BatchCounts

COUNTS = ("succeeded", "failed", "cancelled")


async def put_input(
    conn: AsyncConnection, is_sqlite: bool, job_id: str, name: str, value: Any, given_by: str
) -> bool:
    """Store input ``name`` of a job unless one is stored (Q9): True when this one was."""
    row = {
        "job_id": job_id,
        "name": name,
        "value": orjson.dumps(value).decode(),
        "given_by": given_by,
        "created_at": time.time(),
    }
    insert = insert_for(is_sqlite)(job_inputs_table).values(**row)
    result = await conn.execute(insert.on_conflict_do_nothing())
    return bool(result.rowcount == 1)


async def get_input(conn: AsyncConnection, job_id: str, name: str) -> tuple[Any] | None:
    t = job_inputs_table.c
    query = sa.select(t.value).where((t.job_id == job_id) & (t.name == name))
    found = (await conn.execute(query)).scalar()
    return None if found is None else (orjson.loads(found),)


async def create_batch(conn: AsyncConnection, parent: Job, children: list[Job]) -> None:
    """The parent, its children (and their tags) and the counts row (Q10)."""
    rows = [{"id": job.id, **row_values(job)} for job in (parent, *children)]
    tags = [tag for job in (parent, *children) for tag in tag_rows(job)]
    await conn.execute(jobs_table.insert(), rows)
    if tags:
        await conn.execute(job_tags_table.insert(), tags)
    await conn.execute(job_batches_table.insert().values(batch_id=parent.id, total=len(children)))


async def _locked_counts(conn: AsyncConnection, batch_id: str) -> tuple[BatchCounts, Job] | None:
    """The batch's counts row, locked to the commit, and its parent (Q10)."""
    b = job_batches_table
    found = (
        await conn.execute(sa.select(b).where(b.c.batch_id == batch_id).with_for_update())
    ).first()
    parent_row = (
        await conn.execute(jobs_table.select().where(jobs_table.c.id == batch_id))
    ).first()
    if found is None or parent_row is None:
        return None
    return await _counts(conn, batch_id, found._mapping), job_from_row(parent_row)


async def _counts(conn: AsyncConnection, batch_id: str, row: Any) -> BatchCounts:
    c = jobs_table.c
    running = sa.select(sa.func.coalesce(sa.func.sum(c.progress), 0.0)).where(
        (c.parent_id == batch_id) & c.state.in_(("queued", "running"))
    )
    progress = float((await conn.execute(running)).scalar() or 0.0)
    return BatchCounts(
        total=int(row["total"]),
        **{name: int(row[name]) for name in COUNTS},
        running_progress=progress,
    )


async def _write_parent(conn: AsyncConnection, parent: Job) -> None:
    values = row_values(parent)
    del values["readers"]  # base.JobStore.save
    await conn.execute(UPDATE_JOB, [{"job_id": parent.id, **values}])


async def end_child(
    conn: AsyncConnection,
    batch_id: str,
    state: JobState,
    count: Callable[[Job, BatchCounts], bool | None],
    announce: Callable[[Job, bool], Awaitable[str | None]],
) -> tuple[Job, bool] | None:
    """Count one end under the counts row's lock and rewrite the parent (Q10)."""
    locked = await _locked_counts(conn, batch_id)
    if locked is None or state.value not in COUNTS:
        return None
    counts, parent = locked
    b = job_batches_table
    ended = getattr(counts, state.value) + 1
    await conn.execute(b.update().where(b.c.batch_id == batch_id).values(**{state.value: ended}))
    counts = dataclasses.replace(counts, **{state.value: ended})
    complete = count(parent, counts)
    if complete is None:  # its handler runs and owns its row (batches.G6)
        return parent, False
    # Published under the row lock, so the parent's events leave in count order; its id is
    # stored with the parent, so its stream resumes right after it.
    parent.last_event_id = await announce(parent, complete) or parent.last_event_id
    await _write_parent(conn, parent)
    return parent, complete


async def add_child(conn: AsyncConnection, is_sqlite: bool, child: Job) -> None:
    """Insert a running job's child and count it in the parent's row (G6)."""
    if child.parent_id is None:
        raise ValueError("a child names its parent")
    await conn.execute(jobs_table.insert(), [{"id": child.id, **row_values(child)}])
    tags = tag_rows(child)
    if tags:
        await conn.execute(job_tags_table.insert(), tags)
    b = job_batches_table
    insert = insert_for(is_sqlite)(b).values(batch_id=child.parent_id, total=1)
    await conn.execute(
        insert.on_conflict_do_update(index_elements=[b.c.batch_id], set_={"total": b.c.total + 1})
    )


async def batch_counts(conn: AsyncConnection, batch_id: str) -> BatchCounts | None:
    b = job_batches_table
    found = (await conn.execute(sa.select(b).where(b.c.batch_id == batch_id))).first()
    return None if found is None else await _counts(conn, batch_id, found._mapping)


async def update_batch(
    conn: AsyncConnection,
    batch_id: str,
    update: Callable[[Job, BatchCounts], Awaitable[Job | None]],
) -> bool:
    """Run ``update`` under the counts row's lock; store the parent it returns (Q10)."""
    locked = await _locked_counts(conn, batch_id)
    if locked is None:
        return False
    counts, parent = locked
    changed = await update(parent, counts)
    if changed is not None:
        await _write_parent(conn, changed)
    return True
