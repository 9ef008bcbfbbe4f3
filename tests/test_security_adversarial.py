"""Hostile input: tampered tokens, traversal, injection through ids and types, oversized and
malformed frames, slow and numerous connections. Nothing may break, leak or stall."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable

import httpx
import pytest
import websockets

from tests.support import EventStream, LiveServer, closed
from tests.ws_support import receive_until_closed


def tamper(token: str, **changes: object) -> str:
    """Change claims but keep the original signature."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(changes)
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


async def test_tampered_claims_are_rejected(server: LiveServer, client: httpx.AsyncClient) -> None:
    forged = tamper(server.token("alice"), role="admin")
    response = await client.post(
        f"{server.url}/api/events",
        json={"topic": "a", "type": "t"},
        headers={"Authorization": f"Bearer {forged}"},
    )
    assert (response.status_code, response.json()["reason"]) == (401, "bad_signature")
    stretched = tamper(server.token("alice", ttl=1), exp=4_000_000_000)
    response = await client.get(
        f"{server.url}/api/jobs", headers={"Authorization": f"Bearer {stretched}"}
    )
    assert response.status_code == 401


@pytest.mark.parametrize(
    "topic",
    [
        "jobs/../x",
        "../../etc/passwd",
        "jobs/./x",
        "a//b",
        "**",
        "jobs/**",
        "*/x",
        "a\x00b",
        "a%2F..%2Fb",
    ],
)
async def test_traversal_and_wildcard_abuse_are_refused(
    server: LiveServer, client: httpx.AsyncClient, topic: str
) -> None:
    response = await client.get(
        f"{server.url}/api/events", params={"topic": topic}, headers=server.auth()
    )
    assert response.status_code == 422
    published = await client.post(
        f"{server.url}/api/events",
        json={"topic": topic, "type": "t"},
        headers=server.auth("w", "service"),
    )
    assert published.status_code == 422


async def test_too_many_topics_in_one_subscription(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    topics = [f"t/{n}" for n in range(51)]
    response = await client.get(
        f"{server.url}/api/events", params={"topic": topics}, headers=server.auth()
    )
    assert response.status_code == 422 and "at most 50" in response.json()["message"]


@pytest.mark.parametrize(
    "event_type", ["a\r\nevent: admin", "a\ndata: x", "a\x00", "x" * 65, "a b"]
)
async def test_event_types_cannot_inject_frames(
    server: LiveServer, client: httpx.AsyncClient, event_type: str
) -> None:
    response = await client.post(
        f"{server.url}/api/events",
        json={"topic": "a", "type": event_type},
        headers=server.auth("w", "service"),
    )
    assert response.status_code == 422


async def test_a_hostile_last_event_id_cannot_inject_frames(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    hostile = "x\r\nevent: admin\r\ndata: pwned"
    async with EventStream(
        client,
        f"{server.url}/api/events",
        params={"topic": "a", "last_event_id": hostile},
        headers=server.auth(),
    ) as events:
        reset = await events.next()
    assert reset.event == "reset"
    assert json.loads(reset.data or "{}")["last_event_id"] == hostile  # as data, JSON-escaped
    assert events.decoder.last_event_id != hostile


async def test_malformed_and_oversized_websocket_frames(server: LiveServer) -> None:
    url = f"ws://{server.host}:{server.port}/ws/events?token={server.token()}"
    async with asyncio.timeout(10), websockets.connect(url, max_size=None) as ws:
        await ws.send("{not json")
        assert json.loads(await ws.recv())["op"] == "error"
        await ws.send(json.dumps({"op": "subscribe", "topics": ["../x"]}))
        assert json.loads(await ws.recv())["op"] == "error"
        await ws.send(json.dumps({"op": "subscribe", "topics": ["a"]}))
        assert json.loads(await ws.recv())["op"] == "subscribed"  # still usable
        await ws.send("x" * (64 * 1024 + 1))
        await receive_until_closed(ws)
        assert ws.close_code == 1009


async def test_slow_and_half_open_connections_do_not_starve_others(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient
) -> None:
    """200 clients that never finish their request headers, and 300 idle streams."""
    server = make_server(max_streams_per_subject=1000)
    slow = []
    for _ in range(200):
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(b"GET /api/events?topic=a HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        slow.append(writer)
    streams = []
    token = server.token()
    for n in range(300):
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(
            f"GET /api/events?topic=idle/{n}&token={token} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        )
        streams.append((reader, writer))
    try:
        async with asyncio.timeout(20):
            for reader, _ in streams:
                await reader.readuntil(b"retry: ")
        async with asyncio.timeout(5):
            health = await client.get(f"{server.url}/health")
        assert health.status_code == 200 and health.json()["connected_clients"] == 300
        published = await client.post(
            f"{server.url}/api/events",
            json={"topic": "idle/7", "type": "t", "data": 1},
            headers=server.auth("w", "service"),
        )
        assert published.status_code == 202
        async with asyncio.timeout(5):
            assert b"data: 1" in await streams[7][0].readuntil(b"data: 1\n\n")
    finally:
        await closed(*slow, *(w for _, w in streams))


@pytest.mark.parametrize(
    "headers",
    [
        b"X-Big: " + b"a" * 20_000 + b"\r\n",
        b"".join(b"X-%d: a\r\n" % n for n in range(200)),
    ],
    ids=["one-huge-header", "too-many-headers"],
)
async def test_oversized_request_headers_are_431(server: LiveServer, headers: bytes) -> None:
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
        async with asyncio.timeout(5):
            status = await reader.readline()
        assert status.startswith(b"HTTP/1.1 431")
    finally:
        await closed(writer)


def multipart(*part_headers: bytes) -> bytes:
    """A job submission whose file part has these header lines."""
    kind = b'--B\r\nContent-Disposition: form-data; name="kind"\r\n\r\ningest\r\n'
    file = b"--B\r\n" + b"".join(h + b"\r\n" for h in part_headers) + b"\r\ndata\r\n--B--\r\n"
    return kind + file


FILE_PART = b'Content-Disposition: form-data; name="file"; filename="a.csv"'


@pytest.mark.parametrize(
    "body",
    [
        multipart(FILE_PART[:-1] + b"; x=" + b"a" * 8000 + b'"'),
        multipart(FILE_PART, *(b"X-%d: a" % n for n in range(20))),
        multipart(b"Content-Disposition form-data"),
        b'--B\r\nContent-Disposition: form-data; name="file"\r\n\r\ndata\r\n--X',
    ],
    ids=["over-long-part-header", "too-many-part-headers", "header-without-colon", "truncated"],
)
async def test_malformed_multipart_bodies_are_422(
    server: LiveServer, client: httpx.AsyncClient, body: bytes
) -> None:
    response = await client.post(
        f"{server.url}/api/jobs",
        content=body,
        headers={**server.auth(), "Content-Type": "multipart/form-data; boundary=B"},
    )
    assert response.status_code == 422, response.text
    assert response.json()["message"].startswith("malformed multipart body"), response.text
    uploads = server.jc.settings.data_dir / "uploads"
    assert not list(uploads.glob(".incoming-*"))  # nothing of the refused upload is kept
