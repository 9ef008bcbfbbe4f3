"""Request heads at the connection (``serving/request_heads.py``): JSON 414 for URLs the parser
cannot take, JSON for what it refuses, and a deadline on heads that never finish."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect

from jobcast.server.serving.request_heads import MAX_URL_BYTES
from tests.support import EventStream, LiveServer, closed
from tests.test_cli_serve import serve_env, serving
from tests.ws_support import receive, send


def exchange(port: int, request: bytes, timeout: float = 5.0) -> bytes:
    """Send ``request`` on a new connection; everything the server answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def status_and_json(answer: bytes) -> tuple[int, dict[str, str]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower(), head
    return int(head.split(b" ", 2)[1]), orjson.loads(body)


@pytest.mark.parametrize(
    "target",
    [
        b"/api/events?topic=a/1&x=" + b"a" * 100_000,
        b"/api/events?" + b"&".join(b"topic=t/%d" % i for i in range(10_000)),
        b"/api/events?topic=a/1&token=" + b"e" * 100_000,
        b"/health?" + b"q" * (MAX_URL_BYTES - len(b"/health?") + 1),
    ],
    ids=["100k-query", "10k-topics", "100k-token", "one-past-the-limit"],
)
def test_a_url_too_long_to_parse_is_a_json_414(
    make_server: Callable[..., LiveServer], target: bytes
) -> None:
    # Regression: uvicorn answered a plain-text 400 "Invalid HTTP request received."
    server = make_server()
    answer = exchange(server.port, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    status, body = status_and_json(answer)
    assert status == 414 and body["error"] == "url_too_long", answer[:300]
    assert str(MAX_URL_BYTES) in body["message"]


def test_parser_refusals_and_big_headers_are_json(
    make_server: Callable[..., LiveServer],
) -> None:
    server = make_server()
    at_limit = b"/health?" + b"q" * (MAX_URL_BYTES - len(b"/health?"))
    served = exchange(server.port, b"GET " + at_limit + b" HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert status_and_json(served)[0] == 200  # the longest URL the parser takes is served
    garbage = exchange(server.port, b"\x16\x03\x01 not http\r\n\r\n")
    assert status_and_json(garbage) == (
        400,
        {"error": "bad_request", "message": "this is not a valid HTTP/1.1 request"},
    )
    big = exchange(
        server.port,
        b"GET /health HTTP/1.1\r\nConnection: close\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
    )
    status, body = status_and_json(big)
    assert status == 431 and body["error"] == "headers_too_large"


def request_timeouts(metrics: str) -> dict[str, float]:
    found = re.findall(r'jobcast_request_timeouts_total\{phase="(\w+)"\} (\S+)', metrics)
    return {phase: float(value) for phase, value in found}


async def drip(port: int, request: bytes, every: float) -> tuple[float, bytes]:
    """Send ``request`` one byte per ``every`` seconds until the server closes the connection:
    how long that took, and what it answered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()

    async def feed() -> None:
        for byte in request:
            writer.write(bytes([byte]))
            await asyncio.sleep(every)  # the pace of the attack, not synchronisation

    feeding = asyncio.create_task(feed())
    try:
        answer = await reader.read()  # until the server closes
    except ConnectionResetError:
        answer = b""
    finally:
        feeding.cancel()
        await closed(writer)
    return time.monotonic() - started, answer


async def test_heads_that_never_finish_are_closed_and_counted(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient
) -> None:
    server = make_server(header_timeout_seconds=1, heartbeat_interval=0.2)
    slow = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000 + b"\r\n\r\n"
    stalled_body = b"POST /api/events HTTP/1.1\r\nContent-Length: 10\r\n\r\n"
    async with (
        EventStream(client, f"{server.url}/api/events?topic=a/1", headers=server.auth()) as sse,
        connect(f"ws://{server.host}:{server.port}/ws/events?token={server.token()}") as ws,
    ):
        await send(ws, {"op": "subscribe", "topics": ["a/1"]})
        assert (await receive(ws))["op"] == "subscribed"
        async with asyncio.timeout(10):
            attackers = [asyncio.create_task(drip(server.port, slow, 0.2)) for _ in range(20)]
            idle = asyncio.create_task(drip(server.port, b"", 0.2))
            body = asyncio.create_task(drip(server.port, stalled_body, 0))
            # Meanwhile, a normal request on another connection is served at once.
            started = time.monotonic()
            health = await client.get(f"{server.url}/health")
            assert health.status_code == 200 and time.monotonic() - started < 0.5
            results = await asyncio.gather(*attackers)
            idle_after, idle_answer = await idle
            body_after, body_answer = await body
        for elapsed, answer in results:
            assert 0.9 <= elapsed < 2.5, elapsed
            assert answer.startswith(b"HTTP/1.1 408 ")
            assert b'"error":"request_timeout"' in answer
        assert 0.9 <= idle_after < 2.5 and idle_answer == b""  # nothing sent: closed quietly
        assert 0.9 <= body_after < 2.5 and b" 408 " not in body_answer
        # Streams opened before the deadline outlive it: it ends with the request's head.
        published = await client.post(
            f"{server.url}/api/events",
            json={"topic": "a/1", "type": "t", "data": 1},
            headers=server.auth("worker", "service"),
        )
        assert published.status_code == 202
        assert (await sse.next(timeout=5)).id == published.json()["id"]
        async with asyncio.timeout(5):
            while (message := await receive(ws)).get("op") == "ping":
                pass
        assert message["id"] == published.json()["id"]
    metrics = (await client.get(f"{server.url}/metrics")).text
    assert request_timeouts(metrics) == {"idle": 1, "headers": 20, "body": 1}


async def test_keep_alive_requests_each_get_the_deadline(
    make_server: Callable[..., LiveServer],
) -> None:
    server = make_server(header_timeout_seconds=1)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        async with asyncio.timeout(5):
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200 ")
            writer.write(b"GET /health HTTP/1.1\r\nHo")  # the second request stalls
            started = time.monotonic()
            rest = await reader.read()
        assert b"HTTP/1.1 408 " in rest and time.monotonic() - started < 2.5
    finally:
        await closed(writer)


def test_jobcast_serve_applies_the_deadline(tmp_path: Path) -> None:
    env = serve_env(header_timeout_seconds="1", jwt_secret="s" * 32)
    with serving(tmp_path, env) as (_, port):
        started = time.monotonic()
        answer = exchange(port, b"GET /health HTTP/1.1\r\nHo", timeout=10)
        assert answer.startswith(b"HTTP/1.1 408 ") and time.monotonic() - started < 5
        long_url = b"GET /health?" + b"q" * 100_000 + b" HTTP/1.1\r\n\r\n"
        assert status_and_json(exchange(port, long_url))[0] == 414
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        assert request_timeouts(metrics)["headers"] == 1
