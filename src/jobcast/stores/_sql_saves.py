"""The group commit's row updates (``sql.py`` Q5, Q12): one statement, compiled once, run by
the driver for every saved job of a transaction.

A flusher pass of a thousand running jobs saves a thousand rows at once. Through
``conn.execute(UPDATE_JOB, rows)`` SQLAlchemy builds and processes every row's 32 parameters
one by one (``construct_params``): about 20 ms of the event loop's CPU for 1,000 rows, on
top of a dict per row. Here the statement is compiled once for the engine's dialect, each row
is a tuple (or a dict, for a named paramstyle) made straight from the job, with the type's
bind processors applied where the dialect has any, and the rows go to the driver's
``executemany`` as they are: about 4 ms.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection

from jobcast.jobs.model import Job
from jobcast.stores._sql_tables import UPDATE_JOB, row_values

#: Written by ``change_readers`` only (base.JobStore.save): never by a save.
_NOT_SAVED = frozenset({"readers"})


class RowUpdates:
    """The update of a saved job's row, compiled for one dialect (Q12)."""

    def __init__(self, dialect: Dialect) -> None:
        columns = [
            name for name in row_values(Job(id="", kind="", owner="")) if name not in _NOT_SAVED
        ]
        statement = UPDATE_JOB.values({name: sa.bindparam(name) for name in columns})
        compiled = statement.compile(dialect=dialect)
        self.sql = str(compiled)
        names = list(compiled.positiontup or ()) if compiled.positional else [*columns, "job_id"]
        if set(names) != {*columns, "job_id"}:
            raise RuntimeError("the compiled job row update does not bind every saved column")
        self._names = names
        self._positional = compiled.positional
        self._pick = operator.itemgetter(*names)
        #: (position, processor) of the columns whose type converts values for the driver.
        self._processors: list[tuple[int, Callable[[Any], Any]]] = []
        for position, name in enumerate(names):
            bind = compiled.binds[name]
            processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if processor is not None:
                self._processors.append((position, processor))

    def params(self, job: Job) -> tuple[Any, ...] | dict[str, Any]:
        """``job``'s row as the driver takes it (made when it is saved: the job may change)."""
        values = row_values(job)
        values["job_id"] = job.id
        row: tuple[Any, ...] = self._pick(values)
        if self._processors:
            converted = list(row)
            for position, processor in self._processors:
                converted[position] = processor(converted[position])
            row = tuple(converted)
        return row if self._positional else dict(zip(self._names, row, strict=True))

    async def run(self, conn: AsyncConnection, rows: list[Any]) -> None:
        """Update every row in one ``executemany``."""
        await conn.exec_driver_sql(self.sql, rows)
