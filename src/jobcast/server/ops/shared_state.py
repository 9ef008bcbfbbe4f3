"""State that must be shared by every instance: rate-limit counters and spent tickets.

One process keeps both in memory. When the broker is Redis (several instances; one server,
Sentinel's primary or a Cluster), both live in the same Redis, so a limit is a limit for the
whole deployment and a ticket opens one stream anywhere, once. Both then share one connection
pool (``deployment.py`` decides and owns it; a Cluster's client has one per node), closed when
the runtime stops, so no socket outlives the app that opened it. With the PostgreSQL broker
they live in its database instead (``postgres_state.py``).
"""

from __future__ import annotations

import heapq
import time
from typing import TYPE_CHECKING, Any, Protocol

from limits.aio.storage import Storage

from jobcast.errors import Unavailable

if TYPE_CHECKING:
    from redis.asyncio import ConnectionPool, Redis


class SpentTickets(Protocol):
    async def spend(self, ticket_id: str, expires_at: float) -> bool:
        """Record a ticket as used until ``expires_at``, when it can no longer be presented
        (its exp plus the clock-skew leeway); ``False`` if it already was."""
        ...


class MemorySpentTickets:
    def __init__(self) -> None:
        self._spent: set[str] = set()
        #: (expiry, ticket id), soonest first: pruning pops only what expired, so each record
        #: is pushed and popped once and a spend costs O(log n), however many are held.
        self._expiries: list[tuple[float, str]] = []

    async def spend(self, ticket_id: str, expires_at: float) -> bool:
        now, expiries = time.time(), self._expiries
        while expiries and expiries[0][0] <= now:  # forget tickets that can no longer be used
            self._spent.discard(heapq.heappop(expiries)[1])
        if ticket_id in self._spent:
            return False
        self._spent.add(ticket_id)
        heapq.heappush(expiries, (expires_at, ticket_id))
        return True

    def __len__(self) -> int:
        return len(self._spent)


class RedisSpentTickets:
    def __init__(self, url: str, client: Redis) -> None:
        """``client``: the deployment's (on its pool, or its Cluster client)."""
        from jobcast.brokers.redis_urls import split_url

        _, self._prefix, _ = split_url(url)
        self._redis = client

    async def spend(self, ticket_id: str, expires_at: float) -> bool:
        import redis.exceptions

        ttl = max(1, int(expires_at - time.time()) + 1)
        try:
            key = f"{self._prefix}ticket:{ticket_id}"
            return bool(await self._redis.set(key, 1, nx=True, ex=ttl))
        except redis.exceptions.RedisError as exc:
            raise Unavailable(f"cannot check the ticket: {exc}") from exc


def redis_rate_limit_storage(url: str, pool: ConnectionPool | None) -> Storage:
    """Rate-limit counters in the broker's Redis, through ``pool`` (a Cluster: its own)."""
    from limits.aio.storage import RedisClusterStorage, RedisStorage

    from jobcast.brokers.redis_urls import split_url

    redis_url, prefix, _ = split_url(url)
    if pool is None:  # redis+cluster://h1:p1,...: limits' Cluster client, one key per counter
        nodes = redis_url.split("://", 1)[1].split("/", 1)[0].split("?", 1)[0]
        return RedisClusterStorage(
            f"async+redis+cluster://{nodes}",
            implementation="redispy",
            key_prefix=f"{prefix}limits",
            wrap_exceptions=True,
        )
    # wrap_exceptions: every Redis failure arrives as limits' StorageError, which the rate
    # limiter turns into Unavailable (503) instead of letting redis' own errors become a 500.
    options: dict[str, Any] = {"connection_pool": pool}
    return RedisStorage(
        f"async+{redis_url}",
        implementation="redispy",
        key_prefix=f"{prefix}limits",
        wrap_exceptions=True,
        **options,
    )


async def close_rate_limit_storage(storage: Storage) -> None:
    """Close the Cluster client that limits made for its counters: limits has no close of its
    own, and the client's connections (one per node) outlived the server otherwise. On one
    server or Sentinel, the counters use jobcast's pool, which the deployment closes."""
    from limits.aio.storage import RedisClusterStorage

    client = getattr(getattr(storage, "bridge", None), "storage", None)  # limits' redis-py client
    if isinstance(storage, RedisClusterStorage) and client is not None:
        await client.aclose()
