"""The example front ends in a real browser (Chromium, driven by Playwright) against real
servers: the ingest React app over its WebSocket and its polling fallback, and the work-item
dashboard over EventSource."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator

import pytest
from examples.ingest.app import create_app as create_ingest_app
from playwright.sync_api import Browser, WebSocketRoute, expect

from tests.browser_support import chromium, open_page
from tests.examples.conftest import Serve
from tests.support import SECRET, LiveServer


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as browser:
        yield browser


@pytest.fixture(scope="module")
def ingest(serve_shared: Serve, tmp_path_factory: pytest.TempPathFactory) -> LiveServer:
    app = create_ingest_app(
        step_delay=0.05,
        data_dir=tmp_path_factory.mktemp("ingest"),
        jwt_secret=SECRET,
        _env_file=None,
    )
    return serve_shared(app)


def test_ingest_uploads_a_file_and_follows_it_over_the_websocket(
    browser: Browser, ingest: LiveServer
) -> None:
    content = b"first line\nsecond line\n" * 500
    token = ingest.token()
    with open_page(browser) as page:
        sockets: list[str] = []
        page.on("websocket", lambda socket: sockets.append(socket.url))
        page.goto(f"{ingest.url}/")
        page.get_by_label("API token").fill(token)
        page.get_by_label("Metadata (JSON)").fill('{"source": "browser"}')
        page.get_by_label("File (optional)").set_input_files(
            files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": content}]
        )
        page.get_by_role("button", name="Start Ingest").click()
        expect(page.locator("#status")).to_have_text("completed")
        expect(page.locator("#sha256")).to_have_text(hashlib.sha256(content).hexdigest())
        expect(page.locator("#filename")).to_have_text("notes.txt")
        expect(page.locator("#progress")).to_have_text("100%")
        expect(page.locator("#connection")).to_have_text("done")
        job_id = page.locator("#job-id").inner_text()
    assert sockets == [f"ws://{ingest.host}:{ingest.port}/ws/status/{job_id}?token={token}"]


def test_ingest_falls_back_to_polling_when_the_websocket_fails(
    browser: Browser, ingest: LiveServer
) -> None:
    with open_page(browser) as page:
        refused: list[str] = []

        def refuse(socket: WebSocketRoute) -> None:  # a proxy that drops WebSockets
            refused.append(socket.url)
            socket.close(code=1011, reason="no websockets here")

        page.route_web_socket(re.compile(r"/ws/status/"), refuse)
        polls: list[str] = []
        page.on("request", lambda r: polls.append(r.url) if "/api/status/" in r.url else None)
        page.goto(f"{ingest.url}/?ws_retries=1&backoff_ms=50&poll_ms=100")
        page.get_by_label("API token").fill(ingest.token())
        page.get_by_role("button", name="Start Ingest").click()  # metadata only
        expect(page.locator("#status")).to_have_text("completed")
        expect(page.locator("#connection")).to_have_text("done")
        expect(page.locator("#filename")).to_have_text("(metadata only)")
        assert len(refused) == 2  # the first attempt and one retry, then polling
        with page.expect_request(re.compile(r"/api/status/")):
            page.get_by_role("button", name="Poll Status").click()
        expect(page.locator("#status")).to_have_text("completed")
    assert polls and all("/api/status/" in url for url in polls)
