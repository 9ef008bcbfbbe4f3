"""One contract, every broker: ids, history, replay and the gap reasons."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jobcast.brokers import Gap, Retention
from jobcast.brokers.base import Broker
from jobcast.brokers.memory import MemoryBroker
from jobcast.brokers.sqlite import INLINE_EVENTS, SQLiteBroker
from jobcast.errors import Unavailable
from jobcast.events import Event, EventDraft, EventId
from jobcast.topics import TopicPattern
from tests.services import (
    delete_prefix,
    drop_postgres_broker,
    needs_services,
    postgres_broker_url,
    redis_url,
    unique_prefix,
)

BrokerFactory = Callable[[Retention], Broker]


@pytest.fixture(
    params=[
        "memory",
        "sqlite",
        pytest.param("redis", marks=needs_services),
        pytest.param("postgres", marks=needs_services),
    ],
)
def make_broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BrokerFactory]:
    if request.param == "memory":
        yield lambda retention: MemoryBroker(retention)
    elif request.param == "sqlite":
        yield lambda retention: SQLiteBroker(tmp_path / "events.db", retention)
    elif request.param == "postgres":
        from jobcast.brokers.postgres import PostgresBroker

        url = postgres_broker_url()
        yield lambda retention: PostgresBroker(url, retention)
        drop_postgres_broker(url)
    else:
        from jobcast.brokers.redis import RedisBroker

        prefix = unique_prefix()
        yield lambda retention: RedisBroker(redis_url(prefix), retention)
        delete_prefix(prefix)


@pytest.fixture
async def started(make_broker: BrokerFactory) -> AsyncIterator[tuple[Broker, list[Event]]]:
    delivered: list[Event] = []
    broker = make_broker(Retention(max_events_per_topic=5))
    await broker.start(delivered.extend)
    yield broker, delivered
    await broker.close()


def drafts(topic: str, count: int, type_: str = "t") -> list[EventDraft]:
    return [EventDraft.create(topic, type_, {"n": n}) for n in range(count)]


def patterns(*texts: str) -> list[TopicPattern]:
    return [TopicPattern.parse(text) for text in texts]


async def trim(broker: Broker) -> None:
    trim = getattr(broker, "trim", None)
    if trim is not None:
        await trim()


async def test_positions_increase_and_every_event_is_delivered(
    started: tuple[Broker, list[Event]],
) -> None:
    broker, delivered = started
    first = await broker.publish(drafts("a", 3))
    second = await broker.publish(drafts("b", 2))
    positions = [e.position for e in first + second]
    assert positions == sorted(positions) and len(set(positions)) == 5
    assert [e.id for e in delivered] == [e.id for e in first + second]
    assert {e.epoch for e in delivered} == {broker.epoch}


async def test_replay_returns_what_was_missed_on_the_requested_topics(
    started: tuple[Broker, list[Event]],
) -> None:
    broker, _ = started
    events = await broker.publish([*drafts("jobs/1", 2), *drafts("jobs/2", 2), *drafts("other", 2)])
    after = EventId(broker.epoch, events[0].position)
    replay = await broker.replay(patterns("jobs/*"), after, limit=100)
    assert replay.gap is None
    assert [e.id for e in replay.events] == [e.id for e in events[1:4]]
    assert replay.head == EventId(broker.epoch, events[-1].position)
    exact = await broker.replay(patterns("other"), after, limit=100)
    assert [e.data for e in exact.events] == [{"n": 0}, {"n": 1}]


async def test_replay_from_the_head_is_empty_and_complete(
    started: tuple[Broker, list[Event]],
) -> None:
    broker, _ = started
    events = await broker.publish(drafts("a", 2))
    replay = await broker.replay(patterns("a"), EventId(broker.epoch, events[-1].position), 10)
    assert replay.events == [] and replay.gap is None


async def test_replay_reports_trimmed_history(started: tuple[Broker, list[Event]]) -> None:
    broker, _ = started
    events = await broker.publish(drafts("a", 8))  # retention keeps 5
    await broker.publish(drafts("b", 1))
    await trim(broker)
    too_old = EventId(broker.epoch, events[0].position)
    assert (await broker.replay(patterns("a"), too_old, 100)).gap == Gap.TRIMMED
    assert (await broker.replay(patterns("*"), too_old, 100)).gap == Gap.TRIMMED
    # topic b lost nothing: a client of b alone resumes normally
    replay_b = await broker.replay(patterns("b"), too_old, 100)
    assert replay_b.gap is None and len(replay_b.events) == 1
    covered = EventId(broker.epoch, events[2].position)
    replay = await broker.replay(patterns("a"), covered, 100)
    assert replay.gap is None
    assert [e.position for e in replay.events] == [e.position for e in events[3:]]


async def test_replay_reports_foreign_and_future_ids(started: tuple[Broker, list[Event]]) -> None:
    broker, _ = started
    await broker.publish(drafts("a", 1))
    assert (await broker.replay(patterns("a"), EventId("other", 1), 10)).gap == Gap.HISTORY_LOST
    assert (await broker.replay(patterns("a"), EventId(broker.epoch, 99), 10)).gap == Gap.UNKNOWN_ID


async def test_replay_larger_than_the_limit_is_a_gap(started: tuple[Broker, list[Event]]) -> None:
    broker, _ = started
    await broker.publish(drafts("a", 4))
    assert (
        await broker.replay(patterns("a"), EventId(broker.epoch, 0), 3)
    ).gap == Gap.TOO_FAR_BEHIND


async def test_sqlite_history_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    first = SQLiteBroker(path, Retention())
    await first.start(lambda events: None)
    published = await first.publish(drafts("a", 3))
    await first.close()

    second = SQLiteBroker(path, Retention())
    await second.start(lambda events: None)
    try:
        assert second.epoch == first.epoch
        replay = await second.replay(patterns("a"), EventId(first.epoch, published[0].position), 10)
        assert [e.data for e in replay.events] == [{"n": 1}, {"n": 2}]
        (later,) = await second.publish(drafts("a", 1))
        assert later.position > published[-1].position  # positions are never reused
    finally:
        await second.close()


async def test_sqlite_positions_are_not_reused_after_every_event_is_trimmed(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    broker = SQLiteBroker(path, Retention(max_events_per_topic=1, max_age_seconds=0.0001))
    await broker.start(lambda events: None)
    published = await broker.publish(drafts("a", 3))
    await broker.trim()
    await broker.close()
    again = SQLiteBroker(path, Retention())
    await again.start(lambda events: None)
    try:
        (event,) = await again.publish(drafts("a", 1))
        assert event.position == published[-1].position + 1
        gap = await again.replay(patterns("a"), EventId(again.epoch, published[0].position), 10)
        assert gap.gap == Gap.TRIMMED
    finally:
        await again.close()


OLD_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE events (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL, type TEXT NOT NULL, data BLOB NOT NULL, ts REAL NOT NULL
);
CREATE INDEX events_by_topic ON events (topic, position);
CREATE INDEX events_by_ts ON events (ts);
CREATE TABLE trimmed (topic TEXT PRIMARY KEY, position INTEGER NOT NULL);
"""


async def test_a_history_written_by_an_earlier_version_is_brought_up_to_date(
    tmp_path: Path,
) -> None:
    """A file with the earlier schema (an AUTOINCREMENT counter, an index on ts) keeps its
    epoch, its events and its marks, and positions go on after its counter."""
    path = tmp_path / "events.db"
    old = sqlite3.connect(path)
    old.executescript(OLD_SCHEMA)
    old.execute("INSERT INTO meta VALUES ('epoch', 'e0e0e0e0')")
    for position in range(1, 6):
        old.execute(
            "INSERT INTO events (topic, type, data, ts) VALUES (?, 't', ?, ?)",
            ("a" if position % 2 else "b", b'{"n": %d}' % position, 1e9 + position),
        )
    old.execute("DELETE FROM events WHERE position = 5")  # the newest, gone unmarked
    old.execute("INSERT INTO trimmed VALUES ('b', 2)")
    old.execute("DELETE FROM events WHERE position = 2")
    old.commit()
    old.close()

    broker = SQLiteBroker(path, Retention())
    await broker.start(lambda events: None)
    try:
        assert broker.epoch == "e0e0e0e0"
        replay = await broker.replay(patterns("a"), EventId("e0e0e0e0", 0), 10)
        assert [(e.position, e.data) for e in replay.events] == [(1, {"n": 1}), (3, {"n": 3})]
        assert (await broker.replay(patterns("b"), EventId("e0e0e0e0", 1), 10)).gap == Gap.TRIMMED
        (later,) = await broker.publish(drafts("a", 1))
        assert later.position == 6  # after the counter, not after the newest row left
    finally:
        await broker.close()
    check = sqlite3.connect(path)
    table = check.execute("SELECT sql FROM sqlite_master WHERE name = 'events'").fetchone()[0]
    indexes = {
        row[0] for row in check.execute("SELECT name FROM sqlite_master WHERE type = 'index'")
    }
    check.close()
    assert "AUTOINCREMENT" not in table and "events_by_ts" not in indexes


async def test_sqlite_age_retention_drops_exactly_the_events_past_the_age(tmp_path: Path) -> None:
    broker = SQLiteBroker(tmp_path / "events.db", Retention(max_age_seconds=3600))
    await broker.start(lambda events: None)
    try:
        old = await broker.publish(drafts("a", 2) + drafts("b", 1))
        assert broker._file is not None
        db = broker._file._db

        def age() -> None:  # the events were published two hours ago
            db.execute("UPDATE events SET ts = ts - 7200")
            db.commit()

        await broker._run(age)
        kept = await broker.publish(drafts("a", 1))
        await broker.trim()
        start = EventId(broker.epoch, 0)
        assert (await broker.replay(patterns("a"), start, 10)).gap == Gap.TRIMMED
        after_old = EventId(broker.epoch, old[-1].position)
        replay = await broker.replay(patterns("a", "b"), after_old, 10)
        assert [e.position for e in replay.events] == [kept[0].position]
        b_gap = await broker.replay(patterns("b"), EventId(broker.epoch, old[0].position), 10)
        assert b_gap.gap == Gap.TRIMMED
    finally:
        await broker.close()


async def test_memory_age_retention_expires_topics() -> None:
    broker = MemoryBroker(Retention(max_age_seconds=0.0))
    await broker.start(lambda events: None)
    try:
        events = await broker.publish(drafts("a", 2))
        broker.trim_expired()
        replay = await broker.replay(patterns("a"), EventId(broker.epoch, events[0].position), 10)
        assert replay.gap == Gap.TRIMMED
    finally:
        await broker.close()


async def test_replay_beyond_the_byte_budget_is_a_gap(started: tuple[Broker, list[Event]]) -> None:
    broker, _ = started
    await broker.publish([EventDraft.create("a", "t", "x" * 100) for _ in range(4)])
    start = EventId(broker.epoch, 0)
    for texts in (("a",), ("*",)):
        assert (await broker.replay(patterns(*texts), start, 100, 250)).gap == Gap.TOO_FAR_BEHIND
        full = await broker.replay(patterns(*texts), start, 100, 4 * 102)
        assert full.gap is None and len(full.events) == 4


async def test_sqlite_close_commits_the_batch_being_written(tmp_path: Path) -> None:
    # Regression: close() cancelled the writer in the middle of a batch's INSERT, so that
    # batch's publishers waited forever and its events were never stored.
    path = tmp_path / "events.db"
    broker = SQLiteBroker(path, Retention())
    await broker.start(lambda events: None)
    assert broker._file is not None
    file, loop = broker._file, asyncio.get_running_loop()
    insert = file.insert
    writing, proceed = asyncio.Event(), threading.Event()

    def gated_insert(rows: Any) -> None:  # on the history's thread (sqlite.B4)
        loop.call_soon_threadsafe(writing.set)
        proceed.wait(5)
        insert(rows)

    file.insert = gated_insert  # type: ignore[method-assign]
    # Larger than a lone small publish, which the loop commits itself (sqlite.B6).
    first = asyncio.create_task(broker.publish(drafts("a", INLINE_EVENTS + 1)))
    async with asyncio.timeout(5):
        await writing.wait()  # the writer is inside the first batch's INSERT
        second = asyncio.create_task(broker.publish(drafts("b", 2)))  # the next batch
        await asyncio.sleep(0)
        closing = asyncio.create_task(broker.close())
        await asyncio.sleep(0)  # close() has begun while the INSERT is in progress
        proceed.set()
        await closing
        written = await first + await second
    with pytest.raises(Unavailable):
        await broker.publish(drafts("c", 1))

    again = SQLiteBroker(path, Retention())
    await again.start(lambda events: None)
    try:
        replay = await again.replay(patterns("a", "b"), EventId(again.epoch, 0), 100)
        assert [e.id for e in replay.events] == [e.id for e in written]
    finally:
        await again.close()


async def test_sqlite_lone_publishes_and_batches_are_delivered_in_position_order(
    tmp_path: Path,
) -> None:
    # A lone small publish is committed on the loop (sqlite.B6), a larger one on the history
    # thread (B5): mixed, they still reach subscribers in position order, each exactly once.
    delivered: list[int] = []
    broker = SQLiteBroker(tmp_path / "events.db", Retention())
    await broker.start(lambda events: delivered.extend(e.position for e in events))
    try:
        sizes = [1, INLINE_EVENTS + 5, 1, 2, 300, 1, 1, INLINE_EVENTS, 1] * 3
        async with asyncio.timeout(10):
            published = await asyncio.gather(
                *(broker.publish(drafts(f"t{i}", n)) for i, n in enumerate(sizes))
            )
            for n in (1, 1, 3):  # one at a time: each is the loop's own commit
                published.append(await broker.publish(drafts("lone", n)))
        positions = sorted(e.position for batch in published for e in batch)
        assert delivered == positions
        replay = await broker.replay(patterns("*"), EventId(broker.epoch, 0), 10_000)
        assert [e.position for e in replay.events] == positions
    finally:
        await broker.close()


async def test_sqlite_a_lone_publish_while_the_file_is_busy_waits_for_it_and_is_stored(
    tmp_path: Path,
) -> None:
    # sqlite.B6: the loop never waits for the file. While another connection holds it (as a
    # retention pass does), a lone publish goes to the history thread, which waits its turn.
    path = tmp_path / "events.db"
    delivered: list[int] = []
    broker = SQLiteBroker(path, Retention())
    await broker.start(lambda events: delivered.extend(e.position for e in events))
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        publishing = asyncio.create_task(broker.publish(drafts("a", 1)))
        await asyncio.sleep(0.05)  # long enough for a commit that did not wait
        assert not publishing.done() and delivered == []  # not lost: queued behind the holder
        holder.execute("COMMIT")
        async with asyncio.timeout(5):
            (event,) = await publishing
        assert delivered == [event.position]
        replay = await broker.replay(patterns("a"), EventId(broker.epoch, 0), 10)
        assert [e.position for e in replay.events] == [event.position]
    finally:
        holder.close()
        await broker.close()


class _Interleaved:
    """The history file's connection, running ``between()`` before each of a trim's statements."""

    def __init__(self, db: sqlite3.Connection, between: Callable[[], None]) -> None:
        self.db, self.between, self.inside = db, between, False

    def execute(self, sql: str, parameters: Any = ()) -> sqlite3.Cursor:
        self.step()
        return self.db.execute(sql, parameters)

    def commit(self) -> None:
        self.step()
        self.db.commit()

    def step(self) -> None:
        if not self.inside:  # the replay's own statements run straight through
            self.inside = True
            try:
                self.between()
            finally:
                self.inside = False


@pytest.mark.parametrize("retention", ["count", "age"])
async def test_sqlite_replay_during_a_trim_never_has_a_silent_gap(
    tmp_path: Path, retention: str
) -> None:
    # Regression: trim() deleted events before recording the mark, and replay() read the marks
    # before the events, so a replay running between the two returned a silent gap.
    keep = Retention(3) if retention == "count" else Retention(max_age_seconds=0.0)
    broker = SQLiteBroker(tmp_path / "events.db", keep)
    await broker.start(lambda events: None)
    try:
        events = await broker.publish(drafts("a", 10))
        after = EventId(broker.epoch, events[1].position)
        missed = [e.position for e in events[2:]]
        answers: list[tuple[str | None, list[int]]] = []

        def replay() -> None:
            # What replay() reads, on the history's thread; replays cannot run between a
            # trim's statements any more (sqlite.B4), but the order of its writes (B2) is
            # still what makes such a read safe.
            rows, _, trimmed = file.read(patterns("a"), after.position, 10**9, 100, 1e18)
            gap = Gap.TRIMMED if trimmed > after.position else None
            answers.append((gap, [] if gap else [row[0] for row in rows]))

        assert broker._file is not None
        file, db = broker._file, broker._file._db
        file._db = _Interleaved(db, replay)  # type: ignore[assignment]
        await broker.trim()
        file._db = db
        answer = await broker.replay(patterns("a"), after, 100)
        answers.append((answer.gap, [e.position for e in answer.events]))
        assert answers[-1][0] == Gap.TRIMMED
        assert all(answer in ((None, missed), (Gap.TRIMMED, [])) for answer in answers), answers
    finally:
        await broker.close()


async def test_a_burst_of_batches_reaches_a_subscriber_that_keeps_up_without_evicting_it(
    tmp_path: Path,
) -> None:
    # Regression: concurrent batch publishes were committed as one group and delivered at
    # once, past the buffer of every subscriber of the topic, so even one that read everything
    # as it came was evicted as slow (sqlite.B5).
    from jobcast.hub import Hub, HubOptions

    hub = Hub(SQLiteBroker(tmp_path / "events.db", Retention()), HubOptions(max_pending=400))
    await hub.start()
    try:
        subscription, _ = await hub.subscribe(patterns("burst"))
        received: list[Event] = []

        async def keep_up() -> None:  # a subscriber's writer, writing whatever is pending
            while len(received) < 1500 and not subscription.closed:
                await subscription.wait()
                received.extend(subscription.take())

        reader = asyncio.create_task(keep_up())
        async with asyncio.timeout(10):
            # queued in one turn of the loop, before the history's writer runs
            await asyncio.gather(*(hub.publish_many(drafts("burst", 100)) for _ in range(15)))
            await reader
        assert subscription.close_reason is None
        positions = [event.position for event in received]
        assert len(positions) == 1500 and positions == sorted(positions)
    finally:
        await hub.close()
