"""Per-kind concurrency limits across ``jobcast worker`` processes: leases in Redis.

The embedded runner counts its own running jobs (``runner.D3``); workers on many machines share
the count through the queue's Redis.

Decisions (cited as N1..N3):

N1. A kind's running jobs are the members of one sorted set (score: when the lease lapses).
    One Lua script drops lapsed members and adds the job only while fewer than the limit
    remain: Redis runs it atomically, so the limit holds across every worker.
N2. A lease lasts ``LEASE_BEATS`` heartbeats and is renewed with each of the job's heartbeats
    (worker.K1); a worker that dies stops renewing it, so its lease lapses and never keeps a
    kind's slot for good.
N3. A job whose kind is full goes back to SAQ with a short delay and stays ``queued`` in the
    store; the wait is not an attempt (the worker raises SAQ's retry budget by one).
"""

from __future__ import annotations

import time
from typing import Any

#: A lease outlives this many missed heartbeats (N2).
LEASE_BEATS = 3
#: Seconds a job whose kind is full waits before a worker tries it again (N3).
FULL_WAIT = 0.5

_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZSCORE', KEYS[1], ARGV[3]) then
  redis.call('ZADD', KEYS[1], ARGV[4], ARGV[3])
  return 1
end
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], ARGV[4], ARGV[3])
  return 1
end
return 0
"""


class KindLimits:
    """Leases on the running slots of limited kinds (N1), in the SAQ queue's Redis."""

    def __init__(self, redis: Any, namespace: str, heartbeat: float) -> None:
        self.redis = redis
        self.namespace = namespace
        self.lease = heartbeat * LEASE_BEATS

    def _key(self, kind: str) -> str:
        return f"{self.namespace}:{kind}"

    async def acquire(self, kind: str, job_id: str, limit: int) -> bool:
        """Take a running slot of ``kind`` for ``job_id``; False when all ``limit`` are taken."""
        now = time.time()
        keys_and_args = [
            self._key(kind),
            str(now),
            str(limit),
            job_id,
            str(now + self.lease),
        ]
        taken = await self.redis.eval(_ACQUIRE, 1, *keys_and_args)
        return bool(taken)

    async def renew(self, kind: str, job_id: str) -> None:
        """Push the lease's end out again (N2); called with the job's heartbeat."""
        await self.redis.zadd(self._key(kind), {job_id: time.time() + self.lease}, xx=True)

    async def release(self, kind: str, job_id: str) -> None:
        await self.redis.zrem(self._key(kind), job_id)
