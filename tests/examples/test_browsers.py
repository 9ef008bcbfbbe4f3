"""The example front ends in a real browser (Chromium, driven by Playwright) against real
servers: the ingest React app over its WebSocket and its polling fallback, and the work-item
dashboard over EventSource."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Browser, WebSocketRoute, expect

from examples.ingest.app import create_app as create_ingest_app
from examples.workitems.app import create_app as create_workitems_app
from examples.workitems.app import settings_from_env
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


@pytest.fixture(scope="module")
def workitems(serve_shared: Serve, tmp_path_factory: pytest.TempPathFactory) -> LiveServer:
    settings = settings_from_env(
        data_dir=tmp_path_factory.mktemp("workitems"), jwt_secret=SECRET, _env_file=None
    )
    return serve_shared(create_workitems_app(settings))


def post_email(server: LiveServer, subject: str) -> str:
    response = httpx.post(
        f"{server.url}/api/email/intake",
        json={"from": "broker@example.com", "subject": subject, "body": "Insured: Acme Ltd"},
        headers=server.auth("mail-gateway", role="service"),
        timeout=10,
    )
    response.raise_for_status()
    workitem_id: str = response.json()["workitem_id"]
    return workitem_id


def test_the_dashboard_lists_work_items_as_they_arrive(
    browser: Browser, workitems: LiveServer
) -> None:
    earlier = post_email(workitems, "Submission received yesterday")
    with open_page(browser) as page:
        page.goto(f"{workitems.url}/")
        expect(page.locator("#connection")).to_have_text("open")
        expect(page.locator("#connection-id")).to_have_text(re.compile(r"^[0-9a-f-]{36}$"))
        items = page.locator("#workitems > li")
        expect(items).to_have_count(1)
        expect(items.first).to_have_attribute("data-id", earlier)
        live = post_email(workitems, "New submission SUB-2025-000777")
        expect(items).to_have_count(2)
        newest = items.first
        expect(newest).to_have_attribute("data-id", live)
        expect(newest.locator(".subject")).to_have_text("New submission SUB-2025-000777")
        expect(newest.locator(".ref")).to_have_text("SUB-2025-000777")
        expect(newest.locator(".fields")).to_contain_text("Acme Ltd")
