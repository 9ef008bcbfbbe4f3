"""Fixtures for the example backends' tests: real uvicorn servers on loopback."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable, Iterator

import httpx
import pytest
from fastapi import FastAPI

from tests.support import LiveServer

Serve = Callable[..., LiveServer]


def free_port() -> int:
    """A port nobody listens on now, for an app that must know its own URL before it starts."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _serve() -> Iterator[Serve]:
    servers: list[LiveServer] = []

    def start(app: FastAPI, port: int = 0) -> LiveServer:
        server = LiveServer(app, port=port).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def serve() -> Iterator[Serve]:
    """Serve an example app with a real uvicorn; every server is stopped at teardown."""
    yield from _serve()


@pytest.fixture(scope="module")
def serve_shared() -> Iterator[Serve]:
    """The same, for a server that a module's tests share (each uses its own ids)."""
    yield from _serve()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client
