"""Broker backends, chosen by URL: ``memory://``, ``sqlite:///path/events.db``, ``redis://``,
``postgresql://``."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from jobcast.brokers.base import Broker, Deliver, Gap, Replay, Retention
from jobcast.errors import InvalidInput
from jobcast.extras import require

__all__ = ["POSTGRES_SCHEMES", "Broker", "Deliver", "Gap", "Replay", "Retention", "open_broker"]

#: The URL schemes of the PostgreSQL broker (the store's SQLAlchemy spellings included).
POSTGRES_SCHEMES = ("postgresql", "postgres", "postgresql+asyncpg", "postgresql+psycopg")


def open_broker(url: str, retention: Retention) -> Broker:
    """Create the broker that ``url`` names (not started yet)."""
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        from jobcast.brokers.memory import MemoryBroker

        return MemoryBroker(retention)
    if scheme == "sqlite":
        from jobcast.brokers.sqlite import SQLiteBroker

        # SQLAlchemy's convention: sqlite:///relative/path, sqlite:////absolute/path
        return SQLiteBroker(Path(url.removeprefix("sqlite:///")), retention)
    if scheme.startswith(("redis", "rediss")):  # one server, Sentinel or Cluster
        require("redis", "redis", "the Redis broker")  # MissingExtra, not an ImportError
        from jobcast.brokers.redis import RedisBroker

        return RedisBroker(url, retention)
    if scheme in POSTGRES_SCHEMES:
        require("asyncpg", "postgres", "the PostgreSQL broker")  # MissingExtra, at once
        from jobcast.brokers.postgres import PostgresBroker

        return PostgresBroker(url, retention)
    raise InvalidInput(
        f"unsupported broker URL {url!r}: use memory://, sqlite:///path, redis://host:port/db,"
        " redis+sentinel://host:port,.../service/db or postgresql://user@host/db"
    )
