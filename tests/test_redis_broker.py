"""The Redis broker beyond the shared contract: instances, retention, lost history, outages."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
import redis

from jobcast.brokers import Gap, Retention
from jobcast.brokers.redis import RedisBroker
from jobcast.errors import Unavailable
from jobcast.events import Event, EventDraft, EventId
from jobcast.topics import TopicPattern
from tests.services import REDIS_URL, needs_services, redis_prefix, redis_url
from tests.support import eventually

pytestmark = needs_services


@pytest.fixture
def prefix() -> Iterator[str]:
    yield from redis_prefix()


@pytest.fixture
def history_lost() -> asyncio.Event:
    return asyncio.Event()


@pytest.fixture
async def pair(
    prefix: str, history_lost: asyncio.Event
) -> AsyncIterator[tuple[RedisBroker, RedisBroker, list[Event]]]:
    """Two instances sharing one Redis; the second one's deliveries are recorded, and so is
    its report of a lost history."""
    first = RedisBroker(redis_url(prefix), Retention())
    second = RedisBroker(redis_url(prefix), Retention())
    seen: list[Event] = []
    await first.start(lambda events: None)
    await second.start(seen.extend, history_lost.set)
    yield first, second, seen
    await first.close()
    await second.close()


def draft(topic: str, type_: str = "t", n: int = 0) -> EventDraft:
    return EventDraft.create(topic, type_, {"n": n})


async def until(predicate: Callable[[], object], timeout: float = 5.0) -> None:
    await eventually(predicate, timeout)


async def test_events_published_on_one_instance_reach_the_other_in_order(
    pair: tuple[RedisBroker, RedisBroker, list[Event]],
) -> None:
    first, second, seen = pair
    assert first.epoch == second.epoch
    published = []
    for n in range(20):
        published += await (first if n % 2 else second).publish([draft("a", n=n)])
    await until(lambda: len(seen) == 20)
    assert [e.id for e in seen] == [e.id for e in published]
    # the other instance answers a resume from an id it delivered itself
    replay = await first.replay([TopicPattern.parse("a")], EventId.parse(seen[4].id), 100)  # type: ignore[arg-type]
    assert [e.id for e in replay.events] == [e.id for e in published[5:]]


async def test_job_topics_outlive_the_age_limit_until_their_grace_ends(prefix: str) -> None:
    broker = RedisBroker(
        redis_url(prefix),
        Retention(max_age_seconds=0.0001, job_grace_seconds=0.0),
        trim_interval=3600,
    )
    await broker.start(lambda events: None)
    try:
        job = await broker.publish([draft("jobs/1", "progress"), draft("news")])
        await asyncio.sleep(0.01)  # the age limit is 0.1 ms: let the events age past it
        await broker.trim()
        start = EventId(broker.epoch, 0)
        kept = await broker.replay([TopicPattern.parse("jobs/1")], start, 10)
        assert kept.gap is None and [e.id for e in kept.events] == [job[0].id]
        gone = await broker.replay([TopicPattern.parse("news")], start, 10)
        assert gone.gap == Gap.TRIMMED
        await broker.publish([draft("jobs/1", "succeeded")])
        await broker.trim()  # grace 0: the finished job's history goes
        after_end = await broker.replay([TopicPattern.parse("jobs/1")], start, 10)
        assert after_end.gap == Gap.TRIMMED
    finally:
        await broker.close()


async def test_a_flushed_history_starts_a_new_epoch_and_ends_streams(
    pair: tuple[RedisBroker, RedisBroker, list[Event]], prefix: str, history_lost: asyncio.Event
) -> None:
    first, second, seen = pair
    lost = history_lost
    (old,) = await first.publish([draft("a")])
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}*"))
    client.delete(*keys)  # what a Redis restart without persistence does to us
    client.close()
    (new,) = await first.publish([draft("a", n=1)])
    assert new.epoch != old.epoch
    async with asyncio.timeout(5):
        await lost.wait()
    await until(lambda: seen[-1].id == new.id)
    replay = await second.replay([TopicPattern.parse("a")], EventId.parse(old.id), 10)  # type: ignore[arg-type]
    assert replay.gap == Gap.HISTORY_LOST
    assert replay.head.epoch == new.epoch


async def test_publishing_without_redis_is_refused_not_acknowledged() -> None:
    broker = RedisBroker("redis://127.0.0.1:1/0", Retention())
    with pytest.raises(Unavailable):
        await broker.start(lambda events: None)
    with pytest.raises(Unavailable, match="unavailable"):
        await broker.publish([draft("a")])
    await broker.close()


@pytest.mark.parametrize("pattern", ["a", "*"])
async def test_a_trim_during_a_replay_is_a_reset_not_a_silent_gap(
    prefix: str, pattern: str
) -> None:
    # Regression: replay read the trim marks before the history, so events trimmed between the
    # two reads were missing from the replay with no reset.
    broker = RedisBroker(redis_url(prefix), Retention(max_events_per_topic=5))
    await broker.start(lambda events: None)
    try:
        events = await broker.publish([draft("a", n=n) for n in range(5)])
        read = broker._redis.xrange

        async def trim_first(*args: object, **kwargs: object) -> object:
            await broker.publish([draft("a", n=n) for n in range(5, 10)])  # trims all of the 5
            return await read(*args, **kwargs)  # type: ignore[arg-type]

        broker._redis.xrange = trim_first  # type: ignore[method-assign]
        after = EventId(broker.epoch, events[0].position)
        replay = await broker.replay([TopicPattern.parse(pattern)], after, 100)
        assert (replay.gap, replay.events) == (Gap.TRIMMED, [])
    finally:
        await broker.close()


async def test_a_publish_cancelled_as_its_delivery_arrives_is_cancelled(prefix: str) -> None:
    # Regression: the wait for this instance's own delivery (X2) used asyncio.wait_for, which on
    # Python 3.11 returns normally when its caller is cancelled just as the wait ends. A job's
    # progress pump stopped at that moment kept running, so its job never ended (about 1 job
    # in 50 with the Redis broker, under load).
    broker = RedisBroker(redis_url(prefix), Retention())
    await broker.start(lambda events: None)
    try:
        target = broker.head.position + 1_000_000  # a position the loop has not delivered
        waiting = asyncio.create_task(broker._catch_up(target))
        for _ in range(3):
            await asyncio.sleep(0)  # the task is now waiting for the delivery
        broker._delivered = target  # the delivery arrives ...
        broker._caught_up.set()
        waiting.cancel()  # ... in the same turn as the cancellation
        with pytest.raises(asyncio.CancelledError):
            async with asyncio.timeout(5):
                await waiting
    finally:
        await broker.close()
