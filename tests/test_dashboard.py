"""The dashboard in a real browser (Chromium through Playwright) against real servers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, Route, expect

from tests.browser_support import chromium, open_page, screenshot, sign_in, start_server
from tests.support import LiveServer

# Playwright's sync API runs its own event loop; these tests are synchronous on purpose.


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as browser:
        yield browser


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    with open_page(browser, viewport={"width": 1100, "height": 700}) as page:
        yield page


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    server = start_server(tmp_path / "data")
    yield server
    server.stop()


def submitted_job_id(page: Page) -> str:
    link = page.locator("#submit-status a")
    expect(link).to_be_visible()
    return link.inner_text()


def test_routes_are_served_and_not_in_the_schema(server: LiveServer) -> None:
    index = httpx.get(server.url + "/")
    assert index.status_code == 200
    assert index.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in index.headers["content-security-policy"]
    client = httpx.get(server.url + "/static/jobcast.js")
    assert client.headers["content-type"].startswith("text/javascript")
    assert "export function watchJob" in client.text
    assert httpx.get(server.url + "/static/..%2Fapp.py").status_code == 404
    assert httpx.get(server.url + "/static/nothing.js").status_code == 404
    paths = httpx.get(server.url + "/openapi.json").json()["paths"]
    assert "/" not in paths
    assert not any(path.startswith("/static") for path in paths)


def test_the_js_folder_holds_the_served_module(server: LiveServer) -> None:
    # js/ is where front-end developers look for the client; it must be the module itself.
    folder = Path(__file__).parent.parent / "js"
    for name in ("jobcast.js", "jobcast.d.ts"):
        served = httpx.get(f"{server.url}/static/{name}")
        assert served.status_code == 200
        assert (folder / name).read_bytes() == served.content, name


def test_an_upload_submitted_from_the_page_reaches_100_percent(
    page: Page, server: LiveServer, tmp_path: Path
) -> None:
    sign_in(page, server)
    expect(page.locator("#connection")).to_have_attribute("data-state", "open")
    page.get_by_label("Kind").fill("ingest")
    page.get_by_label("Parameters (JSON)").fill("{}")
    content = b"line of text\n" * 200_000  # 2.6 MB: the upload bar has something to show
    page.get_by_label("File (optional").set_input_files(
        {"name": "data.txt", "mimeType": "text/plain", "buffer": content}
    )
    page.get_by_role("button", name="Submit").click()
    job_id = submitted_job_id(page)
    expect(page.locator("#upload-text")).to_have_text("100%")
    job_row = page.locator(f'tr[data-job-id="{job_id}"]')
    expect(job_row.locator(".progress-text")).to_have_text("100%")
    expect(job_row.locator(".badge")).to_have_text("succeeded")
    screenshot(page, "jobs", tmp_path)

    job_row.get_by_role("link").click()
    expect(page.locator("#job-title")).to_have_text(f"Job {job_id}")
    expect(page.locator("#job-result")).to_contain_text('"lines": 200000')
    expect(page.locator("#job-log")).to_contain_text("succeeded")
    screenshot(page, "job", tmp_path)


def test_the_page_reconnects_after_a_restart_and_shows_the_final_state(
    page: Page, server: LiveServer, tmp_path: Path
) -> None:
    sign_in(page, server)
    page.evaluate("window.notReloaded = true")
    page.get_by_label("Parameters (JSON)").fill('{"steps": 40, "delay": 0.1}')
    page.get_by_role("button", name="Submit").click()
    job_id = submitted_job_id(page)
    job_row = page.locator(f'tr[data-job-id="{job_id}"]')
    expect(job_row.locator(".badge")).to_have_text("running")
    expect(job_row.locator(".progress-text")).not_to_have_text("0%")

    port = server.port
    server.stop()
    expect(page.locator("#connection-text")).to_have_text("reconnecting")
    screenshot(page, "reconnecting", tmp_path)
    restarted = start_server(tmp_path / "data", port=port)
    try:
        expect(page.locator("#connection-text")).to_have_text("open")
        expect(job_row.locator(".badge")).to_have_text("succeeded")
        expect(job_row.locator(".progress-text")).to_have_text("100%")
        assert page.evaluate("window.notReloaded") is True
    finally:
        restarted.stop()


def test_another_users_job_never_appears(page: Page, server: LiveServer) -> None:
    sign_in(page, server, "alice")
    bobs = httpx.post(
        server.url + "/api/jobs",
        json={"kind": "demo", "params": {"steps": 3, "delay": 0.05}},
        headers=server.auth("bob"),
    ).json()
    page.get_by_label("Parameters (JSON)").fill('{"steps": 3, "delay": 0.05}')
    page.get_by_role("button", name="Submit").click()
    alices = submitted_job_id(page)
    # Bob's job was published before Alice's finished: had it leaked, it would be here by now.
    expect(page.locator(f'tr[data-job-id="{alices}"] .badge')).to_have_text("succeeded")
    expect(page.locator(f'tr[data-job-id="{bobs["id"]}"]')).to_have_count(0)
    expect(page.locator("#jobs-body tr")).to_have_count(1)
    page.goto(f"{server.url}/#/jobs/{bobs['id']}")
    expect(page.locator("#job-log")).to_contain_text("error")


def test_the_stream_inspector_shows_raw_frames(
    page: Page, server: LiveServer, tmp_path: Path
) -> None:
    sign_in(page, server)
    page.get_by_role("link", name="Stream inspector").click()
    page.get_by_label("Topics").fill("videos/42")
    page.get_by_role("button", name="Tail").click()
    frames = page.locator("#frames")
    expect(frames).to_contain_text("# open")
    httpx.post(
        server.url + "/api/events",
        json={"topic": "videos/42", "type": "video.status", "data": {"progress": 40}},
        headers=server.auth("worker", "service"),
    ).raise_for_status()
    expect(frames).to_contain_text("event: video.status")
    expect(frames).to_contain_text('data: {"progress":40}')
    screenshot(page, "inspector", tmp_path)


def test_keyboard_and_phone_sized_screen(
    browser: Browser, server: LiveServer, tmp_path: Path
) -> None:
    with open_page(browser, viewport={"width": 375, "height": 700}, is_mobile=True) as page:
        page.goto(server.url + "/")
        page.keyboard.press("Tab")  # the skip link first
        expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
        token = page.get_by_label("Access token")
        token.focus()
        token.fill(server.token("alice"))
        page.keyboard.press("Enter")
        expect(page.get_by_role("heading", name="Jobs")).to_be_visible()
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 375, f"the page scrolls sideways on a phone: {width}px"
        screenshot(page, "phone", tmp_path)


def test_cookie_session_sign_in(page: Page, server: LiveServer) -> None:
    page.goto(server.url + "/")
    page.get_by_label("Access token").fill(server.token("carol"))
    page.get_by_label("Use a cookie session").check()
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#connection")).to_have_attribute("data-state", "open")
    assert page.evaluate("sessionStorage.getItem('jobcast.token')") is None
    page.get_by_label("Parameters (JSON)").fill('{"steps": 2, "delay": 0.05}')
    page.get_by_role("button", name="Submit").click()  # a POST with the CSRF header
    job_id = submitted_job_id(page)
    expect(page.locator(f'tr[data-job-id="{job_id}"] .badge')).to_have_text("succeeded")


def test_a_failed_job_shows_its_error_and_a_running_one_can_be_cancelled(
    page: Page, server: LiveServer
) -> None:
    sign_in(page, server)
    page.get_by_label("Parameters (JSON)").fill('{"steps": 3, "delay": 0.05, "fail_at": 2}')
    page.get_by_role("button", name="Submit").click()
    page.locator("#submit-status a").click()
    expect(page.locator("#job-result")).to_contain_text("demo failure at step 2")
    expect(page.locator("#job-result")).to_have_class("failed")

    page.get_by_role("link", name="All jobs").click()
    page.get_by_label("Parameters (JSON)").fill('{"steps": 100, "delay": 0.2}')
    page.get_by_role("button", name="Submit").click()
    job_id = submitted_job_id(page)
    page.locator("#submit-status a").click()
    page.get_by_role("button", name="Cancel job").click()
    expect(page.locator("#job-log")).to_contain_text("cancelled")
    page.get_by_role("link", name="All jobs").click()
    expect(page.locator(f'tr[data-job-id="{job_id}"] .badge')).to_have_text("cancelled")


def test_progress_of_an_unknown_job_waits_for_its_snapshot(page: Page, server: LiveServer) -> None:
    """The table is a live job list: a delta of a job it does not show is skipped (the list
    has nothing to merge it into), and the job's next whole-job event shows it, with no
    request of the page's own."""
    page.goto(server.url + "/")
    page.get_by_label("Access token").fill(server.token("root", "admin"))
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#connection")).to_have_attribute("data-state", "open")
    job_id = "ffffffffffffffff00000a"
    fetched: list[Route] = []
    page.route(f"**/api/jobs/{job_id}", lambda route: fetched.append(route))

    def publish(type_: str, data: dict[str, object]) -> None:
        httpx.post(
            server.url + "/api/events",
            json={"topic": f"jobs/{job_id}", "type": type_, "data": {"id": job_id, **data}},
            headers=server.auth("worker", "service"),
        ).raise_for_status()

    for seq in (1, 2, 3):
        publish("progress", {"seq": seq, "progress": 10 * seq})
    created = "2030-01-01T00:00:00Z"
    publish("state", {"seq": 4, "kind": "demo", "state": "running", "created_at": created})
    expect(page.locator(f'tr[data-job-id="{job_id}"] .badge')).to_have_text("running")
    publish("progress", {"seq": 5, "progress": 60})
    expect(page.locator(f'tr[data-job-id="{job_id}"] .progress-text')).to_contain_text("60")
    assert fetched == []


def test_the_filter_box_shows_only_matching_jobs_live(page: Page, server: LiveServer) -> None:
    sign_in(page, server, "alice")

    def submit(tags: list[str]) -> str:
        response = httpx.post(
            server.url + "/api/jobs",
            json={"kind": "demo", "params": {"steps": 2, "delay": 0.05}, "tags": tags},
            headers=server.auth("alice"),
        )
        job_id: str = response.json()["id"]
        return job_id

    other = submit(["batch-8"])
    expect(page.locator(f'tr[data-job-id="{other}"]')).to_have_count(1)
    page.get_by_role("searchbox", name="Filter").fill("batch-7 state:succeeded")
    page.get_by_role("button", name="Apply").click()
    expect(page.locator(f'tr[data-job-id="{other}"]')).to_have_count(0)
    tagged = submit(["batch-7", "customer:42"])
    expect(page.locator(f'tr[data-job-id="{tagged}"] .badge')).to_have_text("succeeded")
    expect(page.locator("#jobs-body tr")).to_have_count(1)
    page.get_by_role("searchbox", name="Filter").fill("bad tag!")
    page.get_by_role("button", name="Apply").click()
    expect(page.locator("#filter-error")).to_contain_text("a tag is")


def test_an_expired_cookie_session_signs_out(page: Page, tmp_path: Path) -> None:
    strict = start_server(tmp_path / "strict", jwt_leeway_seconds=0)
    try:
        page.goto(strict.url + "/")
        page.get_by_label("Access token").fill(strict.token("carol", ttl=2))
        page.get_by_label("Use a cookie session").check()
        page.get_by_role("button", name="Sign in").click()
        expect(page.locator("#connection")).to_have_attribute("data-state", "open")
        expect(page.locator("#signin-error")).to_have_text("Your token was refused; sign in again.")
        expect(page.get_by_label("Access token")).to_be_visible()
    finally:
        strict.stop()


def test_the_dashboard_works_below_an_application_s_prefix(
    browser: Browser, tmp_path: Path
) -> None:
    """Installed into another app under /jobcast, the page, its files, its API calls and its
    streams all follow the mount point; the app keeps its own /."""
    from fastapi import FastAPI

    from jobcast import Jobcast
    from tests.support import make_settings

    jc = Jobcast(make_settings(data_dir=tmp_path / "data"))
    host = FastAPI(lifespan=jc.lifespan)

    @host.get("/")
    async def home() -> dict[str, str]:
        return {"host": "home"}

    jc.install(host, prefix="/jobcast")
    server = LiveServer(host).start()
    try:
        assert httpx.get(server.url + "/").json() == {"host": "home"}
        for use_cookie in (False, True):
            with open_page(browser) as page:
                page.goto(server.url + "/jobcast")  # the router adds the slash the page needs
                assert page.url == server.url + "/jobcast/"
                page.get_by_label("Access token").fill(server.token("dora", ttl=3600))
                if use_cookie:
                    page.get_by_label("Use a cookie session").check()
                page.get_by_role("button", name="Sign in").click()
                expect(page.locator("#connection")).to_have_attribute("data-state", "open")
                page.get_by_label("Parameters (JSON)").fill('{"steps": 2, "delay": 0.05}')
                page.get_by_role("button", name="Submit").click()
                job_id = submitted_job_id(page)
                badge = page.locator(f'tr[data-job-id="{job_id}"] .badge')
                expect(badge).to_have_text("succeeded")
    finally:
        server.stop()


def test_a_job_page_shows_attempts_and_retries_and_re_runs_a_finished_job(
    page: Page, tmp_path: Path
) -> None:
    server = start_server(tmp_path / "flaky", handlers=["tests.handlers"])
    try:
        job = httpx.post(  # delayed a second: the page watches before the first attempt
            f"{server.url}/api/jobs",
            json={"kind": "flaky", "params": {"succeed_on": 2}, "delay_seconds": 1},
            headers=server.auth("alice"),
        ).json()
        sign_in(page, server)
        page.goto(f"{server.url}/#/jobs/{job['id']}")
        expect(page.locator("#job-log")).to_contain_text("attempt 1 of 3 failed (ConnectionError")
        facts = page.locator("#job-facts")
        expect(facts).to_contain_text("2 of 3")
        expect(facts).to_contain_text("ConnectionError: attempt 1 lost its connection")
        expect(page.locator("#job-result")).to_contain_text('"attempt": 2')
        page.get_by_role("button", name="Re-run job").click()
        expect(page.locator("#job-facts")).to_contain_text(f"Re-run of{job['id']}")
        expect(page.locator("#job-result")).to_contain_text('"attempt": 2')
    finally:
        server.stop()


def test_a_job_waiting_for_input_shows_a_form_from_its_schema(page: Page, tmp_path: Path) -> None:
    server = start_server(tmp_path / "input", handlers=["tests.handlers"])
    try:
        sign_in(page, server, "alice")
        job = httpx.post(
            server.url + "/api/jobs",
            json={"kind": "approval", "params": {"second": True}},
            headers=server.auth("alice"),
        ).json()
        page.goto(f"{server.url}/#/jobs/{job['id']}")
        expect(page.locator("#job-input")).to_contain_text("Publish the summary?")
        page.get_by_label("approved").check()
        page.get_by_label("note").fill("looks good")
        page.get_by_role("button", name="Send input").click()
        # the next request: an enum, a single field
        expect(page.locator("#job-input h3")).to_have_text("Input: speaker")
        page.get_by_label("Value").select_option(label="ben")
        page.get_by_role("button", name="Send input").click()
        expect(page.locator("#job-facts .badge")).to_have_text("succeeded")
        result = httpx.get(f"{server.url}/api/jobs/{job['id']}", headers=server.auth()).json()
        assert result["result"] == {"approved": True, "note": "looks good", "speaker": "ben"}
        expect(page.locator("#job-input")).to_be_hidden()
    finally:
        server.stop()


def test_a_batch_page_lists_its_jobs_as_they_end(page: Page, server: LiveServer) -> None:
    sign_in(page, server, "alice")
    items = [{"kind": "demo", "params": {"steps": 2, "delay": 0.05}} for _ in range(3)]
    batch = httpx.post(
        server.url + "/api/batches", json={"jobs": items}, headers=server.auth("alice")
    ).json()
    expect(page.locator(f'tr[data-job-id="{batch["id"]}"] .badge')).to_have_text("succeeded")
    page.goto(f"{server.url}/#/jobs/{batch['id']}")
    expect(page.locator("#job-children li")).to_have_count(3)
    expect(page.locator("#job-children .badge").first).to_have_text("succeeded")
    expect(page.locator("#job-facts .badge")).to_have_text("succeeded")


def test_a_job_that_spawned_jobs_lists_them_on_its_page(page: Page, tmp_path: Path) -> None:
    server = start_server(tmp_path / "spawn", handlers=["tests.handlers"])
    try:
        sign_in(page, server, "alice")
        child = {"kind": "demo", "params": {"steps": 2, "delay": 0.05}}
        job = httpx.post(
            server.url + "/api/jobs",
            json={"kind": "fan_out", "params": {"children": [child, child]}},
            headers=server.auth("alice"),
        ).json()
        page.goto(f"{server.url}/#/jobs/{job['id']}")
        expect(page.locator("#job-facts .badge")).to_have_text("succeeded")
        expect(page.locator("#job-children li")).to_have_count(2)
        expect(page.locator("#job-children .badge").first).to_have_text("succeeded")
    finally:
        server.stop()
