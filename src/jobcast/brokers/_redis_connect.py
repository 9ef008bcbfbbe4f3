"""Redis clients from jobcast's Redis URLs: one server, the primary that Sentinel names, or a
Cluster.

``redis://host:port/db`` (or ``rediss://``) is one server. ``redis+cluster://h1:p1,h2:p2``
(or ``rediss+cluster://``) is a Redis Cluster reached through any of those nodes; its keys
must then share a hash tag wherever one command or script touches several (the broker's
prefix is one tag: ``split_url``). ``redis+sentinel://h1:26379,h2:26379,
h3:26379/service/db`` (or ``rediss+sentinel://``) asks those sentinels for ``service``'s primary
and asks again after a failover: redis-py's Sentinel pool reconnects to the new primary when a
command fails on the old one. Every part of jobcast that uses Redis (broker, rate limits,
tickets, metrics) connects through here, so each speaks Sentinel alike.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast
from urllib.parse import unquote, urlsplit
from weakref import WeakSet

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import Connection
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

from jobcast.brokers.redis_urls import CLUSTER_SCHEMES, SENTINEL_SCHEMES


def _nodes(netloc: str, default_port: int) -> list[tuple[str, int]]:
    nodes = []
    for host in netloc.rsplit("@", 1)[-1].split(","):
        name, _, port = host.partition(":")
        nodes.append((name, int(port or default_port)))
    return nodes


def _sentinel(url: str, options: dict[str, Any]) -> tuple[Sentinel, str, dict[str, Any]]:
    parts = urlsplit(url)
    hosts = _nodes(parts.netloc, 26379)
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


class _Cluster(RedisCluster):
    """A Cluster client that closes every connection it opened.

    redis-py's client closes the nodes of its current map only: a node object made while the
    map was rebuilt after a failover, then dropped for the one it already had, kept its open
    connection, found later by the garbage collector. Each connection made for the map's
    nodes is remembered here (weakly), and ``aclose`` disconnects those still open."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.opened: WeakSet[Connection] = WeakSet()
        made = self.nodes_manager.connection_kwargs
        base: type[Connection] = made.get("connection_class", Connection)
        opened = self.opened

        class Remembered(base):  # type: ignore[valid-type,misc]
            def __init__(self, **kwargs: Any) -> None:
                super().__init__(**kwargs)
                opened.add(self)

        made["connection_class"] = Remembered

    async def aclose(self) -> None:
        await super().aclose()
        await asyncio.gather(*(c.disconnect() for c in list(self.opened)), return_exceptions=True)


def _cluster(url: str, options: dict[str, Any]) -> RedisCluster:
    parts = urlsplit(url)
    nodes = [ClusterNode(host, port) for host, port in _nodes(parts.netloc, 6379)]
    if parts.password is not None:
        options = {**options, "password": unquote(parts.password)}
    return _Cluster(startup_nodes=nodes, ssl=parts.scheme.startswith("rediss"), **options)


def client(url: str, **options: Any) -> aioredis.Redis:
    """A client for ``url`` (one server, Sentinel's primary, or a Cluster: its client speaks
    the same commands for keys in one slot, which is all jobcast sends it)."""
    if urlsplit(url).scheme in CLUSTER_SCHEMES:
        return cast(aioredis.Redis, _cluster(url, options))
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
