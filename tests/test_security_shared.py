"""With the Redis or the PostgreSQL broker, limits and spent tickets hold for the whole
deployment."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.services import (
    drop_postgres_broker,
    needs_services,
    postgres_broker_url,
    redis_prefix,
    redis_url,
)
from tests.support import LiveServer

pytestmark = needs_services


@pytest.fixture(params=["redis", "postgres"])
def url(request: pytest.FixtureRequest) -> Iterator[str]:
    """The broker URL the instances share (the shared state lives beside the events)."""
    if request.param == "redis":
        for prefix in redis_prefix():
            yield redis_url(prefix)
    else:
        url = postgres_broker_url()
        yield url
        drop_postgres_broker(url)


async def test_a_ticket_opens_one_stream_across_instances(
    url: str,  # first: its tables outlive the servers
    make_server: Callable[..., LiveServer],
    client: httpx.AsyncClient,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    first = make_server(broker_url=url, data_dir=tmp_path_factory.mktemp("a"))
    second = make_server(broker_url=url, data_dir=tmp_path_factory.mktemp("b"))
    issued = await client.post(
        f"{first.url}/api/auth/ticket", json={"topics": ["news"]}, headers=first.auth()
    )
    ticket = issued.json()["ticket"]
    async with client.stream(
        "GET", f"{second.url}/api/events", params={"topic": "news", "ticket": ticket}
    ) as used:
        assert used.status_code == 200
    again = await client.get(f"{first.url}/api/events", params={"topic": "news", "ticket": ticket})
    assert (again.status_code, again.json()["reason"]) == (401, "ticket_used")


async def test_rate_limits_are_counted_across_instances(
    url: str,  # first: its tables outlive the servers
    make_server: Callable[..., LiveServer],
    client: httpx.AsyncClient,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    servers = [
        make_server(
            broker_url=url, data_dir=tmp_path_factory.mktemp(n), rate_limit_publish="3/minute"
        )
        for n in "ab"
    ]
    body = {"topic": "a", "type": "t"}
    codes = []
    for n in range(4):
        server = servers[n % 2]
        response = await client.post(
            f"{server.url}/api/events", json=body, headers=server.auth("w", grants=["a"])
        )
        codes.append(response.status_code)
    assert codes == [202, 202, 202, 429]
