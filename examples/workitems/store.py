"""Where work items are kept: a small SQLite table next to jobcast's data.

The store is the record; the hub only carries the news. An e-mail delivered twice (the same
``message_id``) yields the work item created the first time, and is broadcast only once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiosqlite
import orjson

SCHEMA = """
CREATE TABLE IF NOT EXISTS workitems (
    id TEXT PRIMARY KEY,
    message_id TEXT UNIQUE,
    item TEXT NOT NULL
)
"""


class WorkItemStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = await aiosqlite.connect(self.path)
        await self._db.execute("PRAGMA journal_mode=WAL")
        await self._db.execute(SCHEMA)
        await self._db.commit()

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("the work-item store is not open")
        return self._db

    async def add(
        self, item: dict[str, Any], message_id: str | None
    ) -> tuple[dict[str, Any], bool]:
        """Store ``item``; returns the stored item and whether it is new."""
        cursor = await self.db.execute(
            "INSERT INTO workitems (id, message_id, item) VALUES (?, ?, ?) "
            "ON CONFLICT (message_id) DO NOTHING",  # one statement: no race between two copies
            (item["id"], message_id, orjson.dumps(item).decode()),
        )
        await self.db.commit()
        if cursor.rowcount == 1:
            return item, True
        async with self.db.execute(
            "SELECT item FROM workitems WHERE message_id = ?", (message_id,)
        ) as rows:
            row = await rows.fetchone()
        if row is None:
            raise RuntimeError("a work item vanished while it was being stored")
        return orjson.loads(row[0]), False

    async def recent(self, limit: int) -> list[dict[str, Any]]:
        """The newest work items first."""
        async with self.db.execute(
            "SELECT item FROM workitems ORDER BY rowid DESC LIMIT ?", (limit,)
        ) as rows:
            return [orjson.loads(row[0]) for row in await rows.fetchall()]
