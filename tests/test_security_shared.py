"""With the Redis broker, limits and spent tickets hold for the whole deployment."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.services import needs_services, redis_prefix, redis_url
from tests.support import LiveServer

pytestmark = needs_services


@pytest.fixture
def prefix() -> Iterator[str]:
    yield from redis_prefix()


async def test_a_ticket_opens_one_stream_across_instances(
    make_server: Callable[..., LiveServer],
    client: httpx.AsyncClient,
    prefix: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    url = redis_url(prefix)
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
    make_server: Callable[..., LiveServer],
    client: httpx.AsyncClient,
    prefix: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    url = redis_url(prefix)
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
