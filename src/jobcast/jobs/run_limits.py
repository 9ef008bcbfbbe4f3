"""Per-kind and per-owner concurrency limits across ``jobcast worker`` processes: leases in
Redis.

The embedded runner counts its own running jobs (``runner.D3``); workers on many machines share
the counts through the queue's Redis. The queue takes these leases as it hands a job out
(``ready_queue.Q3``); a worker holds them while the job runs and gives them back after.

Decisions (cited as N1..N4):

N1. A kind's running jobs are the members of one sorted set (score: when the lease lapses), and
    so are an owner's (``JOBCAST_JOB_OWNER_CONCURRENCY``). One Lua script drops lapsed members
    and adds the job to every set that applies only while each has fewer than its limit:
    Redis runs it atomically, so the limits hold across every worker.
N2. A lease lasts ``LEASE_BEATS`` heartbeats and is renewed with each of the job's heartbeats
    (worker.K1); a worker that dies stops renewing it, so its lease lapses and never keeps a
    slot for good.
N3. A job handed out whose lease lapsed meanwhile and was taken by another (a worker stalled
    for three heartbeats) goes back to SAQ with a short delay and stays ``queued`` in the
    store; the wait is not an attempt (the worker raises SAQ's retry budget by one).
N4. Releasing a lease pushes a token on the queue's wake list (``ready_queue.Q5``): a job that
    waited for that slot is taken at once, not at the next poll.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from jobcast.jobs.ready_queue import WAKE_MAX

#: A lease outlives this many missed heartbeats (N2).
LEASE_BEATS = 3
#: Seconds a job whose slot was taken waits before a worker tries it again (N3).
FULL_WAIT = 0.5

# KEYS: the lease sets. ARGV: now, job id, lease end, then each set's limit.
_ACQUIRE = """
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', ARGV[1])
  if not redis.call('ZSCORE', key, ARGV[2])
     and redis.call('ZCARD', key) >= tonumber(ARGV[3 + i]) then
    return 0
  end
end
for _, key in ipairs(KEYS) do redis.call('ZADD', key, ARGV[3], ARGV[2]) end
return 1
"""


class RunLimits:
    """Leases on the running slots of limited kinds and owners (N1), in the queue's Redis;
    ``prefix`` is the queue's (``saq:{name}:``), whose keys the queue's take script shares."""

    def __init__(
        self,
        redis: Any,
        prefix: str,
        heartbeat: float,
        kinds: Mapping[str, int],
        owner_limit: int | None,
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.lease = heartbeat * LEASE_BEATS
        self.kinds = kinds
        self.owner_limit = owner_limit

    def _slots(self, kind: str, owner: str) -> list[tuple[str, int]]:
        slots = []
        limit = self.kinds.get(kind)
        if limit is not None:
            slots.append((f"{self.prefix}kind-limit:{kind}", limit))
        if self.owner_limit is not None and owner:
            slots.append((f"{self.prefix}owner-limit:{owner}", self.owner_limit))
        return slots

    def limited(self, kind: str, owner: str) -> bool:
        return bool(self._slots(kind, owner))

    async def acquire(self, kind: str, owner: str, job_id: str) -> bool:
        """Hold a running slot of ``kind`` and of ``owner`` for ``job_id`` (or keep the ones
        the queue took for it); False when one of them is full."""
        slots = self._slots(kind, owner)
        if not slots:
            return True
        now = time.time()
        args = [str(now), job_id, str(now + self.lease), *(str(limit) for _, limit in slots)]
        taken = await self.redis.eval(_ACQUIRE, len(slots), *(key for key, _ in slots), *args)
        return bool(taken)

    async def renew(self, kind: str, owner: str, job_id: str) -> None:
        """Push the leases' end out again (N2); called with the job's heartbeat."""
        until = time.time() + self.lease
        for key, _ in self._slots(kind, owner):
            await self.redis.zadd(key, {job_id: until}, xx=True)

    async def release(self, kind: str, owner: str, job_id: str) -> None:
        """Give the slots back, and wake a worker for the job that waited for one (N4)."""
        slots = self._slots(kind, owner)
        if not slots:
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            for key, _ in slots:
                pipe.zrem(key, job_id)
            pipe.rpush(f"{self.prefix}wake", 1)
            pipe.ltrim(f"{self.prefix}wake", -WAKE_MAX, -1)
            await pipe.execute()
