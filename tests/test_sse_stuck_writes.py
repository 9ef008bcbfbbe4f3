"""A client that stops reading: its stuck write is ended after ``send_timeout`` (hub.H6)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.support import LiveServer, wait_until

PAYLOAD = "z" * 60_000


@pytest.fixture
def silent_client() -> Iterator[Callable[[LiveServer, str], socket.socket]]:
    """Raw sockets that subscribe and then never read, closed at teardown."""
    sockets: list[socket.socket] = []

    def connect(server: LiveServer, topic: str) -> socket.socket:
        sock = socket.create_connection((server.host, server.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        token = server.token()
        request = f"GET /api/events?topic={topic}&token={token} HTTP/1.1\r\nHost: x\r\n\r\n"
        sock.sendall(request.encode())
        sockets.append(sock)
        return sock

    yield connect
    for sock in sockets:
        sock.close()


def server_tasks(server: LiveServer) -> int:
    """How many tasks the server's event loop holds (a stuck writer is one)."""

    async def count() -> int:
        return len(asyncio.all_tasks())

    assert server._loop is not None
    return asyncio.run_coroutine_threadsafe(count(), server._loop).result(5)


async def fill_buffers(client: httpx.AsyncClient, server: LiveServer, topic: str) -> None:
    """Publish far more than the kernel buffers of a connection that nobody reads can hold."""
    batch = [{"topic": topic, "type": "big", "data": PAYLOAD} for _ in range(10)]
    for _ in range(12):
        response = await client.post(
            f"{server.url}/api/events", json=batch, headers=server.auth("w", "service")
        )
        assert response.status_code == 202, response.text


@pytest.mark.parametrize(
    "max_pending",
    [
        pytest.param(100_000, id="stuck-while-subscribed"),
        pytest.param(30, id="evicted-then-stuck"),  # closed first, its last write still blocked
    ],
)
@pytest.mark.parametrize("native_streams", [True, False], ids=["native", "asgi"])
async def test_a_write_the_client_never_reads_ends_after_the_send_timeout(
    make_server: Callable[..., LiveServer],
    client: httpx.AsyncClient,
    silent_client: Callable[[LiveServer, str], socket.socket],
    max_pending: int,
    native_streams: bool,
) -> None:
    server = make_server(
        send_timeout=0.5,
        heartbeat_interval=0.2,
        max_pending_events=max_pending,
        native_streams=native_streams,
    )
    hub = server.jc.hub
    idle_tasks = server_tasks(server)
    silent_client(server, "s")
    await wait_until(lambda: hub.subscriber_count == 1)

    await fill_buffers(client, server, "s")

    # The stream is gone within the timeout plus a tick, and its writer with it: no task is
    # left blocked in a write that will never complete.
    await wait_until(lambda: hub.subscriber_count == 0 and not hub._closed_writing, timeout=5)
    await wait_until(lambda: server_tasks(server) <= idle_tasks, timeout=5)
    health = (await client.get(f"{server.url}/health")).json()
    assert health["connected_clients"] == 0
