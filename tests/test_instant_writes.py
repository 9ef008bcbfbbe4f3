"""Publishes and stream appends answered by the connection itself (``serving/instant_writes.py``,
native.N5), on a real uvicorn with the protocol ``jobcast serve`` runs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson
import pytest

from jobcast.server.serving.instant_writes import InstantWrites
from tests.support import EventStream, LiveServer, wait_until


def count_answers(server: LiveServer) -> list[int]:
    """A list that grows by one for each publish the connection answered itself."""
    assert server._server is not None
    instant: InstantWrites = server._server.config.http_protocol_class.instant
    answered: list[int] = []
    answer = instant.answer

    def counting(scope: Any, body: bytes, write: Callable[[Any], None]) -> bool:
        def counted(response: Any) -> None:
            answered.append(1)  # before the answer leaves: the test reads it right after
            write(response)

        return answer(scope, body, counted)

    instant.answer = counting  # type: ignore[method-assign]
    return answered


def held(server: LiveServer) -> int:
    """How many of the server's connections hold a publish until its body is in."""
    assert server._server is not None
    return sum(1 for c in server._server.server_state.connections if getattr(c, "waiting", None))


def publish_bytes(token_headers: dict[str, str], body: Any, **headers: str) -> bytes:
    content = orjson.dumps(body)
    lines = [
        "POST /api/events HTTP/1.1",
        "Host: test",
        "Content-Type: application/json",
        f"Content-Length: {len(content)}",
        *(f"{name}: {value}" for name, value in {**token_headers, **headers}.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + content


async def read_answers(
    reader: asyncio.StreamReader, count: int
) -> list[tuple[int, dict[str, str], Any]]:
    """``count`` HTTP answers (status, headers, JSON body), read within 5 s."""
    answers = []
    async with asyncio.timeout(5):
        for _ in range(count):
            head = await reader.readuntil(b"\r\n\r\n")
            status_line, *lines = head.decode().split("\r\n")[:-2]
            headers = {}
            for line in lines:
                name, _, value = line.partition(": ")
                headers[name.lower()] = value
            body = await reader.readexactly(int(headers["content-length"]))
            answers.append((int(status_line.split()[1]), headers, orjson.loads(body)))
    return answers


@asynccontextmanager
async def connection(
    server: LiveServer,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        yield reader, writer
    finally:
        writer.close()
        await writer.wait_closed()


async def test_a_service_s_publishes_are_answered_by_the_connection_as_the_entrance_would(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    answered = count_answers(server)
    service = server.auth("worker", "service")
    url = f"{server.url}/api/events"
    async with EventStream(
        client, url, params={"topic": "tasks/1"}, headers=server.auth()
    ) as events:
        async with connection(server) as (reader, writer):
            first = publish_bytes(service, {"topic": "tasks/1", "type": "progress", "data": 1})
            writer.write(first)  # its token is verified the usual way, and remembered
            (via_entrance,) = await read_answers(reader, 1)
            second = publish_bytes(
                service,
                {"topic": "tasks/1", "type": "progress", "data": 2},
                **{"X-Request-ID": "r-2"},
            )
            writer.write(second)
            (instant,) = await read_answers(reader, 1)
        assert answered == [1]
        assert via_entrance[0] == instant[0] == 202
        assert list(via_entrance[1]) == list(instant[1])  # the same headers, in the same order
        assert instant[1]["content-type"] == "application/json"
        assert instant[1]["x-request-id"] == "r-2"
        ids = [via_entrance[2]["id"], instant[2]["id"]]
        for expected_id, data in zip(ids, ["1", "2"], strict=True):
            event = await events.next(timeout=5)
            assert (event.id, event.event, event.data) == (expected_id, "progress", data)


async def test_pipelined_publishes_are_answered_and_delivered_in_order(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    service = server.auth("worker", "service")
    url = f"{server.url}/api/events"
    warm = await client.post(url, json={"topic": "x", "type": "t"}, headers=service)
    assert warm.status_code == 202
    answered = count_answers(server)
    async with EventStream(client, url, params={"topic": "p"}, headers=server.auth()) as events:
        async with connection(server) as (reader, writer):
            requests = [
                publish_bytes(service, {"topic": "p", "type": "n", "data": n}) for n in range(5)
            ]
            writer.write(b"".join(requests))  # five requests in one packet
            answers = await read_answers(reader, 5)
        assert [status for status, _, _ in answers] == [202] * 5
        assert len(answered) == 5
        for n, (_, _, body) in enumerate(answers):
            event = await events.next(timeout=5)
            assert (event.id, event.data) == (body["id"], str(n))


async def test_a_body_that_arrives_later_is_waited_for(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    service = server.auth("worker", "service")
    url = f"{server.url}/api/events"
    assert (
        await client.post(url, json={"topic": "x", "type": "t"}, headers=service)
    ).status_code == 202
    answered = count_answers(server)
    request = publish_bytes(service, {"topic": "late", "type": "t", "data": "x" * 3000})
    split = request.index(b"\r\n\r\n") + 4 + 10
    async with EventStream(client, url, params={"topic": "late"}, headers=server.auth()) as events:
        async with connection(server) as (reader, writer):
            writer.write(request[:split])  # the head and the body's first bytes
            await writer.drain()
            await wait_until(lambda: held(server) == 1)  # held, with no task
            writer.write(request[split:])
            ((status, _, body),) = await read_answers(reader, 1)
        assert status == 202 and answered == [1]
        event = await events.next(timeout=5)
        assert (event.id, event.data) == (body["id"], '"' + "x" * 3000 + '"')


async def test_a_client_that_vanishes_before_its_body_publishes_nothing(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    service = server.auth("worker", "service")
    url = f"{server.url}/api/events"
    assert (
        await client.post(url, json={"topic": "x", "type": "t"}, headers=service)
    ).status_code == 202
    head = server.jc.runtime.hub.broker.head  # nothing else publishes on this server
    request = publish_bytes(service, {"topic": "gone", "type": "t", "data": 1})
    async with connection(server) as (_, writer):
        writer.write(request[:-5])
        await writer.drain()
        await wait_until(lambda: held(server) == 1)
    await wait_until(lambda: held(server) == 0)
    # the next publish on a new connection gets the next position: nothing was published
    after = await client.post(url, json={"topic": "x", "type": "t"}, headers=service)
    assert after.status_code == 202
    assert after.json()["id"] == f"{head.epoch}-{head.position + 1}"


@pytest.mark.parametrize(
    ("who", "extra", "expected"),
    [
        ("user", {}, "a user's publishes count against the rate limit"),
        ("service", {"Idempotency-Key": "k-1"}, "a keyed publish is recorded"),
        ("service", {"Expect": "100-continue"}, "its body waits for the app to read it"),
    ],
    ids=["user", "idempotency-key", "expect-continue"],
)
async def test_what_needs_waiting_goes_the_usual_way(
    make_server: Callable[..., LiveServer],
    client: httpx.AsyncClient,
    who: str,
    extra: dict[str, str],
    expected: str,
) -> None:
    server = make_server(rate_limit_publish="2/minute")
    credentials = (
        server.auth("alice", "user", grants=["a"]) if who == "user" else server.auth("w", "service")
    )
    url = f"{server.url}/api/events"
    first = await client.post(
        url, json={"topic": "a", "type": "t"}, headers={**credentials, **extra}
    )
    assert first.status_code == 202, first.text
    answered = count_answers(server)
    second = await client.post(
        url, json={"topic": "a", "type": "t"}, headers={**credentials, **extra}
    )
    assert answered == [], expected
    if who == "user":
        third = await client.post(url, json={"topic": "a", "type": "t"}, headers=credentials)
        assert (second.status_code, third.status_code) == (202, 429)
    elif "Idempotency-Key" in extra:
        assert second.status_code == 200 and second.json() == first.json()
    else:
        assert second.status_code == 202


async def test_stream_appends_are_answered_by_the_connection_as_the_entrance_would(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient
) -> None:
    server = make_server(public_stream_prefixes=["pub/"])
    service = server.auth("worker", "service")
    for path, headers in (("svc/out", service), ("pub/out", {})):
        url = f"{server.url}/v1/stream/{path}"
        created = await client.put(url, headers={**service, "Content-Type": "text/plain"})
        assert created.status_code == 201
        first = await client.post(
            url, content=b"one ", headers={**headers, "Content-Type": "text/plain"}
        )
        answered = count_answers(server)  # from here on: the service's token is known
        producer = {"Producer-Id": "p", "Producer-Epoch": "0", "Producer-Seq": "0"}
        second = await client.post(
            url, content=b"two", headers={**headers, **producer, "Content-Type": "text/plain"}
        )
        again = await client.post(
            url, content=b"two", headers={**headers, **producer, "Content-Type": "text/plain"}
        )
        closed = await client.post(url, headers={**headers, "Stream-Closed": "true"})
        refused = await client.post(
            url, content=b"x", headers={**headers, "Content-Type": "text/plain"}
        )
        assert len(answered) == 4, path
        assert (first.status_code, second.status_code, again.status_code) == (204, 200, 204)
        assert closed.status_code == 204 and refused.status_code == 409
        assert refused.json()["error"] and "x-request-id" in refused.headers
        assert set(first.headers) == set(again.headers) - {"producer-epoch", "producer-seq"}
        read = await client.get(url, params={"offset": "-1"}, headers=service)
        assert read.text == "one two" and read.headers["stream-closed"] == "true"


async def test_a_user_s_append_goes_the_usual_way(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient
) -> None:
    server = make_server(rate_limit_publish="2/minute")
    user = server.auth("alice", "user", grants=["notes/*"])
    url = f"{server.url}/v1/stream/notes/a"
    assert (
        await client.put(url, headers={**user, "Content-Type": "text/plain"})
    ).status_code == 201
    answered = count_answers(server)
    first = await client.post(url, content=b"a", headers={**user, "Content-Type": "text/plain"})
    second = await client.post(url, content=b"b", headers={**user, "Content-Type": "text/plain"})
    assert answered == [] and (first.status_code, second.status_code) == (204, 429)
