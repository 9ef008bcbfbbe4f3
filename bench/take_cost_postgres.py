"""``python -m bench.take_cost_postgres``: what taking a job by priority within the limits
costs on the PostgreSQL queue (``jobs/postgres_queue.py``).

The same drain as ``bench.take_cost`` (``--jobs`` jobs of 3 kinds, one limited to 2 running,
priorities over -100..100, taken 8 at a time; a second row with an owner limit of 2 and one
owner holding 90% of the jobs), on a schema of its own in ``--postgres``. It reports the wall
time of a take as seen by the worker (one transaction: the advisory lock, the pick, the update,
round trips included) and the takes per job (takes that found nothing included).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import time
import uuid

import asyncpg
from saq import Job as QueueJob
from saq.job import Status

from jobcast.jobs.model import new_job_id
from jobcast.jobs.postgres_queue import PostgresReadyQueue
from jobcast.jobs.ready_queue import job_meta
from jobcast.jobs.worker_queue import TASK, open_job_queue

KINDS = {"limited": 2}
POSTGRES = os.environ.get("JOBCAST_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1/test")


async def drain(url: str, count: int, owner_limit: int | None) -> tuple[float, float]:
    """Mean wall ms per take, and takes per job (takes that found nothing included)."""
    schema = f"take_cost_{uuid.uuid4().hex[:8]}"
    queue = open_job_queue(f"{url}?schema={schema}")
    assert isinstance(queue, PostgresReadyQueue)
    await queue.connect()
    queue.limits, queue.owner_limit = KINDS, owner_limit
    rng = random.Random(16)
    try:
        for index in range(count):
            kind = ("limited", "a", "b")[index % 3]
            owner = "bob" if index % 10 == 0 else "ann"
            meta = job_meta(kind, owner, rng.randint(-100, 100), 0)
            await queue.enqueue(QueueJob(function=TASK, key=new_job_id(), meta=meta))
        running: list[QueueJob] = []
        taken = takes = 0
        spent = 0.0
        while taken < count or running:
            while len(running) < 8:
                started = time.perf_counter()
                job, _ = await queue._take()
                spent += time.perf_counter() - started
                takes += 1
                if job is None:
                    break
                running.append(job)
                taken += 1
            assert running, "nothing runs, yet nothing could be taken"
            await queue.finish(running.pop(0), Status.COMPLETE)
        return spent / takes * 1000, takes / count
    finally:
        await queue.disconnect()
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=5_000)
    parser.add_argument("--postgres", default=POSTGRES)
    args = parser.parse_args()
    print(f"{args.jobs} queued jobs of 3 kinds (one limited to 2), 8 taken at a time")
    print(f"{'row':<34} {'ms per take':>12} {'takes/job':>10}")
    for name, owner_limit in (("kind limits", None), ("kind limits + owner limit 2", 2)):
        ms, takes = asyncio.run(drain(args.postgres, args.jobs, owner_limit))
        print(f"{name:<34} {ms:>12.2f} {takes:>10.2f}")


if __name__ == "__main__":
    main()
