"""``python -m bench.list_cost``: what a live job list costs to open and to hold, in-process.

Stores ``--jobs`` finished jobs with one tag, then opens ``--watchers`` live lists on that tag
(``plan_job_list``: the store query, the subscription, the view of up to ``--limit`` jobs, the
opening frames), as ``GET /api/jobs/live`` does before anything is written to a socket.
Reported: milliseconds per list opened, the memory each list holds (tracemalloc, after a
collection) and the size of its opening frames.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import tempfile
import time
import tracemalloc

from jobcast.config import Settings
from jobcast.jobs.model import Job, JobState, new_job_id
from jobcast.principal import Principal, Role
from jobcast.server.app import create_app
from jobcast.server.streams.job_list import JobFilter, JobListPlan, plan_job_list, sse_bytes

SECRET = "benchmark-secret-that-is-long-enough-for-hs256"


async def measure(jobs: int, watchers: int, limit: int) -> tuple[float, float, int]:
    app = create_app(
        Settings(_env_file=None, jwt_secret=SECRET, data_dir=tempfile.mkdtemp(prefix="jobcast-"))
    )
    jc = app.state.jobcast
    async with jc.lifespan(app):
        runtime = jc.runtime
        store = runtime.runner.store
        batch = []
        for index in range(jobs):
            job = Job(id=new_job_id(), kind="demo", owner="alice", tags=["bench"])
            job.state = JobState.SUCCEEDED
            job.metadata = {"index": index, "file": f"segment-{index}.wav"}
            batch.append(store.create(job))
            if len(batch) == 500:
                await asyncio.gather(*batch)
                batch = []
        await asyncio.gather(*batch)
        principal = Principal("alice", Role.USER)
        job_filter = JobFilter(("bench",))
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        began = time.perf_counter()
        plans: list[JobListPlan] = []
        sent = 0
        for _ in range(watchers):
            plan = await plan_job_list(runtime, principal, job_filter, limit)
            sent += len(sse_bytes(plan.view.opening()))
            plans.append(plan)
        elapsed = time.perf_counter() - began
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        for plan in plans:
            runtime.hub.unsubscribe(plan.subscription)
    return elapsed / watchers * 1000, held / watchers / 1024, sent // watchers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.list_cost", description=__doc__)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--watchers", type=int, default=100)
    parser.add_argument("--limit", type=int, default=1000)
    args = parser.parse_args(argv)
    ms, kib, sent = asyncio.run(measure(args.jobs, args.watchers, args.limit))
    print(
        f"{args.watchers} live lists of up to {args.limit} of {args.jobs} stored jobs: "
        f"{ms:.1f} ms to open each (query, subscription, view, opening), "
        f"{kib:.0f} KiB held each, {sent / 1024:.0f} KiB of opening frames each"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
