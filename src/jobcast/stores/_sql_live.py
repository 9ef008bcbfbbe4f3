"""Inputs to running jobs (``sql.py`` Q9) and batches (Q10) in the SQL job store: their
statements, each run inside one of the store's transactions."""

from __future__ import annotations

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


async def end_child(
    conn: AsyncConnection,
    batch_id: str,
    state: JobState,
    count: Callable[[Job, dict[str, int]], bool],
    announce: Callable[[Job, bool], Awaitable[str | None]],
) -> tuple[Job, bool] | None:
    """Count one end under the counts row's lock and rewrite the parent (Q10)."""
    b = job_batches_table
    mine = b.c.batch_id == batch_id
    found = (await conn.execute(sa.select(b).where(mine).with_for_update())).first()
    parent_row = (
        await conn.execute(jobs_table.select().where(jobs_table.c.id == batch_id))
    ).first()
    if found is None or parent_row is None or state.value not in COUNTS:
        return None
    counts = {name: int(found._mapping[name]) for name in COUNTS}
    counts[state.value] += 1
    await conn.execute(b.update().where(mine).values(**{state.value: counts[state.value]}))
    parent = job_from_row(parent_row)
    complete = count(parent, counts)
    # Published under the row lock, so the parent's events leave in count order; its id is
    # stored with the parent, so its stream resumes right after it.
    parent.last_event_id = await announce(parent, complete) or parent.last_event_id
    values = row_values(parent)
    del values["readers"]  # base.JobStore.save
    await conn.execute(UPDATE_JOB, [{"job_id": batch_id, **values}])
    return parent, complete
