"""``python -m bench.metadata_rate``: running jobs that update their metadata in a loop.

Each of ``--jobs`` live jobs (the runner's ``LiveJob``, on the SQLite broker and job store, in
one process) updates its metadata ``--rate`` times a second for ``--seconds``, and one watcher
per job (a hub subscription on its topic) reads what arrives. Reported: updates made (and per
job per second), metadata events delivered (coalescing), store row writes per update, the delay
from the newest update a delivered event carries to its delivery (p50, p99), and the CPU the
updates themselves took (the driver's share of the core).

The driver is one task on a tick of ``1 / --rate`` seconds that updates every job once per
tick (an ``increment`` and a ``set`` of a timestamp, as a handler's ``ctx.metadata`` calls
would), then sleeps until the next tick. An earlier driver ran one task per job, each sleeping
``1 / rate``: 100,000 timer wake-ups a second at 1,000 jobs, which cost the core more than the
updates and the server side together, so the row measured the timers. A tick that runs late
(the core is busy) is not made up: the next one starts at once, so "updates made" says what
the process sustained, not what was asked.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import orjson

from jobcast.brokers import Retention
from jobcast.brokers.sqlite import SQLiteBroker
from jobcast.hub import Hub, HubOptions
from jobcast.jobs.live import LiveJob
from jobcast.jobs.metadata import MetadataBuffer
from jobcast.jobs.model import Job, JobState, job_topic, new_job_id
from jobcast.stores import open_store
from jobcast.subscription import Subscription
from jobcast.topics import TopicPattern


async def run(jobs: int, rate: float, seconds: float, data: Path) -> dict[str, float]:
    hub = Hub(SQLiteBroker(data / "events.db", Retention()), HubOptions(max_total=jobs + 10))
    await hub.start()
    store = open_store(f"sqlite+aiosqlite:///{data / 'jobs.db'}")
    await store.open()
    lives: list[LiveJob] = []
    for _ in range(jobs):
        job = Job(id=new_job_id(), kind="bench", owner="bench", state=JobState.RUNNING)
        await store.create(job)
        live = LiveJob(
            job,
            hub=hub,
            store=store,
            progress_interval=0.1,
            store_interval=0.25,
            max_event_bytes=65536,
        )
        live.start_pump()
        lives.append(live)
    delays: list[float] = []
    delivered = 0
    updates = 0
    stop = time.perf_counter() + seconds

    async def watch(subscription: Subscription) -> None:
        nonlocal delivered
        while True:
            await subscription.wait()
            now = time.perf_counter()
            for event in subscription.take():
                if event.type == "metadata":
                    delivered += 1
                    sent = orjson.loads(event.data_json)["metadata"].get("t")
                    if sent is not None:
                        delays.append(now - sent)

    def change(buffer: MetadataBuffer) -> None:
        buffer.increment("n")
        buffer.set("t", time.perf_counter())

    update_cpu = 0.0

    async def drive() -> None:
        nonlocal updates, update_cpu
        period = 1 / rate
        tick = time.perf_counter()
        while tick < stop:
            began = time.thread_time()
            for live in lives:
                live.change_metadata(change)
            update_cpu += time.thread_time() - began
            updates += len(lives)
            tick += period
            await asyncio.sleep(max(0.0, tick - time.perf_counter()))
            tick = max(tick, time.perf_counter() - period)  # a late tick is not made up

    watchers = []
    for live in lives:
        subscription, _ = await hub.subscribe((TopicPattern(job_topic(live.job.id), None),))
        watchers.append(asyncio.create_task(watch(subscription)))
    writes_before = store.stats.rows_written
    cpu_before = time.process_time()
    loop_cpu_before = time.thread_time()
    await drive()
    cpu = time.process_time() - cpu_before
    loop_cpu = time.thread_time() - loop_cpu_before
    for live in lives:
        await live.stop_pump()
    writes = store.stats.rows_written - writes_before
    for task in watchers:
        task.cancel()
    await store.close()
    await hub.close()
    delays.sort()
    return {
        "updates": updates,
        "per_job_second": updates / jobs / seconds,
        "update_us": 1e6 * update_cpu / max(1, updates),
        "cpu_share": cpu / seconds,
        "loop_share": loop_cpu / seconds,
        "events": delivered,
        "writes_per_update": writes / max(1, updates),
        "p50_ms": 1000 * statistics.median(delays) if delays else 0.0,
        "p99_ms": 1000 * delays[int(len(delays) * 0.99) - 1] if delays else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data:
        result = asyncio.run(run(args.jobs, args.rate, args.seconds, Path(data)))
    print(
        f"{args.jobs} jobs x {args.rate:g} updates/s x {args.seconds:g} s: "
        f"{result['updates']:.0f} updates ({result['per_job_second']:.1f} a job a second, "
        f"{result['update_us']:.1f} us of CPU each), "
        f"{result['events']:.0f} metadata events delivered, "
        f"{result['writes_per_update']:.4f} store writes per update, "
        f"update-to-receive p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, "
        f"process CPU {100 * result['cpu_share']:.0f}% of one core "
        f"(the event loop's thread {100 * result['loop_share']:.0f}%)"
    )


if __name__ == "__main__":
    main()
