"""Publishing inside an application's own PostgreSQL transaction (``postgres.py``, G6).

The events go into the broker's ``outbox`` table through the application's connection, with a
notification that PostgreSQL sends only at the commit. They exist if and only if that
transaction commits; an instance then moves them into the history, where they get their
positions. Takes an asyncpg connection, or a SQLAlchemy ``AsyncConnection`` or
``AsyncSession``: whatever the application's transaction runs on. SQLAlchemy's are driven
through ``exec_driver_sql`` in their driver's parameter style, so this module (which the
publishers load) imports no SQLAlchemy.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Any

from jobcast.brokers._postgres_sql import Statements
from jobcast.errors import InvalidInput
from jobcast.events import EventDraft

_KEYS = ("topics", "types", "datas", "ts", "channel")
_PARAMETER = re.compile(r"\$([1-5])")


async def write_outbox(connection: Any, sql: Statements, drafts: Sequence[EventDraft]) -> None:
    """Insert ``drafts`` into the outbox within ``connection``'s current transaction."""
    values = (
        [d.topic for d in drafts],
        [d.type for d in drafts],
        [d.data_json for d in drafts],
        time.time(),
        sql.outbox_channel,
    )
    module = type(connection).__module__
    if module.startswith("asyncpg"):
        await connection.execute(sql.outbox_insert, *values)
    elif module.startswith("sqlalchemy"):
        await _through_sqlalchemy(connection, sql.outbox_insert, values)
    else:
        raise InvalidInput(
            "publish_in takes an asyncpg connection or a SQLAlchemy AsyncConnection or "
            f"AsyncSession, not {type(connection).__name__}"
        )


async def _through_sqlalchemy(connection: Any, statement: str, values: tuple[Any, ...]) -> None:
    if not hasattr(connection, "exec_driver_sql"):  # an AsyncSession: its transaction's connection
        connection = await connection.connection()
    style = connection.dialect.paramstyle
    params: tuple[Any, ...] | dict[str, Any]
    if style in ("numeric_dollar", "numeric"):  # asyncpg
        mark = "$" if style == "numeric_dollar" else ":"
        statement, params = _PARAMETER.sub(lambda m: mark + m[1], statement), values
    elif style == "pyformat":  # psycopg
        statement = _PARAMETER.sub(lambda m: f"%({_KEYS[int(m[1]) - 1]})s", statement)
        params = dict(zip(_KEYS, values, strict=True))
    elif style == "format":
        statement, params = _PARAMETER.sub("%s", statement), values
    else:
        raise InvalidInput(f"publish_in cannot drive a {style!r} database driver")
    await connection.exec_driver_sql(statement, params)
