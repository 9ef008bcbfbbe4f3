"""The PostgreSQL broker beyond the shared contract: instances, lost history, outages, bursts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from jobcast.brokers import Gap, Retention
from jobcast.brokers.postgres import PostgresBroker
from jobcast.errors import Unavailable
from jobcast.events import Event, EventDraft, EventId
from jobcast.publisher import AsyncPublisher
from jobcast.topics import TopicPattern
from tests.scale_support import TcpProxy
from tests.services import (
    BROKER_TABLES,
    POSTGRES_URL,
    drop_postgres_broker,
    needs_services,
    postgres_broker_url,
)
from tests.support import eventually

pytestmark = needs_services
DSN = POSTGRES_URL.replace("postgresql+asyncpg", "postgresql")


@pytest.fixture
def url() -> Iterator[str]:
    url = postgres_broker_url()
    yield url
    drop_postgres_broker(url)


@pytest.fixture
def history_lost() -> asyncio.Event:
    return asyncio.Event()


@pytest.fixture
async def pair(
    url: str, history_lost: asyncio.Event
) -> AsyncIterator[tuple[PostgresBroker, PostgresBroker, list[Event]]]:
    """Two instances sharing one database; the second one's deliveries are recorded, and so
    is its report of a lost history."""
    first = PostgresBroker(url, Retention())
    second = PostgresBroker(url, Retention())
    seen: list[Event] = []
    await first.start(lambda events: None)
    await second.start(seen.extend, history_lost.set)
    yield first, second, seen
    await first.close()
    await second.close()


def draft(topic: str, type_: str = "t", n: int = 0) -> EventDraft:
    return EventDraft.create(topic, type_, {"n": n})


def pattern(text: str) -> list[TopicPattern]:
    return [TopicPattern.parse(text)]


async def test_events_published_on_either_instance_reach_the_other_in_order(
    pair: tuple[PostgresBroker, PostgresBroker, list[Event]],
) -> None:
    first, second, seen = pair
    assert first.epoch == second.epoch
    published: list[Event] = []
    for n in range(20):
        published += await (first if n % 2 else second).publish([draft("a", n=n)])
    # concurrent publishes on both: positions still arrive in order, none missing
    batches = await asyncio.gather(
        *((first if n % 2 else second).publish([draft("b", n=n)] * 3) for n in range(20))
    )
    published += [event for batch in batches for event in batch]
    await eventually(lambda: len(seen) == 80, 5)
    assert [e.position for e in seen] == list(range(1, 81))
    assert {e.id for e in seen} == {e.id for e in published}
    # the other instance answers a resume from an id this one delivered
    replay = await first.replay(pattern("a"), EventId(first.epoch, seen[4].position), 100)
    assert [e.data for e in replay.events] == [{"n": n} for n in range(5, 20)]


async def test_a_resume_on_an_instance_that_has_not_delivered_the_id_yet_is_not_reset(
    pair: tuple[PostgresBroker, PostgresBroker, list[Event]],
) -> None:
    first, second, _ = pair
    events = await first.publish([draft("a", n=n) for n in range(3)])
    # at once, before the notification may have reached the second instance
    replay = await second.replay(pattern("a"), EventId(second.epoch, events[1].position), 10)
    assert replay.gap is None and replay.head.position >= events[2].position
    assert [e.id for e in replay.events] == [events[2].id]


async def test_a_new_instance_sees_the_history_and_never_reuses_a_position(url: str) -> None:
    first = PostgresBroker(url, Retention())
    await first.start(lambda events: None)
    published = await first.publish([draft("a", n=n) for n in range(3)])
    await first.close()
    again = PostgresBroker(url, Retention())
    await again.start(lambda events: None)
    try:
        assert again.epoch == first.epoch
        replay = await again.replay(pattern("a"), EventId(first.epoch, published[0].position), 9)
        assert [e.data for e in replay.events] == [{"n": 1}, {"n": 2}]
        (later,) = await again.publish([draft("a")])
        assert later.position == published[-1].position + 1
    finally:
        await again.close()


async def test_dropped_tables_start_a_new_epoch_and_end_streams(
    pair: tuple[PostgresBroker, PostgresBroker, list[Event]],
    url: str,
    history_lost: asyncio.Event,
) -> None:
    first, second, seen = pair
    (old,) = await first.publish([draft("a")])
    prefix = first.location.prefix
    conn = await asyncpg.connect(DSN)
    try:  # what restoring an empty database does to us
        await conn.execute(
            f"DROP TABLE IF EXISTS {', '.join(f'{prefix}_{t}' for t in BROKER_TABLES)}"
        )
    finally:
        await conn.close()
    (new,) = await first.publish([draft("a", n=1)])
    assert new.epoch != old.epoch and new.position == 1
    await second.trim()  # what its maintenance tick does: it notices the other epoch
    await second._refresh()
    async with asyncio.timeout(5):
        await history_lost.wait()
    await eventually(lambda: seen[-1].id == new.id, 5)
    replay = await second.replay(pattern("a"), EventId.parse(old.id), 10)  # type: ignore[arg-type]
    assert replay.gap == Gap.HISTORY_LOST and replay.head.epoch == new.epoch


async def test_publishing_without_postgres_is_refused_not_acknowledged() -> None:
    broker = PostgresBroker("postgresql://postgres@127.0.0.1:1/test", Retention())
    with pytest.raises(Unavailable):
        await broker.start(lambda events: None)
    with pytest.raises(Unavailable):
        await broker.publish([draft("a")])
    await broker.close()


async def test_a_burst_of_concurrent_publishes_is_group_committed(url: str) -> None:
    broker = PostgresBroker(url, Retention())
    delivered: list[list[Event]] = []
    await broker.start(delivered.append)
    try:
        async with asyncio.timeout(10):
            await asyncio.gather(*(broker.publish([draft("burst", n=n)]) for n in range(500)))
        positions = [e.position for batch in delivered for e in batch]
        assert positions == list(range(1, 501))
        assert len(delivered) < 50  # about 256 a commit, not one commit per publish (G3)
    finally:
        await broker.close()


async def test_a_publisher_that_leaves_before_its_commit_answers_costs_the_others_nothing(
    url: str,
) -> None:
    # Publishes share a commit (G3); one caller cancelled while it waits (its client
    # left) must neither fail the others nor lose its own event, which was committed.
    broker = PostgresBroker(url, Retention())
    delivered: list[Event] = []
    await broker.start(delivered.extend)
    try:
        async with asyncio.timeout(10):
            publishes = [
                asyncio.create_task(broker.publish([draft("shared", n=n)])) for n in range(5)
            ]
            await asyncio.sleep(0)  # all five are queued in one commit
            publishes[2].cancel()
            done = await asyncio.gather(*publishes, return_exceptions=True)
            assert isinstance(done[2], asyncio.CancelledError)
            assert [e[0].data for i, e in enumerate(done) if i != 2] == [  # type: ignore[index]
                {"n": n} for n in (0, 1, 3, 4)
            ]
            await eventually(lambda: len(delivered) == 5)
        assert [e.data for e in delivered] == [{"n": n} for n in range(5)]
    finally:
        await broker.close()


async def test_a_publisher_outside_jobcast_reaches_running_instances(
    pair: tuple[PostgresBroker, PostgresBroker, list[Event]], url: str
) -> None:
    _, _, seen = pair
    async with AsyncPublisher(url) as publisher:
        event_id = await publisher.publish("news", "posted", {"n": 1})
    await eventually(lambda: [e.id for e in seen] == [event_id], 5)


async def test_events_trimmed_before_an_instance_delivered_them_end_its_streams(
    url: str, history_lost: asyncio.Event
) -> None:
    first = PostgresBroker(url, Retention(max_events_per_topic=2), trim_interval=3600)
    second = PostgresBroker(url, Retention(), trim_interval=3600)
    seen: list[Event] = []
    await first.start(lambda events: None)
    await second.start(seen.extend, history_lost.set)
    try:
        assert second._order is not None
        order, fetch, behind = second._order, second._fetch, asyncio.Event()

        async def slow_fetch(after: int, upto: int, limit: int) -> list[Event]:
            await behind.wait()  # the second instance is behind ...
            return await fetch(after, upto, limit)

        order._fetch = slow_fetch
        published = await first.publish([draft("a", n=n) for n in range(5)])
        await first.trim()  # ... while retention drops three events it never delivered
        behind.set()
        async with asyncio.timeout(5):
            await history_lost.wait()  # its streams end: clients resume and hear "trimmed"
        await eventually(lambda: len(seen) == 2, 5)
        assert [e.id for e in seen] == [e.id for e in published[3:]]
        replay = await second.replay(pattern("a"), EventId(second.epoch, 0), 10)
        assert replay.gap == Gap.TRIMMED
    finally:
        await first.close()
        await second.close()


async def test_a_database_outage_refuses_publishes_then_delivers_what_was_missed(
    url: str,
) -> None:
    proxy = TcpProxy(5432).start()
    cut_off = PostgresBroker(url.replace("127.0.0.1/", f"127.0.0.1:{proxy.port}/"), Retention())
    direct = PostgresBroker(url, Retention())
    seen: list[Event] = []
    await cut_off.start(seen.extend)
    await direct.start(lambda events: None)
    try:
        (before,) = await cut_off.publish([draft("a", n=0)])
        proxy.cut()  # the database goes away for this instance
        with pytest.raises(Unavailable):
            await cut_off.publish([draft("a", n=1)])  # refused, never acknowledged
        missed = await direct.publish([draft("a", n=n) for n in range(2, 5)])
        proxy.resume()
        # its LISTEN connection comes back and it reads what it missed, in order
        await eventually(lambda: len(seen) == 4, 10)
        assert [e.id for e in seen] == [before.id] + [e.id for e in missed]
        (after,) = await cut_off.publish([draft("a", n=5)])
        assert after.position == missed[-1].position + 1
    finally:
        await cut_off.close()
        await direct.close()
        proxy.stop()


async def test_two_instances_and_application_transactions_deliver_one_order(url: str) -> None:
    first, second = PostgresBroker(url, Retention()), PostgresBroker(url, Retention())
    seen: dict[str, list[Event]] = {"first": [], "second": []}
    await first.start(seen["first"].extend)
    await second.start(seen["second"].extend)
    app = await asyncpg.connect(DSN)
    try:

        async def burst(broker: PostgresBroker, topic: str) -> None:
            for n in range(30):
                await broker.publish([draft(topic, n=n)] * (1 + n % 3))

        async def transactions() -> None:
            for n in range(20):
                async with app.transaction():
                    await first.publish_in(app, [draft("app", n=n)])

        async with asyncio.timeout(20):
            await asyncio.gather(
                burst(first, "a"), burst(second, "b"), burst(first, "c"), transactions()
            )
        total = 3 * sum(1 + n % 3 for n in range(30)) + 20
        await eventually(lambda: all(len(events) == total for events in seen.values()), 10)
        # one order everywhere, every position once, nothing missing
        assert [e.id for e in seen["first"]] == [e.id for e in seen["second"]]
        assert [e.position for e in seen["first"]] == list(range(1, total + 1))
        app_events = [e.data["n"] for e in seen["first"] if e.topic == "app"]
        assert app_events == list(range(20))  # committed one after another: in commit order
    finally:
        await app.close()
        await first.close()
        await second.close()
