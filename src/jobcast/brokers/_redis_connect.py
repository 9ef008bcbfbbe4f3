"""Redis clients from jobcast's Redis URLs: one server, or the primary that Sentinel names.

``redis://host:port/db`` (or ``rediss://``) is one server. ``redis+sentinel://h1:26379,h2:26379,
h3:26379/service/db`` (or ``rediss+sentinel://``) asks those sentinels for ``service``'s primary
and asks again after a failover: redis-py's Sentinel pool reconnects to the new primary when a
command fails on the old one. Every part of jobcast that uses Redis (broker, rate limits,
tickets, metrics) connects through here, so each speaks Sentinel alike.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
REDIS_SCHEMES = ("redis", "rediss", *SENTINEL_SCHEMES)


def _sentinel(url: str, options: dict[str, Any]) -> tuple[Sentinel, str, dict[str, Any]]:
    parts = urlsplit(url)
    hosts = []
    for host in parts.netloc.rsplit("@", 1)[-1].split(","):
        name, _, port = host.partition(":")
        hosts.append((name, int(port or 26379)))
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise ValueError(f"a Sentinel URL names its service: {url!r} (…/service/db)")
    kwargs: dict[str, Any] = {**options, "db": int(path[1]) if len(path) > 1 else 0}
    if parts.password is not None:
        kwargs["password"] = unquote(parts.password)
    if parts.scheme.startswith("rediss"):
        kwargs["ssl"] = True
    timeout = {"socket_timeout": options.get("socket_timeout", 2)}
    sentinel = Sentinel(hosts, sentinel_kwargs=timeout, **kwargs)  # type: ignore[no-untyped-call]
    return sentinel, path[0], kwargs


class _SentinelPrimary(aioredis.Redis):
    """Sentinel's primary; closing it closes the connections to the sentinels too."""

    managed_by: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        if self.managed_by is not None:
            await close_sentinels(self.managed_by)


async def close_sentinels(sentinel: Sentinel) -> None:
    for connection in sentinel.sentinels:
        await connection.aclose()


def client(url: str, **options: Any) -> aioredis.Redis:
    """A client for ``url`` (one server, or Sentinel's primary)."""
    if urlsplit(url).scheme in SENTINEL_SCHEMES:
        sentinel, service, _ = _sentinel(url, options)
        primary: _SentinelPrimary = sentinel.master_for(service, redis_class=_SentinelPrimary)
        primary.managed_by = sentinel
        return primary
    redis: aioredis.Redis = aioredis.from_url(url, **options)
    return redis


def pool(url: str, **options: Any) -> aioredis.ConnectionPool:
    """A connection pool for ``url`` (one server, or Sentinel's primary)."""
    if urlsplit(url).scheme in SENTINEL_SCHEMES:
        sentinel, service, kwargs = _sentinel(url, options)
        return SentinelConnectionPool(service, sentinel, **kwargs)  # type: ignore[no-untyped-call]
    return aioredis.ConnectionPool.from_url(url, **options)


async def close_pool(pool: aioredis.ConnectionPool) -> None:
    """Disconnect ``pool`` (and, for Sentinel's, its connections to the sentinels)."""
    await pool.disconnect()
    if isinstance(pool, SentinelConnectionPool):
        await close_sentinels(pool.sentinel_manager)
