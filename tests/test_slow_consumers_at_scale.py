"""Slow-consumer eviction at scale, against ``jobcast serve``: 200 streams that never read
while 5,000 events go by are all evicted and counted, the server's memory stays bounded, and
the streams that do read miss nothing (subscription.S3, ARCHITECTURE.md "Slow consumers")."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from jobcast.auth import TokenAuthority
from tests.support import SECRET, EventStream
from tests.test_cli_serve import serve_env, serving

STALLED = 200
FAST = 3
EVENTS = 5_000
BATCH = 50  # below max_pending: a fast reader is never more than a batch behind
MAX_PENDING = 100
DATA = "x" * 1000  # about 1 KB of event data: buffers fill after a few hundred events

#: What the stalled streams may add to the server's resident memory. Each holds at most its
#: transport's write buffer (64 KiB high-water mark, plus the one burst written when it
#: paused, at most MAX_PENDING events: about 110 KB) and the closing frame; the events
#: themselves are shared. 200 x 180 KB = 36 MB; the bound leaves room for the allocator.
RSS_BOUND_MB = 64


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    assert match is not None
    return int(match.group(1)) / 1024


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


@contextlib.contextmanager
def stalled_streams(port: int, count: int, request: bytes) -> Iterator[list[socket.socket]]:
    """Sockets that send a stream request and never read: a tiny receive buffer, so the
    server's writes back up at once."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect
            sock.connect(("127.0.0.1", port))
            sock.sendall(request)
            sockets.append(sock)
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


async def test_stalled_streams_are_evicted_and_memory_stays_bounded(tmp_path: Path) -> None:
    env = serve_env(
        jwt_secret=SECRET,
        max_pending_events=str(MAX_PENDING),
        max_streams_per_subject="1000",
        rate_limit_publish="100000/minute",
        heartbeat_interval="1",
    )
    token = TokenAuthority(SECRET).mint("reader", grants=["load/*"])
    publisher = {"Authorization": f"Bearer {TokenAuthority(SECRET).mint('w', role='service')}"}
    request = (
        f"GET /api/events?topic=load/1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"
    ).encode()
    with serving(tmp_path, env) as (process, port):
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(timeout=30) as client:
            fast_headers = {"Authorization": f"Bearer {token}"}
            streams = [
                EventStream(client, f"{url}/api/events?topic=load/1", headers=fast_headers)
                for _ in range(FAST)
            ]
            async with contextlib.AsyncExitStack() as stack:
                for stream in streams:
                    await stack.enter_async_context(stream)
                    assert stream.response is not None and stream.response.status_code == 200
                with stalled_streams(port, STALLED, request):
                    # Every stalled stream is open (the hub counts it) before anything is sent.
                    async with asyncio.timeout(20):
                        while True:
                            text = (await client.get(f"{url}/metrics")).text
                            if metric(text, "jobcast_subscriptions") >= STALLED + FAST:
                                break
                            await asyncio.sleep(0.05)  # polling the server's state
                    before = rss_mb(process.pid)

                    async def read_all(stream: EventStream) -> list[str]:
                        ids: list[str] = []
                        while len(ids) < EVENTS:
                            event = await stream.next(timeout=20)
                            if event.event == "t":
                                ids.append(event.id or "")
                        return ids

                    readers = [asyncio.create_task(read_all(stream)) for stream in streams]
                    published: list[str] = []
                    started = time.monotonic()
                    for _ in range(EVENTS // BATCH):
                        batch = [{"topic": "load/1", "type": "t", "data": DATA}] * BATCH
                        response = await client.post(
                            f"{url}/api/events", json=batch, headers=publisher
                        )
                        assert response.status_code == 202, response.text
                        published += response.json()["ids"]
                    async with asyncio.timeout(30):
                        received = await asyncio.gather(*readers)
                    elapsed = time.monotonic() - started
                    async with asyncio.timeout(20):
                        while True:
                            text = (await client.get(f"{url}/metrics")).text
                            if metric(text, "jobcast_slow_consumer_evictions_total") >= STALLED:
                                break
                            await asyncio.sleep(0.05)  # polling the server's state
                    after = rss_mb(process.pid)
        # Every stalled stream, and none of the fast ones, was evicted and counted.
        assert metric(text, "jobcast_slow_consumer_evictions_total") == STALLED
        dropped = 'jobcast_events_dropped_total{reason="slow_consumer"}'
        assert metric(text, re.escape(dropped)) > 0
        for ids in received:
            assert ids == published  # all of them, in order, no duplicate
        assert after - before < RSS_BOUND_MB, (before, after)
        print(f"{EVENTS} events in {elapsed:.1f} s; server RSS {before:.0f} -> {after:.0f} MB")


@pytest.fixture(autouse=True)
def _enough_descriptors() -> None:
    """200 stalled sockets and the server's side of them fit the default limits."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert soft >= 2 * STALLED + 64
