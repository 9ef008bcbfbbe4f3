"""The output stream backends' contract, run over each (SQLite file, Redis, PostgreSQL): what
the HTTP layer and jobs rely on, without a server.
(The protocol itself: test_durable_conformance.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as redis

from jobcast.brokers._postgres_sql import parse_url
from jobcast.errors import PayloadTooLarge
from jobcast.outputs.model import Producer, StreamError
from jobcast.outputs.postgres import PostgresStreamStore
from jobcast.outputs.redis import RedisStreamStore
from jobcast.outputs.sqlite import SQLiteStreamStore
from jobcast.outputs.store import StreamStore
from tests.services import (
    REDIS_URL,
    delete_prefix,
    drop_postgres_broker_tables,
    needs_services,
    postgres_broker_url,
    unique_prefix,
)
from tests.support import eventually


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("redis", marks=needs_services),
        pytest.param("postgres", marks=needs_services),
    ]
)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StreamStore]:
    made: StreamStore
    if request.param == "sqlite":
        made = SQLiteStreamStore(tmp_path / "streams.db", max_stream_bytes=1000)
        await made.open()
        yield made
        await made.close()
        return
    if request.param == "postgres":
        url = postgres_broker_url()
        made = PostgresStreamStore(parse_url(url), max_stream_bytes=1000)
        await made.open()
        yield made
        await made.close()
        await drop_postgres_broker_tables(url)
        return
    prefix = unique_prefix()
    client = redis.Redis.from_url(REDIS_URL)
    made = RedisStreamStore(client, f"{prefix}:", max_stream_bytes=1000)
    await made.open()
    yield made
    await made.close()
    await client.aclose()
    delete_prefix(prefix)


async def test_appends_read_back_from_any_offset(store: StreamStore) -> None:
    info, created = await store.create(
        "a/b", "text/plain", ttl=None, expires_at=None, closed=False, body=b"one "
    )
    assert created and info.tail == 4
    await store.append("a/b", b"two ", content_type="text/plain")
    await store.append_stored([("a/b", b"three", True)])
    whole = await store.read("a/b", None, 0)
    assert (whole.data, whole.up_to_date, whole.eof) == (b"one two three", True, True)
    assert (await store.read("a/b", info.incarnation, 4)).data == b"two three"
    assert (await store.listing("a/"))[0].describe()["length"] == 13


async def test_a_producer_s_retry_is_a_duplicate_and_a_gap_or_stale_epoch_is_refused(
    store: StreamStore,
) -> None:
    await store.create("p", "text/plain", ttl=None, expires_at=None, closed=False, body=b"")
    first = await store.append("p", b"x", content_type="text/plain", producer=Producer("w", 0, 0))
    again = await store.append("p", b"x", content_type="text/plain", producer=Producer("w", 0, 0))
    assert (first.fresh, again.fresh, again.producer_seq) == (True, False, 0)
    with pytest.raises(StreamError) as gap:
        await store.append("p", b"y", content_type="text/plain", producer=Producer("w", 0, 2))
    assert gap.value.headers["Producer-Expected-Seq"] == "1"
    await store.append("p", b"z", content_type="text/plain", producer=Producer("w", 1, 0))
    with pytest.raises(StreamError) as stale:
        await store.append("p", b"!", content_type="text/plain", producer=Producer("w", 0, 1))
    assert (stale.value.status_code, stale.value.headers["Producer-Epoch"]) == (403, "1")
    assert (await store.read("p", None, 0)).data == b"xz"


async def test_the_size_bound_and_a_removed_incarnation(store: StreamStore) -> None:
    info, _ = await store.create(
        "s", "text/plain", ttl=None, expires_at=None, closed=False, body=b""
    )
    with pytest.raises(PayloadTooLarge):
        await store.append("s", b"x" * 1001, content_type="text/plain")
    await store.delete("s")
    await store.create("s", "text/plain", ttl=None, expires_at=None, closed=False, body=b"new")
    with pytest.raises(StreamError) as gone:
        await store.read("s", info.incarnation, 0)
    assert gone.value.status_code == 410


async def test_a_waiting_reader_is_woken_by_an_append(store: StreamStore) -> None:
    await store.create("w", "text/plain", ttl=None, expires_at=None, closed=False, body=b"")
    woken = store.wakeups.watch("w")
    await store.append_stored([("w", b"hello", False)])
    async with asyncio.timeout(5):
        await woken  # redis: the local notify, or the channel's
    assert (await store.read("w", None, 0)).data == b"hello"


async def test_a_local_reader_gets_an_append_s_bytes_with_its_wake_up(store: StreamStore) -> None:
    """store.W1 on every backend: the instance that wrote hands its live readers the bytes,
    where they start and the new tail, so they need not read the store back (redis.E1)."""
    info, _ = await store.create(
        "c", "application/json", ttl=None, expires_at=None, closed=False, body=b"[0]"
    )
    woken = store.wakeups.watch("c")
    await store.append("c", b"[1, 2]", content_type="application/json")  # an HTTP append
    async with asyncio.timeout(5):
        change = await woken
    assert change is not None
    assert (change.incarnation, change.start, change.data, change.tail, change.closed) == (
        info.incarnation,
        2,
        b"1,2,",
        6,
        False,
    )
    assert store.wakeups.known_tail("c") == (info.incarnation, 6)
    woken = store.wakeups.watch("c")
    await store.append_stored([("c", b"3,", True)])  # a job's flush, closing
    async with asyncio.timeout(5):
        change = await woken
    assert change is not None and (change.start, change.data, change.closed) == (6, b"3,", True)


async def test_a_flush_appends_to_open_streams_only_and_wakes_with_what_it_wrote(
    store: StreamStore,
) -> None:
    await store.create("f/open", "text/plain", ttl=None, expires_at=None, closed=False, body=b"ab")
    await store.create("f/shut", "text/plain", ttl=None, expires_at=None, closed=True, body=b"x")
    woken = store.wakeups.watch("f/open")
    flush = [("f/open", b"cd", False), ("f/shut", b"y", False), ("f/none", b"z", False)]
    await store.append_stored([*flush, ("f/open", b"ef", True)])
    async with asyncio.timeout(5):
        change = await woken
    if change is not None:  # a wake-up may carry what was appended (store.W1)
        assert (change.start, change.data, change.tail) == (2, b"cd", 4)
    opened = await store.read("f/open", None, 0)
    assert (opened.data, opened.eof, opened.info.tail) == (b"abcdef", True, 6)
    assert (await store.read("f/shut", None, 0)).data == b"x"
    with pytest.raises(StreamError) as missing:
        await store.head("f/none")
    assert missing.value.status_code == 404


async def test_an_expired_stream_is_gone(store: StreamStore) -> None:
    soon = time.time() + 0.3
    await store.create("t", "text/plain", ttl=None, expires_at=soon, closed=False, body=b"")
    await store.create("k", "text/plain", ttl=3600, expires_at=None, closed=False, body=b"")
    assert (await store.head("t")).expires_at == soon

    async def expired() -> bool:
        try:
            await store.head("t")
        except StreamError as exc:
            return exc.status_code == 404
        return False

    await eventually(expired, timeout=5)
    assert [info.path for info in await store.listing("")] == ["k"]


async def test_the_sweep_removes_what_nobody_touches_again(tmp_path: Path) -> None:
    store = SQLiteStreamStore(tmp_path / "streams.db", max_stream_bytes=100, sweep_interval=0.05)
    await store.open()
    try:
        soon = time.time() + 0.2
        await store.create("t", "text/plain", ttl=None, expires_at=soon, closed=False, body=b"x")

        def rows() -> int:
            with contextlib.closing(sqlite3.connect(tmp_path / "streams.db")) as db:
                return int(db.execute("SELECT count(*) FROM ds_chunks").fetchone()[0])

        assert rows() == 1
        await eventually(lambda: rows() == 0, timeout=5)  # never read again: swept
    finally:
        await store.close()


async def test_sqlite_appends_go_to_the_thread_while_the_file_is_busy(tmp_path: Path) -> None:
    """A lone append commits on the event loop (sqlite.O1); while another connection holds
    the file it waits its turn on the store's thread instead, and nothing is lost or
    reordered either way."""
    path = tmp_path / "streams.db"
    store = SQLiteStreamStore(path, max_stream_bytes=10_000)
    await store.open()
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        await store.create("t", "text/plain", ttl=None, expires_at=None, closed=False, body=b"")
        await store.append("t", b"a", content_type="text/plain")  # on the loop
        holder.execute("BEGIN IMMEDIATE")  # the file is busy
        waiting = asyncio.ensure_future(store.append("t", b"b", content_type="text/plain"))
        stored = asyncio.ensure_future(store.append_stored([("t", b"c", False)]))
        await asyncio.sleep(0.05)
        assert not waiting.done() and not stored.done()  # on the thread, behind the holder
        holder.execute("COMMIT")
        async with asyncio.timeout(10):
            await waiting
            await stored
        await store.append("t", b"d", content_type="text/plain")
        assert (await store.read("t", None, 0)).data == b"abcd"
    finally:
        holder.close()
        await store.close()


async def test_sqlite_the_log_written_on_the_loop_is_folded_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("jobcast.outputs.sqlite.INLINE_CHECKPOINT", 50)  # 200: a few MB
    path = tmp_path / "streams.db"
    store = SQLiteStreamStore(path, max_stream_bytes=10_000_000)
    await store.open()
    try:
        await store.create("t", "text/plain", ttl=None, expires_at=None, closed=False, body=b"")
        log = path.with_name("streams.db-wal")
        sizes = []
        for _ in range(8):
            for _ in range(50):
                await store.append("t", b"x" * 1000, content_type="text/plain")
            await eventually(lambda: store._checkpoint is not None and store._checkpoint.done())
            sizes.append(log.stat().st_size)
        # 400 appends of a few pages each make about 8 MB of log; folded back after every
        # 50, the log is reused from its start (about 1 MB).
        assert max(sizes) < 1_500_000, sizes
        assert (await store.head("t")).tail == 400_000
    finally:
        await store.close()


@needs_services
async def test_postgres_instances_share_streams_producers_and_wake_ups() -> None:
    url = postgres_broker_url()
    one = PostgresStreamStore(parse_url(url), max_stream_bytes=1000)
    other = PostgresStreamStore(parse_url(url), max_stream_bytes=1000)
    await one.open()
    await other.open()
    try:
        info, _ = await one.create(
            "x", "application/json", ttl=None, expires_at=None, closed=False, body=b""
        )
        woken = other.wakeups.watch("x")
        await one.append("x", b'[1, {"a": 2}]', content_type=None, producer=Producer("w", 0, 0))
        async with asyncio.timeout(5):
            assert await woken is None  # from the other instance: it must read
        retry = await other.append("x", b"[1]", content_type=None, producer=Producer("w", 0, 0))
        assert not retry.fresh  # the producer's state committed with the bytes, for both
        # The same next append sent to both instances at once, many times: stored once.
        racing = [
            store.append("x", b"[3]", content_type=None, producer=Producer("w", 0, 1))
            for _ in range(10)
            for store in (one, other)
        ]
        outcomes = await asyncio.gather(*racing)
        assert sum(appended.fresh for appended in outcomes) == 1
        assert (await other.read("x", info.incarnation, 0)).data == b'1,{"a":2},3,'
        await other.delete("x")
        await one.create("x", "text/plain", ttl=None, expires_at=None, closed=False, body=b"")
        with pytest.raises(StreamError) as gone:
            await other.read("x", info.incarnation, 0)
        assert gone.value.status_code == 410
    finally:
        await one.close()
        await other.close()
        await drop_postgres_broker_tables(url)


@needs_services
async def test_postgres_wake_ups_come_back_after_the_listening_connection_is_lost() -> None:
    url = postgres_broker_url()
    one = PostgresStreamStore(parse_url(url), max_stream_bytes=1000)
    other = PostgresStreamStore(parse_url(url), max_stream_bytes=1000)
    await one.open()
    await other.open()
    try:
        await one.create("r", "text/plain", ttl=None, expires_at=None, closed=False, body=b"")
        lost = one.db.listener
        async with other.db.connection() as conn:  # the database drops one's LISTEN connection
            await conn.execute("SELECT pg_terminate_backend($1)", lost.get_server_pid())
        await eventually(lost.is_closed, timeout=5)

        async def woken_by_the_other() -> bool:
            woken = one.wakeups.watch("r")
            try:
                await other.append("r", b".", content_type=None)
                async with asyncio.timeout(0.5):
                    await woken
                return True
            except TimeoutError:
                return False
            finally:
                one.wakeups.forget("r", woken)

        await eventually(woken_by_the_other, timeout=10)
    finally:
        await one.close()
        await other.close()
        await drop_postgres_broker_tables(url)


@needs_services
async def test_redis_instances_wake_one_another_and_skip_their_own_echo() -> None:
    """redis.E2, E3: an append wakes the other instance's readers through the channel (they
    read), the writer's own readers only with the change it handed them, and a bare path
    (an older release's message) still wakes readers."""
    prefix = unique_prefix()
    client = redis.Redis.from_url(REDIS_URL)
    one = RedisStreamStore(client, f"{prefix}:", max_stream_bytes=1000)
    other = RedisStreamStore(client, f"{prefix}:", max_stream_bytes=1000)
    await one.open()
    await other.open()
    try:
        info, _ = await one.create(
            "x", "text/plain", ttl=None, expires_at=None, closed=False, body=b""
        )
        mine, theirs = one.wakeups.watch("x"), other.wakeups.watch("x")
        await one.append("x", b"abc", content_type="text/plain")
        async with asyncio.timeout(5):
            assert await theirs is None  # from the other instance: it must read
            change = await mine
        assert change is not None and (change.start, change.data) == (0, b"abc")
        # one's own message came back on the channel after the append: a bare path sent
        # after it reaches one's listener after it (one connection, in order), so once
        # that wakes its readers, the echo has been handled, and it woke nobody.
        again, marker = one.wakeups.watch("x"), one.wakeups.watch("marker")
        await client.publish(f"{prefix}:ds:wake", "marker")  # an older release's form
        async with asyncio.timeout(5):
            assert await marker is None
        assert not again.done()
        assert one.wakeups.known_tail("x") == (info.incarnation, 3)
        # ... and other's writes wake one through the channel.
        await other.append("x", b"d", content_type="text/plain")
        async with asyncio.timeout(5):
            assert await again is None
        assert (await one.read("x", info.incarnation, 0)).data == b"abcd"
    finally:
        await one.close()
        await other.close()
        await client.aclose()
        delete_prefix(prefix)
