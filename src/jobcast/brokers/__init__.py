"""Broker backends, chosen by URL: ``memory://``, ``sqlite:///path/events.db``, ``redis://``."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from jobcast.brokers.base import Broker, Deliver, Gap, Replay, Retention
from jobcast.errors import InvalidInput
from jobcast.extras import require

__all__ = ["Broker", "Deliver", "Gap", "Replay", "Retention", "open_broker"]


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
    if scheme in ("redis", "rediss"):
        require("redis", "redis", "the Redis broker")  # MissingExtra, not an ImportError
        from jobcast.brokers.redis import RedisBroker

        return RedisBroker(url, retention)
    raise InvalidInput(
        f"unsupported broker URL {url!r}: use memory://, sqlite:///path or redis://host:port/db"
    )
