"""A Redis Cluster failing over under the broker: six real redis-server nodes (three
primaries, a replica each, a one-second node timeout); the primary of the deployment's slot
is killed with SIGKILL (brokers/redis.X8, X9)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from jobcast.brokers import Gap, Retention
from jobcast.brokers.redis import RedisBroker
from jobcast.errors import Unavailable
from jobcast.events import Event, EventDraft, EventId
from jobcast.topics import TopicPattern
from tests.scale_support import Processes, processes
from tests.services import needs_services
from tests.support import eventually

pytestmark = needs_services
TOPIC = [TopicPattern.parse("load")]


@dataclass
class Cluster:
    procs: Processes
    nodes: dict[int, subprocess.Popen[bytes]]
    prefix: str

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{next(iter(self.nodes))}?prefix={self.prefix}"

    async def owner(self, asked: int) -> int:
        """The port of the primary that node ``asked`` names for the deployment's slot."""
        client = aioredis.Redis(port=asked)
        try:
            slot = await client.execute_command("CLUSTER", "KEYSLOT", f"{{{self.prefix}}}")
            ranges = await client.execute_command("CLUSTER", "SLOTS")
        finally:
            await client.aclose()
        return next(int(r[2][1]) for r in ranges if r[0] <= slot <= r[1])

    def kill(self, port: int) -> None:
        self.procs.stop(self.nodes[port], signal.SIGKILL)

    async def cut_replication(self, primary: int) -> None:
        """``primary``'s replica stops receiving its writes (it cannot authenticate any more)
        while the cluster still sees both: the next writes reach the primary only."""
        client = aioredis.Redis(port=primary)
        try:
            role = await client.execute_command("ROLE")  # [master, offset, [[host, port, offset]]]
            (replica,) = [int(r[1]) for r in role[2]]
        finally:
            await client.aclose()
        replica_client = aioredis.Redis(port=replica)
        try:
            await replica_client.config_set("masterauth", "not-the-password")
            killer = aioredis.Redis(port=primary)
            try:
                await killer.execute_command("CLIENT", "KILL", "TYPE", "replica")
            finally:
                await killer.aclose()

            async def down() -> bool:
                info = await replica_client.info("replication")
                return bool(info.get("master_link_status") != "up")

            await eventually(down, timeout=5, interval=0.05)
        finally:
            await replica_client.aclose()


async def replicas_in_sync(ports: list[int]) -> bool:
    linked = 0
    for port in ports:
        client = aioredis.Redis(port=port)
        try:
            info = await client.info("replication")
        finally:
            await client.aclose()
        linked += info.get("master_link_status") == "up"
    return linked == len(ports) // 2


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    with processes(tmp_path) as procs:
        yield procs


@pytest.fixture
async def cluster(procs: Processes) -> Cluster:
    nodes = await asyncio.to_thread(procs.cluster, 6, replicas=1, node_timeout_ms=1000)
    # A replica that never finished its first sync would not stand for election.
    await eventually(lambda: replicas_in_sync(list(nodes)), timeout=20, interval=0.1)
    return Cluster(procs, nodes, f"jc{uuid.uuid4().hex[:8]}")


@pytest.fixture
async def brokers(cluster: Cluster) -> AsyncIterator[tuple[RedisBroker, RedisBroker, list[Event]]]:
    publisher, observer = (
        RedisBroker(cluster.url, Retention()),
        RedisBroker(cluster.url, Retention()),
    )
    seen: list[Event] = []
    await publisher.start(lambda events: None)
    await observer.start(seen.extend)
    yield publisher, observer, seen
    for broker in (publisher, observer):
        with contextlib.suppress(Exception):
            await broker.close()


def draft(n: int) -> EventDraft:
    return EventDraft.create("load", "n", {"n": n})


async def publish_until(broker: RedisBroker, n: int, deadline: float) -> Event:
    """Publish ``n``, retrying while the slot has no reachable primary (503s), as a client
    would."""
    while True:
        try:
            (event,) = await broker.publish([draft(n)])
            return event
        except Unavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)  # a client's pause between retries, not synchronisation


async def test_publishing_and_delivery_resume_on_the_promoted_replica(
    cluster: Cluster, brokers: tuple[RedisBroker, RedisBroker, list[Event]]
) -> None:
    publisher, observer, seen = brokers
    acknowledged = [await publisher.publish([draft(n)]) for n in range(20)]
    await eventually(lambda: len(seen) == 20, 5)
    primary = await cluster.owner(next(iter(cluster.nodes)))
    killed = time.monotonic()
    cluster.kill(primary)
    survivor = next(port for port in cluster.nodes if port != primary)

    async def promoted() -> bool:
        return await cluster.owner(survivor) != primary

    await eventually(promoted, timeout=20, interval=0.05)
    switched = time.monotonic()
    after = await publish_until(publisher, 100, killed + 20)
    # the observer delivers it: under the same history, or after telling its clients to reset
    await eventually(lambda: bool(seen) and seen[-1].id == after.id, 20)
    delivered = time.monotonic()
    print(
        f"cluster failover: replica promoted {switched - killed:.2f} s after the kill, first "
        f"event delivered {delivered - killed:.2f} s after the kill"
    )
    assert delivered - switched < 2.0 + 1.0  # the promotion plus the client's map refresh
    # every acknowledged event: replayable as it was, or a reset: never a silent gap
    for (event,) in acknowledged:
        replay = await observer.replay(TOPIC, EventId(event.epoch, event.position - 1), 100)
        if replay.gap is None:
            assert replay.events[0].id == event.id and replay.events[0].data == event.data
        else:
            assert replay.gap == Gap.HISTORY_LOST


async def test_events_the_replica_never_got_are_a_reset_never_a_silent_gap(
    cluster: Cluster, brokers: tuple[RedisBroker, RedisBroker, list[Event]]
) -> None:
    publisher, observer, seen = brokers
    lost = asyncio.Event()
    observer.on_history_lost = lost.set
    acknowledged = [await publisher.publish([draft(n)]) for n in range(10)]
    primary = await cluster.owner(next(iter(cluster.nodes)))
    await cluster.cut_replication(primary)
    acknowledged += [await publisher.publish([draft(n)]) for n in range(10, 15)]
    await eventually(lambda: len(seen) == 15, 5)
    cluster.kill(primary)
    after = await publish_until(publisher, 100, time.monotonic() + 30)
    async with asyncio.timeout(20):
        await lost.wait()  # the observer's streams end: their clients resume and are told
    assert after.epoch != acknowledged[0][0].epoch
    # the five the new primary never got: a reset on resume, never other events under their ids
    for (event,) in acknowledged[10:]:
        replay = await observer.replay(TOPIC, EventId(event.epoch, event.position - 1), 100)
        assert replay.gap == Gap.HISTORY_LOST


def test_waiting_for_replicas_is_refused_on_a_cluster() -> None:
    with pytest.raises(ValueError, match="not supported on a Redis Cluster"):
        RedisBroker("redis+cluster://127.0.0.1:7000?wait=1", Retention())
