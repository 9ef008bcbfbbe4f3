"""``python -m bench.take_cost``: what taking a job by priority within the limits costs Redis.

Workers take jobs from ``jobs/ready_queue.py`` with one Lua script (priority, then submission
order, within the per-kind and per-owner limits). This queues ``--jobs`` jobs of 3 kinds (one
limited to 2 running) with priorities over -100..100, then drains them as workers would, 8 at
a time: take until nothing can be taken, end the oldest (its leases released), repeat. Two
rows: kind limits only, and with an owner limit of 2 where one owner has 90% of the jobs (its
jobs are parked and put back one at a time). It reports the Redis CPU per job of the take
script (``INFO commandstats`` of a redis-server of its own, unless ``--redis`` names one),
and the script calls per job (takes that found nothing included). SAQ's own dequeue, one
``BLMOVE``, costs a few microseconds; the lifecycle of a job on a worker costs tens of
milliseconds, so this is what the order and the limits add.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

from saq import Job as QueueJob
from saq.job import Status

from jobcast.jobs.model import new_job_id
from jobcast.jobs.ready_queue import job_meta
from jobcast.jobs.run_limits import RunLimits
from jobcast.jobs.worker_queue import TASK, open_queue

KINDS = {"limited": 2}


async def drain(redis_url: str, count: int, owner_limit: int | None) -> tuple[float, float]:
    """Redis CPU µs and script calls per job for draining ``count`` queued jobs."""
    name = f"take-cost-{uuid.uuid4().hex[:8]}"
    queue = open_queue(f"{redis_url}?queue={name}")
    await queue.connect()
    queue.limits, queue.owner_limit = KINDS, owner_limit
    limits = RunLimits(queue.redis, queue.prefix, 10, KINDS, owner_limit)
    rng = random.Random(16)
    try:
        for index in range(count):
            kind = ("limited", "a", "b")[index % 3]
            owner = "bob" if index % 10 == 0 else "ann"
            meta = job_meta(kind, owner, rng.randint(-100, 100), 0)
            await queue.enqueue(QueueJob(function=TASK, key=new_job_id(), meta=meta))
        before = await script_stats(queue.redis)
        running: list[QueueJob] = []
        taken = 0
        while taken < count or running:
            while len(running) < 8:
                taken_id, _ = await queue._take()
                if not taken_id:
                    break
                job = await queue._get_job_by_id(taken_id)
                assert job is not None
                running.append(job)
                taken += 1
            assert running, "nothing runs, yet nothing could be taken"
            job = running.pop(0)
            await queue.finish(job, Status.COMPLETE)  # as a worker ends it, then its leases
            await limits.release(job.meta["kind"], job.meta["owner"], job.id)
        after = await script_stats(queue.redis)
        return (after[0] - before[0]) / count, (after[1] - before[1]) / count
    finally:
        keys = [key async for key in queue.redis.scan_iter(match=f"saq:{name}*")]
        if keys:
            await queue.redis.delete(*keys)
        await queue.disconnect()


async def script_stats(redis: Any) -> tuple[float, float]:
    stats = (await redis.info("commandstats")).get("cmdstat_evalsha", {})
    return float(stats.get("usec", 0)), float(stats.get("calls", 0))


@contextlib.contextmanager
def private_redis() -> Iterator[str]:
    """A redis-server of our own: ``INFO commandstats`` counts the whole server's commands."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.02)  # waiting for a port: there is no event to wait on
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=5_000)
    parser.add_argument("--redis", help="a Redis URL; default: a redis-server of its own")
    args = parser.parse_args()
    print(f"{args.jobs} queued jobs of 3 kinds (one limited to 2), 8 taken at a time")
    print(f"{'row':<34} {'Redis CPU µs/job':>17} {'script calls/job':>17}")
    with contextlib.ExitStack() as stack:
        url = args.redis or stack.enter_context(private_redis())
        for name, owner_limit in (("kind limits", None), ("kind limits + owner limit 2", 2)):
            cpu, calls = asyncio.run(drain(url, args.jobs, owner_limit))
            print(f"{name:<34} {cpu:>17.1f} {calls:>17.2f}")


if __name__ == "__main__":
    main()
