"""The processes' metrics snapshots in the Redis broker's Redis (``shared_metrics.py``, M2)."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from jobcast.brokers._redis_connect import client
from jobcast.brokers.redis import shielded
from jobcast.brokers.redis_urls import split_url


class RedisSnapshots:
    failures: tuple[type[BaseException], ...] = (RedisError, OSError)

    def __init__(self, broker_url: str) -> None:
        redis_url, prefix, _ = split_url(broker_url)  # the broker's key prefix
        self._index = f"{prefix}metrics:processes"
        self._prefix = f"{prefix}metrics:"
        self._redis: aioredis.Redis = client(redis_url, socket_timeout=2)

    async def put(self, process: str, snapshot: bytes, ttl_ms: int) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(self._prefix + process, snapshot, px=ttl_ms)
            pipe.sadd(self._index, process)
            pipe.pexpire(self._index, ttl_ms)
            await shielded(pipe.execute())

    async def read_all(self) -> dict[str, bytes]:
        return await shielded(self._read_all())

    async def _read_all(self) -> dict[str, bytes]:
        # redis-py types its commands for both clients; this one is the asyncio client
        members = await cast(Awaitable[set[bytes]], self._redis.smembers(self._index))
        names = sorted(name.decode() for name in members)
        if not names:
            return {}
        values = await self._redis.mget([self._prefix + name for name in names])
        gone = [name for name, value in zip(names, values, strict=True) if value is None]
        if gone:  # expired: a process that died (M2)
            await cast(Awaitable[int], self._redis.srem(self._index, *gone))
        return {name: value for name, value in zip(names, values, strict=True) if value is not None}

    async def forget(self, process: str) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._prefix + process)
            pipe.srem(self._index, process)
            await shielded(pipe.execute())

    async def close(self) -> None:
        await self._redis.aclose()
