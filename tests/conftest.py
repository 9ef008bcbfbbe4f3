from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from jobcast.server.app import Jobcast, create_app
from tests.support import LiveServer, make_settings


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    """Start real servers with settings overrides; every one is stopped at teardown."""
    servers: list[LiveServer] = []

    def start(*, native_streams: bool = True, **overrides: Any) -> LiveServer:
        overrides.setdefault("data_dir", tmp_path)
        app = create_app(make_settings(**overrides))
        server = LiveServer(app, native_streams=native_streams, standalone=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def server(make_server: Callable[..., LiveServer]) -> LiveServer:
    return make_server(heartbeat_interval=0.2)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


@pytest.fixture
def router_only(tmp_path: Path) -> Iterator[LiveServer]:
    """jobcast's router mounted without ``install``: no fast path, the FastAPI routes answer."""
    jc = Jobcast(make_settings(data_dir=tmp_path, heartbeat_interval=0.2))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with jc.lifespan(app):
            yield

    app = FastAPI(lifespan=lifespan)
    app.state.jobcast = jc
    app.include_router(jc.router())
    server = LiveServer(app).start()
    yield server
    server.stop()
