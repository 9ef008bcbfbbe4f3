"""The Redis broker on a Redis Cluster (``redis+cluster://``): three real redis-server nodes;
the broker contract suite runs on it (brokers/redis.X9)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import httpx
import pytest

from jobcast.brokers import Retention
from jobcast.brokers.base import Broker
from jobcast.brokers.redis import RedisBroker
from jobcast.events import Event
from tests.scale_support import processes
from tests.services import needs_services
from tests.support import EventStream, LiveServer, eventually

# The contract, collected here again with this module's ``make_broker``: a Cluster broker.
from tests.test_brokers import (  # noqa: F401
    started,
    test_positions_increase_and_every_event_is_delivered,
    test_replay_beyond_the_byte_budget_is_a_gap,
    test_replay_from_the_head_is_empty_and_complete,
    test_replay_larger_than_the_limit_is_a_gap,
    test_replay_reports_foreign_and_future_ids,
    test_replay_reports_trimmed_history,
    test_replay_returns_what_was_missed_on_the_requested_topics,
)

pytestmark = needs_services


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Three nodes holding every slot between them; the URL names one of them only."""
    with processes(tmp_path_factory.mktemp("cluster")) as procs:
        first = next(iter(procs.cluster(3)))
        yield f"redis+cluster://127.0.0.1:{first}"


@pytest.fixture
def make_broker(cluster: str) -> Callable[[Retention], Broker]:
    prefix = f"jc{uuid.uuid4().hex[:8]}"  # a fresh history (its own hash tag)
    return lambda retention: RedisBroker(f"{cluster}?prefix={prefix}", retention)


@pytest.fixture
async def pair(cluster: str) -> AsyncIterator[tuple[RedisBroker, RedisBroker, list[Event]]]:
    url = f"{cluster}?prefix=jc{uuid.uuid4().hex[:8]}"
    first, second = RedisBroker(url, Retention()), RedisBroker(url, Retention())
    seen: list[Event] = []
    await first.start(lambda events: None)
    await second.start(seen.extend)
    yield first, second, seen
    await first.close()
    await second.close()


async def test_instances_on_a_cluster_share_one_history(
    pair: tuple[RedisBroker, RedisBroker, list[Event]],
) -> None:
    from jobcast.events import EventDraft

    first, _, seen = pair
    published = [
        event
        for n in range(10)
        for event in await first.publish([EventDraft.create(f"t/{n}", "n", {"n": n})])
    ]
    await eventually(lambda: len(seen) == 10, 5)
    assert [e.id for e in seen] == [e.id for e in published]


async def test_a_server_on_a_cluster_streams_counts_limits_and_spends_tickets(
    cluster: str, make_server: Callable[..., LiveServer], client: httpx.AsyncClient
) -> None:
    url = f"{cluster}?prefix=jc{uuid.uuid4().hex[:8]}"
    server = make_server(broker_url=url, rate_limit_publish="2/minute")
    issued = await client.post(
        f"{server.url}/api/auth/ticket", json={"topics": ["news"]}, headers=server.auth()
    )
    params = {"topic": "news", "ticket": issued.json()["ticket"]}
    async with EventStream(client, f"{server.url}/api/events", params=params) as stream:
        headers = server.auth("w", grants=["news"])
        body = {"topic": "news", "type": "t", "data": {"n": 1}}
        codes = [
            (await client.post(f"{server.url}/api/events", json=body, headers=headers)).status_code
            for _ in range(3)
        ]
        assert codes == [202, 202, 429]  # counted in the cluster
        assert [e.data for e in await stream.take(2, timeout=5)] == ['{"n":1}'] * 2
    again = await client.get(f"{server.url}/api/events", params=params)
    assert (again.status_code, again.json()["reason"]) == (401, "ticket_used")
