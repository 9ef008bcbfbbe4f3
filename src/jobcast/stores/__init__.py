"""Job stores, chosen by URL: ``sqlite+aiosqlite:///path/jobs.db`` or ``postgresql://...``."""

from __future__ import annotations

from urllib.parse import urlsplit

from jobcast.errors import InvalidInput
from jobcast.extras import require
from jobcast.stores.base import JobPage, JobQuery, JobStore

__all__ = ["JobPage", "JobQuery", "JobStore", "open_store"]

_SQL_SCHEMES = ("sqlite+aiosqlite", "postgresql+asyncpg", "postgresql+psycopg")


def open_store(url: str) -> JobStore:
    """Create the store that ``url`` names (not opened yet)."""
    scheme = urlsplit(url).scheme
    if scheme in ("postgresql", "postgres"):  # the usual spelling: use the asyncio driver
        url = "postgresql+asyncpg" + url[len(scheme) :]
        scheme = "postgresql+asyncpg"
    if scheme == "postgresql+asyncpg":
        require("asyncpg", "postgres", "the PostgreSQL job store")  # MissingExtra, at once
    if scheme in _SQL_SCHEMES:
        from jobcast.stores.sql import SQLJobStore

        return SQLJobStore(url)
    raise InvalidInput(
        f"unsupported job store URL scheme {scheme!r}: use sqlite+aiosqlite:///path/jobs.db "
        "or postgresql://user@host/db"
    )
