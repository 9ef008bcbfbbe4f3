"""The publish fast path (serving/fast_publish.py) answers exactly as the FastAPI route does."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from jobcast.auth import Principal
from jobcast.policy import Policy
from jobcast.server.app import Jobcast
from jobcast.server.serving.entrance import FastPaths
from jobcast.server.serving.fast_publish import declared_json_body, plain_items
from jobcast.topics import TopicPattern
from tests.support import EventStream, LiveServer, make_settings

SETTINGS = {"max_batch_events": 3, "max_event_bytes": 64, "max_body_bytes": 4096}
BIG_INTEGER = b'{"topic": "a", "type": "t", "data": 1180591620717411303424}'  # 2 ** 70
NOT_UTF8 = b'{"topic": "a", "type": "t", "data": "\xe9\xe9"}'
TOO_DEEP = b'{"topic": "a", "type": "t", "data": ' + b"[" * 2000 + b"]" * 2000 + b"}"


@pytest.fixture
def without_fast_path(tmp_path: Path) -> Iterator[LiveServer]:
    """The installed app with its fast entrance taken out: every request goes through FastAPI."""
    jc = Jobcast(make_settings(data_dir=tmp_path / "slow", **SETTINGS))
    app = FastAPI(lifespan=jc.lifespan)
    jc.install(app, app_wide=True, fast_entrance=False)
    server = LiveServer(app).start()
    yield server
    server.stop()


@pytest.mark.parametrize(
    ("length", "taken"),
    [(b"10", True), (b"9" * 5000, False), (b"1" * 20, False), (b"-1", False), (b"", False)],
)
def test_a_declared_length_of_thousands_of_digits_is_not_ours(length: bytes, taken: bool) -> None:
    headers = [(b"content-length", length), (b"content-type", b"application/json")]
    assert declared_json_body({"headers": headers}, 1000) is taken


def test_the_plain_shape_is_the_route_model_s() -> None:
    """plain_items reads topic, type and data by name: a change of the route's model must
    change it too (this fails first)."""
    from jobcast.server.routes.events import PublishRequest
    from jobcast.server.serving.fast_publish import FIELDS

    assert FIELDS == set(PublishRequest.model_fields) == {"topic", "type", "data"}


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
        (BIG_INTEGER, None),  # orjson would read it as a float
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
        ("integer beyond 64 bits", {"content": BIG_INTEGER, "headers": json_headers}),
        ("not UTF-8", {"content": NOT_UTF8, "headers": json_headers}),
        ("nested too deeply", {"content": TOO_DEEP, "headers": json_headers}),
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


async def test_an_integer_beyond_64_bits_is_refused_not_rounded(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    url = f"{server.url}/api/events"
    service = {**server.auth("svc", "service"), "Content-Type": "application/json"}
    async with EventStream(client, url, params={"topic": "a"}, headers=server.auth()) as events:
        refused = await client.post(url, content=BIG_INTEGER, headers=service)
        assert refused.status_code == 422
        assert "64-bit" in refused.json()["message"]
        digits = b'{"topic": "a", "type": "t", "data": "11805916207174113034240"}'
        assert (await client.post(url, content=digits, headers=service)).status_code == 202
        largest = b'{"topic": "a", "type": "t", "data": 18446744073709551615}'
        assert (await client.post(url, content=largest, headers=service)).status_code == 202
        # Nothing of the refused one reached the subscriber; the others arrived exactly.
        received = [event.data for event in await events.take(2)]
        assert received == ['"11805916207174113034240"', "18446744073709551615"]


@pytest.mark.parametrize(
    ("body", "says"), [(NOT_UTF8, "UTF-8"), (TOO_DEEP, "nested")], ids=["not-utf8", "too-deep"]
)
async def test_a_body_that_cannot_be_parsed_is_malformed_json(
    server: LiveServer, client: httpx.AsyncClient, body: bytes, says: str
) -> None:
    headers = {**server.auth("svc", "service"), "Content-Type": "application/json"}
    response = await client.post(f"{server.url}/api/events", content=body, headers=headers)
    assert response.status_code == 422
    assert response.json()["error"] == "invalid_input"
    assert says in response.json()["message"]


@pytest.mark.parametrize("data", [b"[NaN, Infinity, -Infinity]", b"1e400"], ids=["nan", "1e400"])
async def test_numbers_json_cannot_hold_are_refused(
    server: LiveServer, client: httpx.AsyncClient, data: bytes
) -> None:
    headers = {**server.auth("svc", "service"), "Content-Type": "application/json"}
    body = b'{"topic": "a", "type": "t", "data": ' + data + b"}"
    response = await client.post(f"{server.url}/api/events", content=body, headers=headers)
    assert response.status_code == 422
    assert "NaN and infinite numbers are not JSON" in response.text
    batch = b"[" + body + b"]"
    response = await client.post(f"{server.url}/api/events", content=batch, headers=headers)
    assert response.status_code == 422


class BrokenPolicy(Policy):
    """An application's own policy with a bug in it."""

    def check_publish(self, principal: Principal | None, topic: str) -> None:
        raise RuntimeError("a bug in the application's policy")

    def subscription_filter(
        self, principal: Principal | None, patterns: Sequence[TopicPattern]
    ) -> Callable[[str], bool] | None:
        raise RuntimeError("a bug in the application's policy")


@pytest.fixture
def served_with_a_bug(tmp_path: Path) -> Iterator[LiveServer]:
    """An app whose publishes fail unexpectedly, served as ``jobcast serve`` serves it: with a
    second fast entrance outside even Starlette's error middleware (fast_paths.F3)."""
    jc = Jobcast(make_settings(data_dir=tmp_path / "bug"), policy=BrokenPolicy())
    app = FastAPI(lifespan=jc.lifespan)
    jc.install(app)
    app.middleware_stack = FastPaths(app.build_middleware_stack(), jc.runtime)
    server = LiveServer(app).start()
    yield server
    server.stop()


async def test_an_unexpected_error_on_the_fast_path_is_a_json_500_and_logged(
    served_with_a_bug: LiveServer, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    server = served_with_a_bug
    with caplog.at_level(logging.ERROR, logger="jobcast.server"):
        response = await client.post(
            f"{server.url}/api/events",
            json={"topic": "a", "type": "t"},
            headers={**server.auth("svc", "service"), "X-Request-ID": "bug-1"},
        )
    assert response.status_code == 500
    assert response.json() == {"error": "internal_error", "message": "internal server error"}
    assert response.headers["x-request-id"] == "bug-1"
    logged = [r for r in caplog.records if "unhandled error on POST /api/events" in r.message]
    assert logged and logged[0].exc_info is not None
    assert "a bug in the application's policy" not in response.text  # no detail to the client


async def test_an_unexpected_error_opening_a_fast_stream_is_a_json_500(
    served_with_a_bug: LiveServer, client: httpx.AsyncClient
) -> None:
    server = served_with_a_bug
    response = await client.get(
        f"{server.url}/api/events", params={"topic": "a"}, headers=server.auth()
    )
    assert response.status_code == 500
    assert response.json() == {"error": "internal_error", "message": "internal server error"}
