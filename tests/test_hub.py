"""The hub: fan-out through the topic index, conflation, eviction, replay then live."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator

import pytest

from jobcast.brokers import Gap, Retention
from jobcast.brokers.memory import MemoryBroker
from jobcast.events import Event
from jobcast.hub import Hub, HubOptions
from jobcast.subscription import CloseReason, Subscription
from jobcast.topics import TopicPattern
from tests.services import (
    delete_prefix,
    drop_postgres_broker_tables,
    needs_services,
    postgres_broker_url,
    redis_url,
    unique_prefix,
)


@pytest.fixture(
    params=[
        "memory",
        pytest.param("redis", marks=needs_services),
        pytest.param("postgres", marks=needs_services),
    ]
)
async def hub(request: pytest.FixtureRequest) -> AsyncIterator[Hub]:
    """The hub over each broker: the in-process one and the shared Redis and PostgreSQL ones."""
    options = HubOptions(heartbeat_interval=0.05, max_pending=10)
    if request.param == "memory":
        hub = Hub(MemoryBroker(Retention()), options)
    elif request.param == "postgres":
        from jobcast.brokers.postgres import PostgresBroker

        url = postgres_broker_url()
        hub = Hub(PostgresBroker(url, Retention()), options)
    else:
        from jobcast.brokers.redis import RedisBroker

        prefix = unique_prefix()
        hub = Hub(RedisBroker(redis_url(prefix), Retention()), options)
    await hub.start()
    yield hub
    await hub.close()
    if request.param == "redis":
        delete_prefix(prefix)
    if request.param == "postgres":
        await drop_postgres_broker_tables(url)


def pats(*texts: str) -> tuple[TopicPattern, ...]:
    return tuple(TopicPattern.parse(t) for t in texts)


async def next_batch(subscription: Subscription) -> list[Event]:
    """What a connection's writer does: wait, take, and count it as written.

    Without ``mark_written`` a due heartbeat stays due, ``wait`` returns at once for ever and
    a loop over this never yields to the publisher (regression: the Redis run of the replay
    test spun until its event loop's cancelled timers filled the memory).
    """
    async with asyncio.timeout(2):
        await subscription.wait()
    events = subscription.take()
    subscription.mark_written()
    return events


async def test_exact_and_wildcard_subscribers_get_matching_events_once(hub: Hub) -> None:
    exact, _ = await hub.subscribe(pats("jobs/1"))
    wildcard, _ = await hub.subscribe(pats("jobs/*"))
    both, _ = await hub.subscribe(pats("jobs/*", "jobs/1", "*"))
    other, _ = await hub.subscribe(pats("videos/*"))
    await hub.publish("jobs/1", "t", 1)
    await hub.publish("jobs/2/sub", "t", 2)
    assert [e.data for e in await next_batch(exact)] == [1]
    assert [e.data for e in await next_batch(wildcard)] == [1, 2]
    assert [e.data for e in await next_batch(both)] == [1, 2]
    assert other.take() == []
    assert hub.stats.delivered == 5


async def test_unsubscribe_removes_every_index_entry(hub: Hub) -> None:
    subscription, _ = await hub.subscribe(pats("a", "b/*"))
    assert hub.subscriber_count == 1
    hub.unsubscribe(subscription)
    assert hub.subscriber_count == 0
    assert not hub._exact and not hub._prefixes


async def test_same_event_bytes_are_shared_by_every_subscriber(hub: Hub) -> None:
    first, _ = await hub.subscribe(pats("a"))
    second, _ = await hub.subscribe(pats("a"))
    await hub.publish("a", "t", {"x": 1})
    (a,), (b,) = await next_batch(first), await next_batch(second)
    assert a is b and a.sse_frame is b.sse_frame


async def test_pending_progress_is_conflated_but_other_events_are_kept(hub: Hub) -> None:
    subscription, _ = await hub.subscribe(pats("jobs/1", "jobs/2"))
    for pct in range(5):
        await hub.publish("jobs/1", "progress", pct)
        await hub.publish("jobs/2", "progress", pct * 10)
        await hub.publish("jobs/1", "log", pct)
    events = subscription.take()
    assert [(e.topic, e.type, e.data) for e in events if e.type == "progress"] == [
        ("jobs/1", "progress", 4),
        ("jobs/2", "progress", 40),
    ]
    assert [e.data for e in events if e.type == "log"] == [0, 1, 2, 3, 4]
    positions = [e.position for e in events]
    assert positions == sorted(positions)  # conflation never reorders ids
    assert hub.stats.conflated == 8


async def test_a_subscriber_that_falls_too_far_behind_is_evicted_alone(hub: Hub) -> None:
    slow, _ = await hub.subscribe(pats("a"))
    fast, _ = await hub.subscribe(pats("a"))
    received = []
    for n in range(25):
        await hub.publish("a", "t", n)
        received.extend(e.data for e in fast.take())
    assert received == list(range(25))
    assert slow.close_reason is CloseReason.SLOW
    assert slow.take() == []  # its buffer was released
    assert hub.stats.evicted == 1 and hub.subscriber_count == 1


async def test_allow_filter_is_asked_per_topic(hub: Hub) -> None:
    asked: list[str] = []

    def allow(topic: str) -> bool:
        asked.append(topic)
        return topic.endswith("mine")

    subscription, _ = await hub.subscribe(pats("jobs/*"), allow=allow)
    for topic in ["jobs/mine", "jobs/theirs", "jobs/mine", "jobs/theirs"]:
        await hub.publish(topic, "t", topic)
    assert [e.data for e in subscription.take()] == ["jobs/mine", "jobs/mine"]
    assert asked == ["jobs/mine", "jobs/theirs"]  # cached per topic


async def test_replay_then_live_has_no_gap_and_no_duplicate(hub: Hub) -> None:
    # about order, not eviction: a replay from Redis takes long enough for more than the
    # fixture's 10 live events to queue up behind it
    hub.options = dataclasses.replace(hub.options, max_pending=1000)
    first = await hub.publish("a", "t", 0)
    publishing = True

    async def publisher() -> None:
        n = 1
        while publishing:
            await hub.publish("a", "t", n)
            n += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(publisher())
    try:
        for _ in range(20):
            await asyncio.sleep(0)
        subscription, replay = await hub.subscribe(pats("a"), last_event_id=first.id)
        assert replay is not None and replay.gap is None
        seen = [e.data for e in replay.events]
        async with asyncio.timeout(20):
            while len(seen) < 200:
                seen.extend(e.data for e in await next_batch(subscription))
    finally:
        publishing = False
        await task
    assert seen[:200] == list(range(1, 201))


async def test_unknown_last_event_id_is_a_reset_at_the_head(hub: Hub) -> None:
    event = await hub.publish("a", "t", 0)
    _, replay = await hub.subscribe(pats("a"), last_event_id="not-an-id")
    assert replay is not None and replay.gap == Gap.UNKNOWN_ID
    assert str(replay.head) == event.id
    assert hub.stats.resets == {Gap.UNKNOWN_ID: 1}


async def test_heartbeat_is_requested_only_after_a_quiet_interval(hub: Hub) -> None:
    subscription, _ = await hub.subscribe(pats("a"))
    async with asyncio.timeout(2):
        await subscription.wait()
    assert subscription.heartbeat_due and subscription.take() == []
    subscription.mark_written()
    assert not subscription.heartbeat_due


async def test_drain_closes_every_subscription_and_refuses_new_ones(hub: Hub) -> None:
    subscription, _ = await hub.subscribe(pats("a"))
    hub.drain()
    assert subscription.close_reason is CloseReason.DRAIN
    assert hub.subscriber_count == 0
    with pytest.raises(Exception, match="shutting down"):
        await hub.subscribe(pats("a"))
    low, high = hub.options.drain_retry_ms
    assert all(low <= hub.drain_retry_ms() <= high for _ in range(50))


async def test_stream_deadlines_are_spread_over_the_last_tenth_of_the_limit() -> None:
    hub = Hub(MemoryBroker(Retention()), HubOptions(max_stream_seconds=100))
    await hub.start()
    try:
        before = time.time()
        deadlines = [(await hub.subscribe(pats("a")))[0].ends_at for _ in range(20)]
        after = time.time()
    finally:
        await hub.close()
    assert all(d is not None and before + 90 <= d <= after + 100 for d in deadlines)
    assert len(set(deadlines)) > 1  # clients that connected together do not return together
