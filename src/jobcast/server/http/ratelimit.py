"""Rate limits on the costly write paths: publishing, job submission, ticket and session issue.

Each action has one limit (``"1200/minute"``-style, from settings), counted separately per
subject and per client IP, in a moving window (the ``limits`` library). ``service`` and ``admin``
principals are not limited: they are the deployment's own backends (a worker reporting progress
publishes far more than any user should), and a limit sized for them would protect nothing.
Over the limit: 429 with ``Retry-After``. Counters live in memory, or in Redis when the broker
is Redis (shared_state). When that Redis cannot be reached, the request is refused with 503:
the limiter is the first thing a write meets, and its storage error is translated here, at its
seam, like the broker's.
"""

from __future__ import annotations

import time

from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError
from starlette.requests import HTTPConnection

from jobcast.auth import Principal
from jobcast.config import Settings
from jobcast.errors import RateLimited, Unavailable


class RateLimiter:
    def __init__(self, settings: Settings, storage: Storage | None = None) -> None:
        self._limiter = MovingWindowRateLimiter(storage or MemoryStorage())
        self._limits: dict[str, RateLimitItem] = {
            "publish": parse(settings.rate_limit_publish),
            "submit": parse(settings.rate_limit_submit),
            "ticket": parse(settings.rate_limit_ticket),
        }

    async def hit(
        self, action: str, principal: Principal | None, connection: HTTPConnection
    ) -> None:
        """Count one ``action``; raise :class:`RateLimited` when a limit is exceeded."""
        if principal is not None and principal.is_privileged:
            return
        subject = principal.subject if principal is not None else None
        item = self._limits[action]
        client = connection.client.host if connection.client else "unknown"
        for key in (f"ip:{client}", f"sub:{subject}" if subject else None):
            if key is None:
                continue
            try:
                allowed = await self._limiter.hit(item, action, key)
                stats = None if allowed else await self._limiter.get_window_stats(item, action, key)
            except StorageError as exc:  # storages are built with wrap_exceptions=True
                raise Unavailable(
                    f"cannot check the {action} rate limit: its Redis is unreachable; retry later"
                ) from exc
            if stats is not None:
                retry_after = max(1.0, stats.reset_time - time.time())
                raise RateLimited(
                    f"too many {action} requests ({item}); retry in {retry_after:.0f} s",
                    retry_after=retry_after,
                )
