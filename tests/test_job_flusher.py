"""The hub's job flusher (``jobs/flusher.py``): many live jobs' coalesced reports leave in one
publish per pass, each job's events in order and before its end, stored within the interval."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import orjson
import pytest

from jobcast.brokers import Retention
from jobcast.brokers.sqlite import SQLiteBroker
from jobcast.errors import Unavailable
from jobcast.events import Event, EventDraft
from jobcast.hub import Hub, HubOptions
from jobcast.jobs import flusher
from jobcast.jobs.flusher import Flusher
from jobcast.jobs.live import LiveJob
from jobcast.jobs.metadata import MetadataBuffer
from jobcast.jobs.model import Job, JobState, job_topic, new_job_id
from jobcast.stores import open_store
from jobcast.stores.base import JobStore
from jobcast.subscription import Subscription
from jobcast.topics import TopicPattern

INTERVAL = 0.1


@pytest.fixture(autouse=True, params=["slices", "a-slice-per-job"])
def slices(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test also runs with passes that give the loop back between any two jobs (F7), so
    whatever happens meanwhile (reports, ends, leaves, a store batch ending) meets a pass."""
    if request.param == "a-slice-per-job":
        monkeypatch.setattr(flusher, "SLICE", 0.0)


class CountingBroker(SQLiteBroker):
    """The SQLite broker, counting its publishes (one commit each) and refusing them while
    ``down``."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, Retention())
        self.publishes = 0
        self.down = False
        self.refused = asyncio.Event()

    async def publish(self, drafts: Sequence[EventDraft]) -> list[Event]:
        if self.down:
            self.refused.set()
            raise Unavailable("the broker is unavailable (a test outage)")
        self.publishes += 1
        return await super().publish(drafts)


@pytest.fixture
async def parts(tmp_path: Path) -> AsyncIterator[tuple[Hub, CountingBroker, JobStore]]:
    broker = CountingBroker(tmp_path / "events.db")
    # No conflation: the watchers see every event, so the tests see each job's whole order.
    hub = Hub(broker, HubOptions(max_total=1000, max_pending=10_000, conflate_types=frozenset()))
    await hub.start()
    store = open_store(f"sqlite+aiosqlite:///{tmp_path / 'jobs.db'}")
    await store.open()
    yield hub, broker, store
    await store.close()
    await hub.close()


async def running_jobs(hub: Hub, store: JobStore, count: int) -> list[LiveJob]:
    lives = []
    for _ in range(count):
        job = Job(id=new_job_id(), kind="test", owner="alice", state=JobState.RUNNING)
        await store.create(job)
        live = LiveJob(
            job,
            hub=hub,
            store=store,
            progress_interval=INTERVAL,
            store_interval=0.25,
            max_event_bytes=65536,
        )
        live.start_pump()
        lives.append(live)
    return lives


async def watch(hub: Hub, live: LiveJob) -> Subscription:
    subscription, _ = await hub.subscribe((TopicPattern(job_topic(live.job.id), None),))
    return subscription


async def events_until(subscription: Subscription, done: str) -> list[Event]:
    """The job's events until one of type ``done`` (or a progress event at 100)."""
    events: list[Event] = []
    async with asyncio.timeout(10):
        while True:
            await subscription.wait()
            for event in subscription.take():
                events.append(event)
                data = orjson.loads(event.data_json)
                if event.type == done and (done != "progress" or data["progress"] == 100):
                    return events


def seqs(events: list[Event]) -> list[int]:
    return [orjson.loads(event.data_json)["seq"] for event in events]


def increment(buffer: MetadataBuffer) -> None:
    buffer.increment("n")


async def test_two_hundred_jobs_reporting_publish_about_once_per_interval(
    parts: tuple[Hub, CountingBroker, JobStore],
) -> None:
    hub, broker, store = parts
    lives = await running_jobs(hub, store, 200)
    watchers = [await watch(hub, live) for live in lives]
    before = broker.publishes
    began = time.monotonic()
    for step in range(1, 51):  # every job reports 50 times over about half a second
        for live in lives:
            live.report_progress(step * 2, f"step {step}", "work")
            live.change_metadata(increment)
        await asyncio.sleep(0.01)
    received = [await events_until(watcher, "progress") for watcher in watchers]
    elapsed = time.monotonic() - began
    publishes = broker.publishes - before
    # One publish per pass, about one pass per interval, whatever the number of jobs (F2, F3);
    # a pump per job made 200 publishes per interval here.
    assert publishes <= elapsed / INTERVAL + 3, (publishes, elapsed)
    for events in received:
        assert seqs(events) == list(range(1, len(events) + 1))  # in order, none lost
        assert 2 <= len(events) <= 2 * (elapsed / INTERVAL + 2)  # coalesced (L2)
        assert events[-1].type == "progress"
        metadata = [orjson.loads(e.data_json) for e in events if e.type == "metadata"]
        assert metadata[-1]["metadata"] == {"n": 50}  # the last update
    # The store holds every job's last report within the store interval, nothing following.
    async with asyncio.timeout(5):
        while True:
            stored = [await store.get(live.job.id) for live in lives]
            if all(job is not None and job.progress == 100 for job in stored):
                break
            await asyncio.sleep(0.05)  # polling the store: it signals nothing
    for live in lives:
        await live.stop_pump()


async def test_a_jobs_end_comes_after_its_reports_even_mid_flush(
    parts: tuple[Hub, CountingBroker, JobStore],
) -> None:
    hub, _, store = parts
    lives = await running_jobs(hub, store, 50)
    watchers = [await watch(hub, live) for live in lives]
    for live in lives:
        live.report_event("note", {"n": 1})
        live.report_progress(40, None, None)
        live.change_metadata(increment)
    await asyncio.sleep(0)  # the flusher may be mid-pass for some of them now

    async def end(live: LiveJob) -> None:
        live.report_progress(90, None, None)
        await live.stop_pump()
        live.report_event("note", {"n": 2})  # after the pump stopped: flushed by the end (L3)
        await live.transition(JobState.SUCCEEDED, result={"ok": True})

    await asyncio.gather(*(end(live) for live in lives))
    for live, watcher in zip(lives, watchers, strict=True):
        events = await events_until(watcher, "succeeded")
        types = [event.type for event in events]
        assert seqs(events) == list(range(1, live.job.seq + 1))  # none lost, none overtaken
        assert types[-1] == "succeeded" and types.count("note") == 2
        assert types.index("note") < types.index("progress")
        assert orjson.loads(events[-1].data_json)["progress"] == 100
        stored = await store.get(live.job.id)
        assert stored is not None and stored.state is JobState.SUCCEEDED
        assert stored.metadata == {"n": 1}


async def test_reports_lost_to_a_broker_outage_are_counted_and_the_next_ones_go_out(
    parts: tuple[Hub, CountingBroker, JobStore],
) -> None:
    hub, broker, store = parts
    lives = await running_jobs(hub, store, 20)
    watchers = [await watch(hub, live) for live in lives]
    broker.down = True
    for live in lives:
        live.report_progress(30, None, None)
    async with asyncio.timeout(5):
        await broker.refused.wait()
    broker.down = False
    for live in lives:
        live.report_progress(100, None, None)
    for live, watcher in zip(lives, watchers, strict=True):
        events = await events_until(watcher, "progress")
        assert live.progress_unpublished == 1
        assert [orjson.loads(event.data_json)["progress"] for event in events] == [100]
        await live.stop_pump()


async def test_the_flusher_stops_with_its_last_job_and_starts_again(
    parts: tuple[Hub, CountingBroker, JobStore],
) -> None:
    hub, _, store = parts
    (first,) = await running_jobs(hub, store, 1)
    flusher = Flusher.of(hub)
    task = flusher._task
    assert task is not None and not task.done()
    await first.stop_pump()
    async with asyncio.timeout(5):
        await task  # no job left: nothing to close
    (second,) = await running_jobs(hub, store, 1)
    watcher = await watch(hub, second)
    second.report_progress(100, None, None)
    assert (await events_until(watcher, "progress"))[-1].type == "progress"
    await second.stop_pump()
