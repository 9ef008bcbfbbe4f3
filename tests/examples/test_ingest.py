"""The file ingest example: the React front end's requests (and the seed's curl and PowerShell
ones) against a real server; the browser test is in ``test_browsers.py``."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from examples.ingest.app import create_app
from tests.examples.conftest import Serve
from tests.support import SECRET, LiveServer
from tests.ws_support import receive_until_closed

FIELDS = {
    "job_id",
    "status",
    "progress",
    "stage",
    "message",
    "filename",
    "size",
    "sha256",
    "metadata",
    "result",
    "created_at",
    "updated_at",
}


@pytest.fixture(scope="module")
def server(serve_shared: Serve, tmp_path_factory: pytest.TempPathFactory) -> LiveServer:
    app = create_app(
        step_delay=0.02,
        data_dir=tmp_path_factory.mktemp("ingest"),
        jwt_secret=SECRET,
        max_body_bytes=64 * 1024,
        _env_file=None,
    )
    return serve_shared(app)


def ws_url(server: LiveServer, job_id: str, token: str) -> str:
    return f"ws://{server.host}:{server.port}/ws/status/{job_id}?token={token}"


async def test_multipart_upload_hashes_the_file_and_the_socket_follows_it(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    content = b"line one\nline two\n" * 10_000  # bigger than the JSON body limit
    started = await client.post(
        f"{server.url}/api/ingest",
        headers=server.auth(),
        files={"file": ("test.txt", content, "text/plain")},
        data={"metadata": '{"source": "curl"}'},
    )
    assert started.status_code == 202
    job_id = started.json()["job_id"]
    assert started.json() == {"job_id": job_id, "status": "queued"}
    async with connect(ws_url(server, job_id, server.token())) as ws:
        messages = await receive_until_closed(ws)
        assert ws.close_code == 1000
    assert all(set(message) == FIELDS for message in messages)
    assert messages[-1]["status"] == "completed" and messages[-1]["progress"] == 100
    assert {m["status"] for m in messages[:-1]} <= {"queued", "processing"}
    progress = [m["progress"] for m in messages]
    assert progress == sorted(progress)
    sha256 = hashlib.sha256(content).hexdigest()
    final = messages[-1]
    assert (final["sha256"], final["size"], final["filename"]) == (sha256, len(content), "test.txt")
    assert final["metadata"] == {"source": "curl"}
    assert final["result"] == {
        "metadata_keys": ["source"],
        "sha256": sha256,
        "size": len(content),
        "lines": 20_000,
    }
    polled = await client.get(f"{server.url}/api/status/{job_id}", headers=server.auth())
    assert polled.json() == final
    # Connecting after the end: the final status at once, then the close.
    async with connect(ws_url(server, job_id, server.token())) as ws:
        assert await receive_until_closed(ws, timeout=2) == [final]


async def test_json_and_form_metadata_without_a_file(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    as_json = await client.post(
        f"{server.url}/api/ingest",
        headers=server.auth(),
        json={"metadata": '{"test": "data"}'},
    )
    as_form = await client.post(  # what PowerShell's Invoke-RestMethod -Body @{...} sends
        f"{server.url}/api/ingest", headers=server.auth(), data={"metadata": "{}"}
    )
    for started, metadata in ((as_json, {"test": "data"}), (as_form, {})):
        assert started.status_code == 202
        async with connect(ws_url(server, started.json()["job_id"], server.token())) as ws:
            final = (await receive_until_closed(ws))[-1]
        assert final["status"] == "completed" and final["metadata"] == metadata
        assert final["sha256"] is None and final["filename"] is None


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"metadata": "{not json"}, "not valid JSON"),
        ({"metadata": "[1, 2]"}, "JSON object"),
        ([1], "metadata"),
    ],
)
async def test_bad_metadata_is_422(
    server: LiveServer, client: httpx.AsyncClient, body: object, reason: str
) -> None:
    response = await client.post(f"{server.url}/api/ingest", headers=server.auth(), json=body)
    assert response.status_code == 422 and reason in response.json()["message"]


async def test_json_bodies_keep_their_size_limit_on_the_upload_route(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    big = {"metadata": '{"x": "' + "a" * 70_000 + '"}'}
    response = await client.post(f"{server.url}/api/ingest", headers=server.auth(), json=big)
    assert response.status_code == 413


async def test_tokens_and_ownership(server: LiveServer, client: httpx.AsyncClient) -> None:
    assert (await client.post(f"{server.url}/api/ingest", json={})).status_code == 401
    job_id = (await client.post(f"{server.url}/api/ingest", headers=server.auth(), json={})).json()[
        "job_id"
    ]
    url = f"{server.url}/api/status/{job_id}"
    assert (await client.get(url)).status_code == 401
    assert (await client.get(url, headers=server.auth("mallory"))).status_code == 404
    service = server.auth("auditor", role="service")
    assert (await client.get(url, headers=service)).status_code == 200
    unknown = await client.get(f"{server.url}/api/status/nope", headers=server.auth())
    assert unknown.status_code == 404
    for token, code in ((server.token("mallory"), 4404), ("forged", 4401)):
        async with connect(ws_url(server, job_id, token)) as ws:
            (error,) = await receive_until_closed(ws)
            assert ws.close_code == code and error["op"] == "error"


async def test_the_front_end_is_served_with_react(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    page = await client.get(f"{server.url}/")
    assert page.status_code == 200 and "/app/vendor/react.production.min.js" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    for name in ("app.js", "app.css", "vendor/react.production.min.js"):
        assert (await client.get(f"{server.url}/app/{name}")).status_code == 200
    assert (await client.get(f"{server.url}/app/../app.py")).status_code == 404
    vendored = Path(__file__).parents[2] / "examples/ingest/static/vendor"
    assert '"18.3.1"' in (vendored / "react.production.min.js").read_text()
