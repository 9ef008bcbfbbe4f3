"""``python -m bench.drain_cost``: what priorities and per-kind limits cost the embedded runner.

10,000 queued jobs of 3 kinds (trivial async handlers) are written to a fresh SQLite store, then
an embedded runner starts and drains them (``concurrency`` 8). Two rows: plain (every priority 0,
no limits) and scheduled (priorities spread over -100..100 and one kind limited to 2 running).
Each row reports jobs started per second, the process CPU per job for the whole drain (store,
events and scheduling together), and the scheduler's own CPU per job: ``JobSchedule`` pushing
and popping the same jobs in the same mode, alone.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from jobcast.brokers import Retention
from jobcast.brokers.sqlite import SQLiteBroker
from jobcast.hub import Hub
from jobcast.jobs import JobContext, Registry
from jobcast.jobs.model import Job, new_job_id
from jobcast.jobs.options import RunnerOptions
from jobcast.jobs.runner import EmbeddedRunner
from jobcast.jobs.schedule import JobSchedule
from jobcast.stores import open_store

KINDS = ("a", "b", "c")


def registry(limited: bool, count: int, all_started: asyncio.Event) -> Registry:
    registry = Registry()
    started = 0

    async def work(ctx: JobContext, params: dict[str, Any]) -> None:
        nonlocal started
        started += 1
        if started == count:
            all_started.set()

    for kind in KINDS:
        limit = 2 if limited and kind == "a" else None
        registry.handler(kind, concurrency=limit)(work)
    return registry


def plan(count: int, scheduled: bool, seed: int = 7) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    return [
        (KINDS[index % 3], rng.randint(-100, 100) if scheduled else 0) for index in range(count)
    ]


async def drain(count: int, scheduled: bool) -> tuple[float, float]:
    """Seconds and process CPU seconds until the runner has started all ``count`` jobs."""
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder)
        store = open_store(f"sqlite+aiosqlite:///{data / 'jobs.db'}")
        await store.open()
        jobs = [
            Job(id=new_job_id(), kind=kind, owner="bench", priority=priority)
            for kind, priority in plan(count, scheduled)
        ]
        for start in range(0, count, 500):
            await asyncio.gather(*(store.create(job) for job in jobs[start : start + 500]))
        hub = Hub(SQLiteBroker(data / "events.db", Retention()))
        options = RunnerOptions(uploads_dir=data / "uploads", concurrency=8, max_queued=count)
        all_started = asyncio.Event()
        runner = EmbeddedRunner(store, hub, registry(scheduled, count, all_started), options)
        await hub.start(observer=runner.access)
        wall, cpu = time.perf_counter(), time.process_time()
        await runner.start()
        try:
            await all_started.wait()
            return time.perf_counter() - wall, time.process_time() - cpu
        finally:
            await runner.close()
            await store.close()
            await hub.close()


def scheduler_cost(count: int, scheduled: bool) -> float:
    """Microseconds of CPU per job for ``JobSchedule`` alone, draining like the runner."""
    schedule = JobSchedule()
    jobs = plan(count, scheduled)
    running = {kind: 0 for kind in KINDS}
    kinds: dict[str, str] = {}
    started = time.process_time()
    for index, (kind, priority) in enumerate(jobs):
        schedule.push(str(index), priority, 0.0, kind)
        kinds[str(index)] = kind
    active: list[str] = []
    while len(schedule) or active:
        full = {"a"} if scheduled and running["a"] >= 2 else set()
        while len(active) < 8 and (job_id := schedule.pop(full)) is not None:
            active.append(job_id)
            running[kinds[job_id]] += 1
            full = {"a"} if scheduled and running["a"] >= 2 else set()
        ended = active.pop(0)
        running[kinds[ended]] -= 1
    return (time.process_time() - started) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=10_000)
    args = parser.parse_args()
    print(f"{args.jobs} queued jobs of 3 kinds, embedded runner, concurrency 8")
    print(f"{'row':<28} {'jobs/s':>8} {'CPU µs/job':>11} {'scheduler µs/job':>17}")
    for name, scheduled in (("plain", False), ("priorities + kind limit", True)):
        seconds, cpu = asyncio.run(drain(args.jobs, scheduled))
        own = scheduler_cost(args.jobs, scheduled)
        rate = args.jobs / seconds
        print(f"{name:<28} {rate:>8.0f} {cpu / args.jobs * 1e6:>11.0f} {own:>17.2f}")


if __name__ == "__main__":
    main()
