"""Broker backends, chosen by URL: ``memory://``, ``sqlite:///path/events.db``, ``redis://``."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from jobcast.brokers.base import Broker, Deliver, Gap, Replay, Retention
from jobcast.errors import InvalidInput

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
        try:
            from jobcast.brokers.redis import RedisBroker
        except ImportError as exc:  # the optional dependency
            raise InvalidInput(
                f"the Redis broker needs the 'redis' extra: pip install 'jobcast[redis]' ({exc})"
            ) from exc
        return RedisBroker(url, retention)
    raise InvalidInput(
        f"unsupported broker URL {url!r}: use memory://, sqlite:///path or redis://host:port/db"
    )
