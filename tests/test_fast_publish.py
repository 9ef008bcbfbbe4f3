"""The publish fast path (server/fast_publish.py) answers exactly as the FastAPI route does."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from jobcast.server.app import create_app
from jobcast.server.fast_paths import FastPaths
from jobcast.server.fast_publish import plain_items
from tests.support import EventStream, LiveServer, make_settings

SETTINGS = {"max_batch_events": 3, "max_event_bytes": 64, "max_body_bytes": 4096}


@pytest.fixture
def without_fast_path(tmp_path: Path) -> Iterator[LiveServer]:
    """The installed app with its fast entrance taken out: every request goes through FastAPI."""
    app = create_app(make_settings(data_dir=tmp_path / "slow", **SETTINGS))
    app.user_middleware = [m for m in app.user_middleware if m.cls is not FastPaths]
    server = LiveServer(app).start()
    yield server
    server.stop()


@pytest.mark.parametrize(
    ("body", "shape"),
    [
        (b'{"topic": "a", "type": "t", "data": {"x": 1}}', ([("a", "t", {"x": 1})], False)),
        (b'{"topic": "a", "type": "t"}', ([("a", "t", None)], False)),
        (b'[{"topic": "a", "type": "t"}, {"topic": "b", "type": "u", "data": 2}]', None),
        (b'{"topic": "a", "type": "t", "extra": 1}', None),
        (b'{"topic": 1, "type": "t"}', None),
        (b'{"type": "t"}', None),
        (b"[]", None),
        (b"[1]", None),
        (b'"a"', None),
        (b"{not json", None),
    ],
)
def test_only_plain_bodies_are_taken(body: bytes, shape: Any) -> None:
    if body.startswith(b"[{"):
        items, batch = plain_items(body) or ([], False)
        assert batch and [topic for topic, _, _ in items] == ["a", "b"]
        return
    assert plain_items(body) == shape


async def test_a_plain_publish_is_delivered_with_a_request_id(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    url = f"{server.url}/api/events"
    async with EventStream(client, url, params={"topic": "a"}, headers=server.auth()) as events:
        published = await client.post(
            url,
            json={"topic": "a", "type": "t", "data": {"n": 1}},
            headers={**server.auth("svc", "service"), "X-Request-ID": "pub-1"},
        )
        assert published.status_code == 202
        assert published.headers["x-request-id"] == "pub-1"
        event = await events.next()
        assert (event.event, event.data, event.id) == ("t", '{"n":1}', published.json()["id"])
    batch = await client.post(
        url,
        json=[{"topic": "a", "type": "t"}, {"topic": "b", "type": "t"}],
        headers=server.auth("svc", "service"),
    )
    assert batch.status_code == 202 and len(batch.json()["ids"]) == 2


def _cases(auth: Callable[..., dict[str, str]]) -> list[tuple[str, dict[str, Any]]]:
    service = auth("svc", "service")
    json_headers = {**service, "Content-Type": "application/json"}
    big = "x" * 100
    return [
        ("malformed JSON", {"content": b"{nope", "headers": json_headers}),
        ("extra field", {"json": {"topic": "a", "type": "t", "x": 1}, "headers": service}),
        ("missing type", {"json": {"topic": "a"}, "headers": service}),
        ("topic not a string", {"json": {"topic": 5, "type": "t"}, "headers": service}),
        ("empty batch", {"json": [], "headers": service}),
        ("batch too long", {"json": [{"topic": "a", "type": "t"}] * 4, "headers": service}),
        ("data too big", {"json": {"topic": "a", "type": "t", "data": big}, "headers": service}),
        ("bad topic", {"json": {"topic": "a b", "type": "t"}, "headers": service}),
        ("bad type", {"json": {"topic": "a", "type": ""}, "headers": service}),
        ("no credential", {"json": {"topic": "a", "type": "t"}}),
        ("bad token", {"json": {"topic": "a", "type": "t"}, "headers": {"Authorization": "x"}}),
        ("user may not publish", {"json": {"topic": "a", "type": "t"}, "headers": auth()}),
        ("not JSON", {"content": b"topic=a", "headers": {**service, "Content-Type": "text/plain"}}),
        ("body too big", {"content": b"[" + b" " * 5000 + b"]", "headers": json_headers}),
    ]


async def test_every_refusal_is_the_same_as_the_framework_route_s(
    make_server: Callable[..., LiveServer],
    without_fast_path: LiveServer,
    client: httpx.AsyncClient,
) -> None:
    fast = make_server(**SETTINGS)
    for name, request in _cases(fast.auth):
        answers = []
        for server in (fast, without_fast_path):
            response = await client.post(f"{server.url}/api/events", **request)
            answers.append((response.status_code, response.json()))
        assert answers[0] == answers[1], name
        assert answers[0][0] >= 400, name
