"""Publishing inside an application's own PostgreSQL transaction (``postgres.py``, G6).

The events go into the broker's ``outbox`` table through the application's connection, with a
notification that PostgreSQL sends only at the commit. They exist if and only if that
transaction commits; an instance then moves them into the history, where they get their
positions. Takes an asyncpg connection, or a SQLAlchemy ``AsyncConnection`` or
``AsyncSession`` (any driver): whatever the application's transaction runs on.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Any

from jobcast.brokers._postgres_sql import Statements
from jobcast.errors import InvalidInput
from jobcast.events import EventDraft

_NAMES = {"$1": ":topics", "$2": ":types", "$3": ":datas", "$4": ":ts", "$5": ":channel"}


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
        from sqlalchemy import text

        statement = re.sub(r"\$[1-5]", lambda m: _NAMES[m.group()], sql.outbox_insert)
        await connection.execute(text(statement), dict(zip(_keys(), values, strict=True)))
    else:
        raise InvalidInput(
            "publish_in takes an asyncpg connection or a SQLAlchemy AsyncConnection or "
            f"AsyncSession, not {type(connection).__name__}"
        )


def _keys() -> list[str]:
    return [name[1:] for name in _NAMES.values()]
