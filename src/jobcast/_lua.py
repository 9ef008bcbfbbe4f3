"""Lua scripts on Redis, run by their digest and sent whole where the server lacks them: for
the broker and the output streams alike, on one server, Sentinel's primary or a Cluster."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError


class Script:
    """A Lua script run by its digest, and sent whole (``EVAL``) when the server has not seen
    it: a restarted server, or a replica just promoted, starts with an empty script cache.

    redis-py's own fallback loads the script with ``SCRIPT LOAD``, which a Cluster client sends
    to the primaries it knew: after a failover, not the promoted one, so every call failed
    until the client next rebuilt its map. ``EVAL`` is routed by the script's keys, like the
    call itself, and caches the script where they live."""

    __slots__ = ("_client", "_registered")

    def __init__(self, client: aioredis.Redis, source: str) -> None:
        self._client = client
        self._registered = client.register_script(source)

    async def __call__(
        self,
        keys: Sequence[str | bytes],
        args: Sequence[str | bytes | float],
        client: Pipeline | None = None,
    ) -> Any:
        if client is not None:  # a pipeline loads its scripts before it runs
            return await self._registered(keys=keys, args=args, client=client)
        # redis-py types these for its sync and async clients at once (a str, or an awaitable).
        redis: Any = self._client
        try:
            return await redis.evalsha(self._registered.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await redis.eval(self._registered.script, len(keys), *keys, *args)
