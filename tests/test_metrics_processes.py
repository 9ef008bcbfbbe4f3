"""``/metrics`` with several server processes on one Redis or PostgreSQL broker: any process
answers for all."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from jobcast.auth import TokenAuthority
from jobcast.shared_metrics import merge
from tests.scale_support import Processes, processes
from tests.services import (
    drop_postgres_broker,
    needs_services,
    postgres_broker_url,
    redis_prefix,
    redis_url,
)
from tests.support import EventStream, eventually, make_settings
from tests.test_metrics import samples
from tests.ws_support import receive, send

TOKEN = TokenAuthority.from_settings(make_settings()).mint("alice")


@pytest.fixture(params=["redis", "postgres"])
def broker_url(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "redis":
        for prefix in redis_prefix():
            yield redis_url(prefix)
    else:
        url = postgres_broker_url()
        yield url
        drop_postgres_broker(url)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    with processes(tmp_path) as procs:
        yield procs


async def scrape_until(
    client: httpx.AsyncClient, base: str, expected: dict[str, float]
) -> dict[str, float]:
    """Scrape until every ``expected`` sample has its value (other processes' numbers are up
    to one snapshot interval old, so this is state seen from outside: polled)."""

    async def scraped() -> dict[str, float] | None:
        values = samples((await client.get(f"{base}/metrics")).text)
        return values if all(values.get(n) == v for n, v in expected.items()) else None

    return await eventually(scraped, timeout=10, interval=0.05)


def connections(process: str, transport: str) -> str:
    return f"jobcast_connections[('process', '{process}'), ('transport', '{transport}')]"


@needs_services
async def test_one_scrape_reports_every_process(broker_url: str, procs: Processes) -> None:
    settings = {"broker_url": broker_url, "metrics_snapshot_seconds": 0.2}
    first, second = procs.serve("first", **settings), procs.serve("second", **settings)
    host = socket.gethostname()
    one, two = (f"{host}:{process.pid}" for process in procs.started)
    async with (
        httpx.AsyncClient(timeout=10) as client,
        EventStream(client, f"{first}/api/events", params={"topic": "a", "token": TOKEN}),
        EventStream(client, f"{first}/api/events", params={"topic": "b", "token": TOKEN}),
        EventStream(client, f"{second}/api/events", params={"topic": "a", "token": TOKEN}),
        connect(f"{second.replace('http', 'ws')}/ws/events?token={TOKEN}") as ws,
    ):
        await send(ws, {"op": "subscribe", "topics": ["a"]})
        assert (await receive(ws))["op"] == "subscribed"
        values = await scrape_until(
            client,
            first,
            {
                connections(one, "sse"): 2,
                connections(one, "websocket"): 0,
                connections(two, "sse"): 1,
                connections(two, "websocket"): 1,
            },
        )
        assert values["jobcast_metrics_processes"] == 2
        assert values[f"jobcast_subscriptions[('process', '{two}')]"] == 2
        # the same series, whichever process answers
        from_second = await scrape_until(client, second, {connections(one, "sse"): 2})
        assert {name for name in from_second if one in name or two in name} == {
            name for name in values if one in name or two in name
        }
    procs.stop(procs.started[1])  # a process that stops takes its snapshot with it
    async with httpx.AsyncClient(timeout=10) as client:
        values = samples((await client.get(f"{first}/metrics")).text)
    assert values["jobcast_metrics_processes"] == 1
    assert not any(two in name for name in values)


def test_merging_labels_every_sample_with_its_process() -> None:
    one = b'# HELP x_total X.\n# TYPE x_total counter\nx_total{reason="a"} 1.0\n'
    two = b'# HELP x_total X.\n# TYPE x_total counter\nx_total{reason="a"} 2.0\n'
    values = samples(merge({"h:1": one, "h:2": two, "h:3": b"\xff not metrics {"}).decode())
    assert values == {
        "x_total[('process', 'h:1'), ('reason', 'a')]": 1.0,
        "x_total[('process', 'h:2'), ('reason', 'a')]": 2.0,
        "jobcast_metrics_processes": 2.0,
    }
