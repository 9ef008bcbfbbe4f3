"""The stream fast path (server/fast_streams.py) and the framework routes behind it agree."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from jobcast.server.fast_streams import job_id_of
from tests.support import EventStream, LiveServer


@pytest.mark.parametrize(
    ("path", "job_id"),
    [
        ("/api/jobs/abc/events", "abc"),
        ("/api/jobs/abc/events/", None),
        ("/api/jobs//events", None),
        ("/api/jobs/a/b/events", None),
        ("/api/jobs/abc", None),
        ("/api/events", None),
    ],
)
def test_only_job_stream_paths_take_the_fast_path(path: str, job_id: str | None) -> None:
    assert job_id_of(path) == job_id


async def test_the_framework_routes_stream_without_the_fast_path(
    router_only: LiveServer, client: httpx.AsyncClient
) -> None:
    server = router_only
    url = f"{server.url}/api/events"
    async with EventStream(client, url, params={"topic": "a"}, headers=server.auth()) as events:
        published = await client.post(
            f"{server.url}/api/events",
            json={"topic": "a", "type": "t", "data": 1},
            headers=server.auth("w", "service"),
        )
        assert published.status_code == 202
        event = await events.next()
        assert (event.event, event.data, event.id) == ("t", "1", published.json()["id"])
    missing = await client.get(url, headers=server.auth())
    assert missing.status_code == 422


async def test_stream_errors_and_cors_are_the_same_on_the_fast_path(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient
) -> None:
    server = make_server(cors_origins="http://localhost:5173")
    url = f"{server.url}/api/events"
    refused = await client.get(url, params={"topic": "a"}, headers={"Authorization": "Bearer x"})
    assert refused.status_code == 401
    assert refused.json()["reason"] == "malformed_token"
    assert refused.headers["www-authenticate"].startswith("Bearer")
    unknown = await client.get(f"{server.url}/api/jobs/nope/events", headers=server.auth())
    assert unknown.status_code == 404 and unknown.json()["error"] == "not_found"

    origin = {"Origin": "http://localhost:5173", **server.auth()}
    async with EventStream(client, url, params={"topic": "a"}, headers=origin) as events:
        assert events.response is not None
        assert events.response.headers["access-control-allow-origin"] == "http://localhost:5173"
