"""The API as clients and tools see it: the OpenAPI description, the offline docs, HEAD on
every GET route, and ``jobcast serve`` behind a reverse proxy's path or on a Unix socket."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from jobcast.auth import TokenAuthority
from jobcast.server.app import create_app
from tests.scale_support import wait_for_port
from tests.support import SECRET, LiveServer, eventually, make_settings

HTTP_METHODS = ("get", "post", "put", "delete", "patch")


@pytest.fixture
def openapi(tmp_path: Path) -> dict[str, Any]:
    app = create_app(make_settings(data_dir=tmp_path))
    schema: dict[str, Any] = app.openapi()
    return schema


def operations(schema: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                yield method.upper(), path, operation


def test_operation_ids_are_readable_and_unique(openapi: dict[str, Any]) -> None:
    ids = [operation["operationId"] for _, _, operation in operations(openapi)]
    assert len(ids) == len(set(ids))
    assert {"publish", "subscribe", "submit", "get_job", "job_events"} <= set(ids)
    assert all("__" not in op and not op.endswith(("_get", "_post")) for op in ids), ids


def test_every_operation_documents_jobcast_s_error_body(openapi: dict[str, Any]) -> None:
    body = {"$ref": "#/components/schemas/ErrorBody"}
    for method, path, operation in operations(openapi):
        for status in ("401", "404", "422", "503"):
            if (path, status) == ("/ready", "503"):
                continue  # readiness answers its own body: {"ready": false, "reason": ...}
            response = operation["responses"].get(status)
            assert response is not None, f"{method} {path} has no {status}"
            assert response["content"]["application/json"]["schema"] == body, (method, path)
    # FastAPI's own validation body is never sent by jobcast, so it is not described.
    assert "HTTPValidationError" not in openapi["components"]["schemas"]


def test_the_description_covers_credentials_and_the_websockets(openapi: dict[str, Any]) -> None:
    description = openapi["info"]["description"]
    for needle in ("/ws/jobs/{job_id}", "/ws/events", "4401", "1012", "ticket", "Last-Event-ID"):
        assert needle in description
    subscribe = openapi["paths"]["/api/events"]["get"]
    parameters = {p["name"] for p in subscribe["parameters"]}
    assert {"topic", "last_event_id", "ticket", "token", "Last-Event-ID"} <= parameters


async def test_docs_and_redoc_load_nothing_from_elsewhere(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    for page in ("/docs", "/redoc"):
        html = (await client.get(f"{server.url}{page}")).text
        assert "cdn" not in html and "https://" not in html, page
        assets = [part.split('"')[0] for part in html.split('"/static-docs/')[1:]]
        assert assets, page
        for asset in assets:
            fetched = await client.get(f"{server.url}/static-docs/{asset}")
            assert fetched.status_code == 200, asset


async def test_head_is_answered_on_get_routes_but_never_opens_a_stream(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    for path in ("/", "/health", "/ready", "/static/jobcast.js"):
        response = await client.head(f"{server.url}{path}")
        assert (response.status_code, response.content) == (200, b""), path
    jobs = await client.head(f"{server.url}/api/jobs", headers=server.auth())
    assert jobs.status_code == 200
    stream = await client.head(f"{server.url}/api/events", params={"topic": "a"})
    assert stream.status_code == 405
    assert server.jc.hub.subscriber_count == 0


@contextlib.contextmanager
def serving(tmp_path: Path, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """``jobcast serve`` with ``args``, stopped on the way out."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBCAST_")}
    env["JOBCAST_JWT_SECRET"] = SECRET
    with (tmp_path / "server.log").open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "jobcast", "serve", *args],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            yield process
        finally:
            process.terminate()
            process.wait(15)


async def test_serve_behind_a_proxy_path_links_and_docs_include_it(tmp_path: Path) -> None:
    from tests.test_cli_serve import free_port

    port = free_port()
    with serving(tmp_path, "--port", str(port), "--root-path", "/jc") as process:
        wait_for_port(port, process)
        token = TokenAuthority(SECRET).mint("alice")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            # The proxy strips /jc before forwarding: requests arrive without it.
            job = await client.post(
                "/api/jobs",
                json={"kind": "demo", "params": {"steps": 1}},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert job.status_code == 202
            assert job.json()["links"]["self"] == f"/jc/api/jobs/{job.json()['id']}"
            docs = (await client.get("/docs")).text
            assert "/jc/openapi.json" in docs and "/jc/static-docs/" in docs


async def test_serve_on_a_unix_socket(tmp_path: Path) -> None:
    socket_path = tmp_path / "jobcast.sock"
    with serving(tmp_path, "--uds", str(socket_path)) as process:
        transport = httpx.AsyncHTTPTransport(uds=str(socket_path))
        async with httpx.AsyncClient(transport=transport, timeout=10) as client:

            async def healthy() -> bool:
                if process.poll() is not None:
                    raise RuntimeError(f"jobcast serve exited with {process.returncode}")
                try:
                    return (await client.get("http://jobcast/health")).status_code == 200
                except httpx.TransportError:
                    return False

            assert await eventually(healthy, timeout=15, interval=0.05)
