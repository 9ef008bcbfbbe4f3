"""Publishing in an application's own PostgreSQL transaction (brokers/postgres.G6): the event
exists iff the transaction commits, subscribers see it after the commit, in commit order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from jobcast.brokers import Retention
from jobcast.brokers.postgres import PostgresBroker
from jobcast.errors import InvalidInput
from jobcast.events import Event, EventDraft, EventId
from jobcast.publisher import AsyncPublisher
from jobcast.server.app import Jobcast
from jobcast.topics import TopicPattern
from tests.services import POSTGRES_URL, drop_postgres_broker, needs_services, postgres_broker_url
from tests.support import eventually, make_settings

pytestmark = needs_services
DSN = POSTGRES_URL.replace("postgresql+asyncpg", "postgresql")

#: Runs ``work(connection)`` in one transaction of each kind the application may hold, then
#: commits it, or rolls it back when ``work`` raises.
Transaction = Callable[[Callable[[Any], Awaitable[None]]], Awaitable[None]]


@pytest.fixture
def url() -> Iterator[str]:
    url = postgres_broker_url()
    yield url
    drop_postgres_broker(url)


@pytest.fixture
async def instance(url: str) -> AsyncIterator[tuple[PostgresBroker, list[Event]]]:
    """A running instance and what it delivers."""
    broker = PostgresBroker(url, Retention(), trim_interval=3600)
    delivered: list[Event] = []
    await broker.start(delivered.extend)
    yield broker, delivered
    await broker.close()


async def in_asyncpg(work: Callable[[Any], Awaitable[None]]) -> None:
    conn = await asyncpg.connect(DSN)
    try:
        async with conn.transaction():
            await work(conn)
    finally:
        await conn.close()


async def in_sqlalchemy_connection(work: Callable[[Any], Awaitable[None]]) -> None:
    engine = create_async_engine(POSTGRES_URL)
    try:
        async with engine.begin() as conn:
            await work(conn)
    finally:
        await engine.dispose()


async def in_sqlalchemy_session(work: Callable[[Any], Awaitable[None]]) -> None:
    engine = create_async_engine(POSTGRES_URL)
    try:
        async with AsyncSession(engine) as session, session.begin():
            await work(session)
    finally:
        await engine.dispose()


KINDS: dict[str, Transaction] = {
    "asyncpg": in_asyncpg,
    "sqlalchemy-connection": in_sqlalchemy_connection,
    "sqlalchemy-session": in_sqlalchemy_session,
}


async def own_write(connection: Any) -> None:
    """The application's own statement in the same transaction."""
    if isinstance(connection, asyncpg.Connection):
        await connection.execute("SELECT 1")
    else:
        await connection.execute(text("SELECT 1"))


class Abort(Exception):
    pass


def draft(n: int) -> EventDraft:
    return EventDraft.create("orders/1", "created", {"n": n})


@pytest.mark.parametrize("kind", list(KINDS))
async def test_the_event_exists_once_the_transaction_commits(
    instance: tuple[PostgresBroker, list[Event]], kind: str
) -> None:
    broker, delivered = instance

    async def work(connection: Any) -> None:
        await own_write(connection)
        await broker.publish_in(connection, [draft(1)])
        assert await broker.move_outbox() == 0  # not committed: nothing to move, nothing seen
        assert delivered == []

    await KINDS[kind](work)
    await eventually(lambda: len(delivered) == 1, 5)
    assert (delivered[0].topic, delivered[0].data) == ("orders/1", {"n": 1})
    replay = await broker.replay([TopicPattern.parse("orders/*")], EventId(broker.epoch, 0), 10)
    assert [e.id for e in replay.events] == [delivered[0].id]


@pytest.mark.parametrize("kind", list(KINDS))
async def test_a_rolled_back_transaction_publishes_nothing(
    instance: tuple[PostgresBroker, list[Event]], kind: str
) -> None:
    broker, delivered = instance

    async def work(connection: Any) -> None:
        await broker.publish_in(connection, [draft(1)])
        raise Abort

    with pytest.raises(Abort):
        await KINDS[kind](work)
    assert await broker.move_outbox() == 0
    (marker,) = await broker.publish([draft(2)])
    assert [e.id for e in delivered] == [marker.id]
    replay = await broker.replay([TopicPattern.parse("orders/1")], EventId(broker.epoch, 0), 10)
    assert [e.data for e in replay.events] == [{"n": 2}]


async def test_subscribers_see_events_in_commit_order_not_write_order(
    instance: tuple[PostgresBroker, list[Event]],
) -> None:
    broker, delivered = instance
    first, second = await asyncpg.connect(DSN), await asyncpg.connect(DSN)
    try:
        one, two = first.transaction(), second.transaction()
        await one.start()
        await two.start()
        await broker.publish_in(first, [draft(1)])  # written first ...
        await broker.publish_in(second, [draft(2)])
        await two.commit()  # ... committed last
        await eventually(lambda: len(delivered) == 1, 5)
        await one.commit()
        await eventually(lambda: len(delivered) == 2, 5)
    finally:
        await first.close()
        await second.close()
    assert [e.data["n"] for e in delivered] == [2, 1]
    assert delivered[0].position < delivered[1].position


async def test_a_crash_between_commit_and_delivery_delays_the_event_never_loses_it(
    url: str,
) -> None:
    broker = PostgresBroker(url, Retention())
    await broker.connect()  # the tables exist; no instance is running to move the event
    await in_asyncpg(lambda conn: broker.publish_in(conn, [draft(1)]))
    await broker.close()
    restarted = PostgresBroker(url, Retention())
    delivered: list[Event] = []
    await restarted.start(delivered.extend)  # moves what the outbox holds
    try:
        await eventually(lambda: len(delivered) == 1, 5)
        assert delivered[0].data == {"n": 1}
    finally:
        await restarted.close()


async def test_jobcast_publish_in_reaches_a_subscriber_after_the_commit(
    url: str, tmp_path: Path
) -> None:
    jc = Jobcast(make_settings(broker_url=url, data_dir=tmp_path))
    async with jc.lifespan():
        subscription, _ = await jc.hub.subscribe([TopicPattern.parse("orders/*")])

        async def work(conn: Any) -> None:
            await jc.publish_in(conn, "orders/7", "paid", {"total": 12})

        await in_asyncpg(work)
        async with asyncio.timeout(5):
            await subscription.wait()
        (event,) = subscription.take()
        assert (event.topic, event.type, event.data) == ("orders/7", "paid", {"total": 12})


async def test_publish_in_needs_the_postgres_broker(tmp_path: Path) -> None:
    jc = Jobcast(make_settings(data_dir=tmp_path))  # the embedded SQLite default
    async with jc.lifespan():
        with pytest.raises(InvalidInput, match="PostgreSQL broker"):
            await jc.publish_in(object(), "orders/7", "paid", {})


async def test_a_publisher_outside_jobcast_publishes_in_its_transaction(
    instance: tuple[PostgresBroker, list[Event]], url: str
) -> None:
    broker, delivered = instance
    async with AsyncPublisher(url) as publisher:

        async def rolled_back(conn: Any) -> None:
            await publisher.publish_in(conn, "orders/3", "returned", {})
            raise Abort

        with pytest.raises(Abort):
            await in_asyncpg(rolled_back)
        await in_asyncpg(lambda conn: publisher.publish_in(conn, "orders/3", "shipped", {}))
    await eventually(lambda: len(delivered) == 1, 5)
    assert (delivered[0].topic, delivered[0].type) == ("orders/3", "shipped")
    assert await broker.move_outbox() == 0  # and nothing else is waiting to be delivered


async def test_a_redis_publisher_refuses_publish_in() -> None:
    async with AsyncPublisher("redis://127.0.0.1:1/0") as publisher:
        with pytest.raises(InvalidInput, match="PostgreSQL broker"):
            await publisher.publish_in(object(), "orders/3", "shipped", {})
