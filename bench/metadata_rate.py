"""``python -m bench.metadata_rate``: running jobs that update their metadata in a loop.

Each of ``--jobs`` live jobs (the runner's ``LiveJob``, on the SQLite broker and job store, in
one process) updates its metadata ``--rate`` times a second for ``--seconds``, and one watcher
per job (a hub subscription on its topic) reads what arrives. Reported: updates made, metadata
events delivered (coalescing), store row writes per update, and the delay from the newest
update a delivered event carries to its delivery (p50, p99).
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

    async def update(live: LiveJob) -> None:
        nonlocal updates
        period = 1 / rate
        index = 0

        def change(buffer: MetadataBuffer) -> None:
            buffer.increment("n")
            buffer.set("t", time.perf_counter())

        while time.perf_counter() < stop:
            live.change_metadata(change)
            updates += 1
            index += 1
            await asyncio.sleep(period)

    watchers = []
    for live in lives:
        subscription, _ = await hub.subscribe((TopicPattern(job_topic(live.job.id), None),))
        watchers.append(asyncio.create_task(watch(subscription)))
    writes_before = store.stats.rows_written
    await asyncio.gather(*(update(live) for live in lives))
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
        f"{result['updates']:.0f} updates, {result['events']:.0f} metadata events delivered, "
        f"{result['writes_per_update']:.4f} store writes per update, "
        f"update-to-receive p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms"
    )


if __name__ == "__main__":
    main()
