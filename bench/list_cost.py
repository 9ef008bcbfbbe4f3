"""``python -m bench.list_cost``: what a live job list costs to open and to hold, in-process.

Stores ``--jobs`` finished jobs with one tag, then opens ``--watchers`` live lists on that tag
(``plan_job_list``: the store query, the subscription, the view of up to ``--limit`` jobs, the
opening frames), as ``GET /api/jobs/live`` does before anything is written to a socket.
Reported: milliseconds per list opened (the first, which builds the shared snapshots, and the
mean of the others), the memory held (tracemalloc, after a collection): in all, per list
(the mean), and what each list after the first adds (its own share); the snapshots the lists
share; the size of a list's opening frames. Then every list is closed and the shared table
must be empty. Tracing allocations slows Python down about twice: ``--no-memory`` times the
opening without it (and reports no memory).
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


async def measure(jobs: int, watchers: int, limit: int, memory: bool) -> dict[str, float]:
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
        if memory:
            tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        plans: list[JobListPlan] = []
        sent = 0
        opened: list[float] = []
        first_held = 0
        for _ in range(watchers):
            began = time.perf_counter()
            plan = await plan_job_list(runtime, principal, job_filter, limit)
            sent += len(sse_bytes(plan.view.opening()))
            opened.append(time.perf_counter() - began)
            plans.append(plan)
            if len(plans) == 1:
                gc.collect()
                first_held = tracemalloc.get_traced_memory()[0] - before
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        shared = len(runtime.job_snapshots)
        for plan in plans:
            runtime.hub.unsubscribe(plan.subscription)
            plan.view.close()
        plans.clear()
        gc.collect()
        if len(runtime.job_snapshots):
            raise SystemExit(f"{len(runtime.job_snapshots)} snapshots still shared after closing")
    own = (held - first_held) / max(1, watchers - 1)
    return {
        "first_ms": opened[0] * 1000,
        "others_ms": 1000 * sum(opened[1:]) / max(1, len(opened) - 1),
        "held_mib": held / 2**20,
        "each_kib": held / watchers / 1024,
        "own_kib": own / 1024,
        "shared_mib": (first_held - own) / 2**20,
        "shared_jobs": shared,
        "sent_kib": sent / watchers / 1024,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.list_cost", description=__doc__)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--watchers", type=int, default=100)
    parser.add_argument("--limit", type=int, default=10_000)
    parser.add_argument("--no-memory", dest="memory", action="store_false")
    args = parser.parse_args(argv)
    r = asyncio.run(measure(args.jobs, args.watchers, args.limit, args.memory))
    if not args.memory:
        print(
            f"{args.watchers} live lists of up to {args.limit} of {args.jobs} stored jobs: "
            f"{r['first_ms']:.0f} ms to open the first, {r['others_ms']:.0f} ms each other "
            f"(query, subscription, view, opening; memory not traced)"
        )
        return 0
    print(
        f"{args.watchers} live lists of up to {args.limit} of {args.jobs} stored jobs: "
        f"{r['first_ms']:.0f} ms to open the first, {r['others_ms']:.0f} ms each other "
        f"(query, subscription, view, opening); {r['held_mib']:.1f} MiB held in all, "
        f"{r['each_kib']:.0f} KiB per list, {r['own_kib']:.0f} KiB of its own per list after "
        f"the first, {r['shared_mib']:.1f} MiB of {r['shared_jobs']:.0f} shared snapshots; "
        f"{r['sent_kib']:.0f} KiB of opening frames each; the shared table empty after closing"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
