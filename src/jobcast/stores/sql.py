"""The SQL job store: SQLAlchemy 2 Core over asyncio, on SQLite and PostgreSQL.

Decisions (cited as Q1..Q12):

Q1. Portable columns only: times are epoch seconds (floats), JSON values are text written by
    orjson. The same statements run on SQLite (aiosqlite) and PostgreSQL (asyncpg).
Q2. SQLite runs in WAL mode (readers never wait for the writer) and this store serialises its
    own writes with a lock, so concurrent jobs never hit "database is locked".
Q3. A ``schema_version`` row in ``jobcast_meta``: a newer database is refused with a clear
    message, an older one is brought forward by the steps in ``MIGRATIONS``.
Q4. Foreign errors stop here: every database error becomes :class:`Unavailable`, with a
    generic message; the detail goes to the log. A driver's message can quote the statement
    and its parameters (job data), so clients never see it, and the engine is created with
    ``hide_parameters`` so the log does not carry the parameters either. Only the first line of
    the message is logged: below it PostgreSQL's DETAIL quotes the offending values ("Key
    (id)=(...) already exists", which SQLAlchemy 2.0 passes on), and SQLAlchemy the statement.
Q5. Group commit: ``create`` and ``save`` calls that arrive while a write is in progress are
    written together in the next transaction (the newest ``save`` of a job wins), so a thousand
    concurrent jobs cost a few transactions, not thousands. Each caller returns once its write
    is committed. ``save_many`` is the ``save`` of several jobs with one caller (a flusher
    pass's: a thousand callers cost the loop a task and a shield each).
Q6. PostgreSQL (asyncpg, or psycopg 3): the same statements; ``?schema=name`` in the URL puts
    the tables in that schema (created if missing), so several deployments or test runs can
    share one database. Schema creation and migration hold an advisory lock, so instances and
    workers starting together do not race. Migrations are the few statements in
    ``MIGRATIONS`` (no Alembic): the schema is one table of jobs and one of acknowledgements.
Q7. Idempotency keys live in a table of their own whose primary key is (owner, key): a keyed
    submission inserts its key with ``ON CONFLICT DO NOTHING`` and its job in the same
    transaction, so of concurrent submissions with one key exactly one inserts a row (the
    database decides, on every instance), and a key that exists always has its job. The
    owner's keys older than the retention window are deleted first, in the same transaction,
    so an expired key is free again. New tables come from ``create_all``
    (which creates missing tables on an existing database); ``MIGRATIONS`` alters old ones.
Q8. Tags: the job row keeps its tags (the snapshot), and ``job_tags`` one row per tag, inserted
    in the job's own transaction, so ``?tag=a&tag=b`` is one indexed ``IN`` per tag (all must
    match) on SQLite and PostgreSQL alike, with no JSON operators.
Q9. Input to a running job: ``put_input`` inserts (job, name) with ``ON CONFLICT DO NOTHING``,
    so of concurrent answers exactly one is stored (the database decides, on every instance);
    the handler reads it from there, in this process or a worker, now or after a restart.
Q10. Batches: ``create_batch`` inserts the parent, its children (and their tags) and the
    batch's counts row in one transaction, so a batch exists whole or not at all.
    ``end_child`` locks the counts row (``FOR UPDATE``; SQLite's writes are serialised, Q2),
    counts one end and rewrites the parent from its stored row in the same transaction, so
    concurrent ends on several instances each see a distinct count and one sees the last; the
    parent's event is published before the commit, under the lock, so the parent's events
    leave in count order on every instance (its ``seq`` never goes back). ``add_child``
    inserts a spawned child and counts it (creating the row with the first) in one
    transaction; ``update_batch`` runs a hand-over or a progress update under the same lock.

Q11. Input permissions: the readers a job was shared with "with input" are rows of
    ``job_responders`` (job, subject), changed only by sharing and removed with the job, so a
    worker's ``save`` never undoes one.
Q12. The rows of a group commit's saves (Q5) are written by one statement compiled once for
    the engine's dialect and run by the driver's ``executemany``, each row a tuple made from
    the job when it is saved (``_sql_saves.py``): the same columns and values as
    ``UPDATE_JOB`` through SQLAlchemy, without its per-row parameter processing, which cost
    the event loop about 20 ms per 1,000 rows (a flusher pass of 1,000 running jobs).

The tables, and the conversion between a job and its row, are in ``_sql_tables.py``; the
statements of idempotency keys (Q7) in ``_sql_keys.py``, those of inputs (Q9) and batches
(Q10) in ``_sql_live.py``, the saves' row updates (Q12) in ``_sql_saves.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from jobcast._files import create_private
from jobcast.errors import InvalidInput, Unavailable
from jobcast.jobs.model import Job, JobState
from jobcast.stores import _sql_keys, _sql_live
from jobcast.stores._sql_saves import RowUpdates
from jobcast.stores._sql_tables import (
    MIGRATIONS,
    SCHEMA_VERSION,
    UPDATE_JOB,
    acks_table,
    job_batches_table,
    job_from_row,
    job_inputs_table,
    job_keys_table,
    job_responders_table,
    job_tags_table,
    jobs_table,
    meta_table,
    metadata,
    row_values,
    tag_rows,
)
from jobcast.stores.base import BatchCounts, JobPage, JobQuery, StoreStats

logger = logging.getLogger("jobcast.stores")

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
#: The advisory lock that serialises schema creation on PostgreSQL ("jobc").
_SCHEMA_LOCK = 0x6A6F6263


def _engine_options(url: sa.URL) -> tuple[sa.URL, str | None, dict[str, Any]]:
    """The engine's arguments (Q6): PostgreSQL gets a connect timeout, pre-ping (connections
    broken by a database restart are replaced, not handed out) and an optional ``?schema=``."""
    if not url.drivername.startswith("postgresql"):
        return url, None, {}
    schema = url.query.get("schema")
    if isinstance(schema, tuple):
        schema = schema[-1]
    if schema is not None and not _IDENTIFIER.fullmatch(schema):
        raise Unavailable(f"invalid schema name {schema!r} in the job store URL")
    url = url.difference_update_query(["schema"])
    connect_args: dict[str, Any] = {}
    if url.drivername == "postgresql+asyncpg":
        connect_args["timeout"] = 5
        if schema is not None:
            connect_args["server_settings"] = {"search_path": schema}
    else:
        connect_args["connect_timeout"] = 5
        if schema is not None:
            connect_args["options"] = f"-csearch_path={schema}"
    return url, schema, {"connect_args": connect_args, "pool_pre_ping": True}


class SQLJobStore:
    """A :class:`~jobcast.stores.base.JobStore` over any SQLAlchemy async URL."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine: AsyncEngine | None = None
        self._sqlite = url.startswith("sqlite")
        self._write_lock = asyncio.Lock()  # Q2
        self._inserts: list[dict[str, Any]] = []
        self._tags: list[dict[str, str]] = []
        #: The newest save of each job since the last transaction, as its row (Q5, Q12).
        self._updates: dict[str, Any] = {}
        self._row_updates: RowUpdates | None = None
        self._batch: asyncio.Future[None] | None = None
        self._flusher: asyncio.Task[None] | None = None
        self.stats = StoreStats()

    async def open(self) -> None:
        url, schema, options = _engine_options(sa.engine.make_url(self.url))
        if self._sqlite and url.database and url.database != ":memory:":
            create_private(Path(url.database))  # jobs can be private: 0600, as is the secret
        try:
            self._engine = engine = create_async_engine(url, hide_parameters=True, **options)  # Q4
        except (SQLAlchemyError, ImportError) as exc:
            raise Unavailable(f"cannot use the job store {url!r}: {exc}") from exc
        if self._sqlite:
            sa.event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        self._row_updates = RowUpdates(engine.dialect)  # Q12
        try:
            async with self._write() as conn:
                if not self._sqlite:  # Q6: instances starting together create it once
                    await conn.execute(sa.text(f"SELECT pg_advisory_xact_lock({_SCHEMA_LOCK})"))
                if schema is not None:  # Q6
                    await conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
                await conn.run_sync(metadata.create_all)
                await self._check_version(conn)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        if self._flusher is not None:
            with contextlib.suppress(Exception):
                await self._flusher
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    async def _check_version(self, conn: AsyncConnection) -> None:
        key = meta_table.c.key == "schema_version"
        found = (await conn.execute(sa.select(meta_table.c.value).where(key))).scalar()
        if found is None:  # a new database: create_all just made the current schema
            found = str(SCHEMA_VERSION)
            await conn.execute(meta_table.insert().values(key="schema_version", value=found))
        version = int(found)
        if version > SCHEMA_VERSION:
            raise Unavailable(
                f"the job store was written by a newer jobcast (schema {version}; this one "
                f"knows {SCHEMA_VERSION}): upgrade jobcast"
            )
        while version < SCHEMA_VERSION:
            for statement in MIGRATIONS[version]:
                await conn.execute(sa.text(statement))
            version += 1
            await conn.execute(meta_table.update().where(key).values(value=str(version)))

    @contextlib.asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        if self._engine is None:
            raise Unavailable("the job store is closed")
        try:
            async with self._engine.connect() as conn:
                yield conn
        except (SQLAlchemyError, OSError) as exc:  # Q4; OSError: a server that cannot be reached
            self.stats.read_errors += 1
            raise _unavailable(exc) from exc

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        if self._engine is None:
            raise Unavailable("the job store is closed")
        async with self._write_lock:
            try:
                async with self._engine.begin() as conn:
                    yield conn
            except (SQLAlchemyError, OSError) as exc:  # Q4
                self.stats.write_errors += 1
                raise _unavailable(exc) from exc

    async def create(self, job: Job) -> None:
        self._inserts.append({"id": job.id, **row_values(job)})
        self._tags.extend(tag_rows(job))  # Q8
        await self._commit_batch()

    async def create_keyed(
        self, job: Job, key: str, request_hash: str, retention: float
    ) -> tuple[str, str] | None:  # Q7
        async with self._write() as conn:
            earlier = await _sql_keys.create_keyed(
                conn, self._sqlite, job, key, request_hash, retention
            )
        if earlier is None:
            self.stats.transactions += 1
            self.stats.rows_written += 2
        return earlier

    async def claim_publish(
        self, subject: str, key: str, request_hash: str, retention: float
    ) -> tuple[str, list[str] | None] | None:  # Q7, for event publishes
        async with self._write() as conn:
            return await _sql_keys.claim_publish(
                conn, self._sqlite, subject, key, request_hash, retention
            )

    async def record_publish(self, subject: str, key: str, ids: list[str] | None) -> None:
        async with self._write() as conn:
            await _sql_keys.record_publish(conn, subject, key, ids)

    async def get(self, job_id: str) -> Job | None:
        async with self._read() as conn:
            result = await conn.execute(jobs_table.select().where(jobs_table.c.id == job_id))
            row = result.first()
        return None if row is None else job_from_row(row)

    async def save(self, job: Job) -> None:
        if self._row_updates is None:
            raise Unavailable("the job store is closed")
        # Q12: made now (the job may change before the commit); never the readers, which
        # only change_readers writes (base.JobStore.save)
        self._updates[job.id] = self._row_updates.params(job)
        await self._commit_batch()

    async def save_many(self, jobs: Sequence[Job]) -> None:
        """``save`` of each job, awaited once (Q5): a flusher pass's due jobs (flusher.F4).
        Not part of ``JobStore``: a caller uses it when the store's class has it (live.L8)."""
        if self._row_updates is None:
            raise Unavailable("the job store is closed")
        params = self._row_updates.params
        updates = self._updates
        for job in jobs:
            updates[job.id] = params(job)  # Q12
        await self._commit_batch()

    async def change_readers(
        self, job_id: str, *, add: str | None = None, remove: str | None = None, limit: int
    ) -> list[str] | None:
        column = jobs_table.c.readers
        # FOR UPDATE: PostgreSQL makes a concurrent change wait for this one (SQLite's
        # writes are serialised by the write lock, Q2), so no grant overwrites another.
        query = sa.select(column).where(jobs_table.c.id == job_id).with_for_update()
        async with self._write() as conn:
            found = (await conn.execute(query)).first()
            if found is None:
                return None
            readers: list[str] = orjson.loads(found[0]) if found[0] else []
            if add is not None and add not in readers:
                readers.append(add)
            readers = [reader for reader in readers if reader != remove]
            if len(readers) > limit:
                raise InvalidInput(f"a job may have at most {limit} readers")
            statement = UPDATE_JOB.values(readers=orjson.dumps(readers).decode())
            await conn.execute(statement, {"job_id": job_id})
        return readers

    async def change_responder(self, job_id: str, subject: str, *, may: bool) -> None:  # Q11
        t = job_responders_table
        async with self._write() as conn:
            mine = (t.c.job_id == job_id) & (t.c.subject == subject)
            await conn.execute(t.delete().where(mine))
            if may:
                await conn.execute(t.insert().values(job_id=job_id, subject=subject))

    async def is_responder(self, job_id: str, subject: str) -> bool:  # Q11
        t = job_responders_table
        query = sa.select(t.c.subject).where((t.c.job_id == job_id) & (t.c.subject == subject))
        async with self._read() as conn:
            return (await conn.execute(query)).first() is not None

    async def _commit_batch(self) -> None:  # Q5
        if self._engine is None:
            raise Unavailable("the job store is closed")
        if self._batch is None:
            self._batch = asyncio.get_running_loop().create_future()
        batch = self._batch
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_batches())
        await asyncio.shield(batch)

    async def _flush_batches(self) -> None:
        while self._batch is not None:
            inserts, updates, batch = self._inserts, self._updates, self._batch
            tags, self._tags = self._tags, []
            self._inserts, self._updates, self._batch = [], {}, None
            try:
                async with self._write() as conn:
                    if inserts:
                        await conn.execute(jobs_table.insert(), inserts)
                    if tags:
                        await conn.execute(job_tags_table.insert(), tags)
                    if updates and self._row_updates is not None:
                        await self._row_updates.run(conn, list(updates.values()))  # Q12
            except Unavailable as exc:
                batch.set_exception(exc)
            else:
                self.stats.transactions += 1
                self.stats.rows_written += len(inserts) + len(updates)
                batch.set_result(None)

    async def list_jobs(self, query: JobQuery) -> JobPage:
        c = jobs_table.c
        statement = jobs_table.select().order_by(c.id.desc()).limit(query.limit + 1)
        if query.owner is not None:
            statement = statement.where(c.owner == query.owner)
        if query.states:
            statement = statement.where(c.state.in_([s.value for s in query.states]))
        if query.kind is not None:
            statement = statement.where(c.kind == query.kind)
        if query.cursor is not None:
            statement = statement.where(c.id < query.cursor)
        if query.parent is not None:
            statement = statement.where(c.parent_id == query.parent)
        tagged = job_tags_table.c
        for tag in query.tags:  # Q8: every tag must match
            with_tag = sa.select(tagged.job_id).where(tagged.tag == tag)
            statement = statement.where(c.id.in_(with_tag))
        async with self._read() as conn:
            rows = (await conn.execute(statement)).all()
        jobs = [job_from_row(row) for row in rows[: query.limit]]
        more = len(rows) > query.limit
        return JobPage(jobs, jobs[-1].id if more and jobs else None)

    async def delete(self, job_id: str) -> bool:
        async with self._write() as conn:
            result = await conn.execute(jobs_table.delete().where(jobs_table.c.id == job_id))
            # its idempotency keys go with it (jobs/idempotency.I4)
            await conn.execute(job_keys_table.delete().where(job_keys_table.c.job_id == job_id))
            await conn.execute(job_tags_table.delete().where(job_tags_table.c.job_id == job_id))
            batches = job_batches_table
            await conn.execute(batches.delete().where(batches.c.batch_id == job_id))
            inputs = job_inputs_table
            await conn.execute(inputs.delete().where(inputs.c.job_id == job_id))
            responders = job_responders_table
            await conn.execute(responders.delete().where(responders.c.job_id == job_id))
        return bool(result.rowcount)

    async def put_input(self, job_id: str, name: str, value: Any, given_by: str) -> bool:  # Q9
        async with self._write() as conn:
            return await _sql_live.put_input(conn, self._sqlite, job_id, name, value, given_by)

    async def get_input(self, job_id: str, name: str) -> tuple[Any] | None:  # Q9
        async with self._read() as conn:
            return await _sql_live.get_input(conn, job_id, name)

    async def create_batch(self, parent: Job, children: list[Job]) -> None:  # Q10
        async with self._write() as conn:
            await _sql_live.create_batch(conn, parent, children)
        self.stats.transactions += 1
        self.stats.rows_written += 1 + len(children)

    async def end_child(
        self,
        batch_id: str,
        state: JobState,
        count: Callable[[Job, BatchCounts], bool | None],
        announce: Callable[[Job, bool], Awaitable[str | None]],
    ) -> tuple[Job, bool] | None:  # Q10
        async with self._write() as conn:
            return await _sql_live.end_child(conn, batch_id, state, count, announce)

    async def add_child(self, child: Job) -> None:  # Q10
        async with self._write() as conn:
            await _sql_live.add_child(conn, self._sqlite, child)
        self.stats.transactions += 1
        self.stats.rows_written += 1

    async def batch_counts(self, batch_id: str) -> BatchCounts | None:
        async with self._read() as conn:
            return await _sql_live.batch_counts(conn, batch_id)

    async def update_batch(
        self, batch_id: str, update: Callable[[Job, BatchCounts], Awaitable[Job | None]]
    ) -> bool:  # Q10
        async with self._write() as conn:
            return await _sql_live.update_batch(conn, batch_id, update)

    async def in_states(self, states: Collection[JobState], limit: int) -> list[Job]:
        c = jobs_table.c
        statement = (
            jobs_table.select()
            .where(c.state.in_([s.value for s in states]))
            .order_by(c.id)
            .limit(limit)
        )
        async with self._read() as conn:
            return [job_from_row(row) for row in (await conn.execute(statement)).all()]

    async def count_by_state(self) -> dict[JobState, int]:
        c = jobs_table.c  # one pass over the index on (state, id)
        statement = sa.select(c.state, sa.func.count()).group_by(c.state)
        async with self._read() as conn:
            rows = (await conn.execute(statement)).all()
        return {JobState(state): int(count) for state, count in rows}

    async def save_ack(self, subject: str, client_id: str, event_id: str) -> None:
        where = (acks_table.c.subject == subject) & (acks_table.c.client_id == client_id)
        values = {"event_id": event_id, "updated_at": time.time()}
        async with self._write() as conn:
            result = await conn.execute(acks_table.update().where(where).values(**values))
            if not result.rowcount:
                insert = acks_table.insert().values(subject=subject, client_id=client_id, **values)
                await conn.execute(insert)

    async def load_ack(self, subject: str, client_id: str) -> str | None:
        where = (acks_table.c.subject == subject) & (acks_table.c.client_id == client_id)
        async with self._read() as conn:
            value = (await conn.execute(sa.select(acks_table.c.event_id).where(where))).scalar()
        return None if value is None else str(value)


def _unavailable(exc: BaseException) -> Unavailable:
    """The client's side of a database error: no detail, which may quote data (Q4)."""
    summary = str(exc).partition("\n")[0]  # Q4: not the DETAIL or the statement below it
    logger.error("job store error: %s: %s", exc.__class__.__name__, summary)
    return Unavailable("the job store is unavailable; retry later")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # Q2
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()
