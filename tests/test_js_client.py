"""The JavaScript client (``static/jobcast.js``) in a real browser against real servers:
backoff, parsing, reconnection with resume and fresh tickets, reauth, fatal errors, WebSocket."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page

from tests.browser_support import chromium, open_page, start_server
from tests.support import LiveServer

# Loads the module into the page as `window.jc`, with helpers the tests read back.
SETUP = """async () => {
  window.jc = await import('/static/jobcast.js');
  window.events = []; window.states = []; window.errors = []; window.resets = [];
  window.reauths = 0; window.urls = []; window.tickets = 0; window.done = null;
  window.handlers = {
    onEvent: (e) => events.push([e.type, e.id, e.data]),
    onConnection: (s) => states.push(s),
    onError: (e) => errors.push([e.status || 0, e.fatal || false, e.message]),
    onReset: (d) => resets.push(d),
    onReauth: () => { reauths += 1; },
    onDone: (job) => { window.done = job; },
  };
  const base = window.EventSource;
  window.RecordingEventSource = class extends base {
    constructor(url, o) { super(url, o); urls.push(String(url)); }
  };
  window.countingFetch = (url, init) => {
    if (String(url).includes('/api/auth/ticket')) tickets += 1;
    return fetch(url, init);
  };
}"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as browser:
        yield browser


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    server = start_server(tmp_path / "data", jwt_leeway_seconds=0)
    yield server
    server.stop()


@pytest.fixture
def page(browser: Browser, server: LiveServer) -> Iterator[Page]:
    with open_page(browser) as page:
        page.goto(server.url + "/static/jobcast.js")  # any page of the server's origin
        page.evaluate(SETUP)
        yield page


def publish(server: LiveServer, topic: str, data: Any, type_: str = "note") -> str:
    response = httpx.post(
        server.url + "/api/events",
        json={"topic": topic, "type": type_, "data": data},
        headers=server.auth("worker", "service"),
    )
    response.raise_for_status()
    event_id: str = response.json()["id"]
    return event_id


def wait_for(page: Page, expression: str) -> Any:
    """Wait (with Playwright's timeout) until ``expression`` is truthy in the page."""
    return page.wait_for_function(expression).json_value()


def test_backoff_is_exponential_with_full_jitter_and_a_cap(page: Page) -> None:
    ceilings = page.evaluate(
        "[0,1,2,3,4,5,6].map(i => jc.backoffDelay(i, {initialMs: 100, maxMs: 1000}, () => 1))"
    )
    assert ceilings == [100, 200, 400, 800, 1000, 1000, 1000]
    assert page.evaluate("jc.backoffDelay(5, {}, () => 0)") == 0
    samples = page.evaluate("Array.from({length: 500}, () => jc.backoffDelay(3))")
    assert all(0 <= s < 8000 for s in samples)
    assert len(set(samples)) > 100  # jitter: not one value


def test_the_sse_parser_follows_the_spec_across_chunks(page: Page) -> None:
    frames = page.evaluate(
        """() => {
          const parse = jc.sseParser();
          const chunks = ['retry: 3000\\n\\nid: e-1\\r\\nevent: no', 'te\\ndata: {"a":\\n',
                          'data: 1}\\n\\n: ping\\n\\ndata:x\\n', '\\n'];
          return chunks.flatMap(c => parse(c)).map(
            f => [f.type, f.id, f.data.join('\\n'), f.retry, f.comments]);
        }"""
    )
    assert frames == [
        ["", None, "", 3000, []],
        ["note", "e-1", '{"a":\n1}', None, []],
        ["", None, "", None, ["ping"]],
        ["", None, "x", None, []],
    ]


def test_a_restart_resumes_after_the_last_event_with_a_fresh_ticket(
    page: Page, server: LiveServer, tmp_path: Path
) -> None:
    page.evaluate("t => { window.token = t }", server.token("alice"))
    page.evaluate(
        """() => { window.stream = jc.subscribe(['notes/1'], handlers, {
             token: () => window.token, types: ['note'], EventSource: RecordingEventSource,
             fetch: countingFetch, backoff: {initialMs: 3000, maxMs: 3000}, random: () => 1,
           }); }"""
    )
    wait_for(page, "stream.state === 'open'")
    first = publish(server, "notes/1", {"n": 1})
    wait_for(page, "events.length === 1")

    port = server.port
    server.stop()
    wait_for(page, "stream.state === 'reconnecting'")
    restarted = start_server(tmp_path / "data", port=port)
    try:
        # Published while the client waits to reconnect: it must get them from history.
        publish(restarted, "notes/1", {"n": 2})
        publish(restarted, "notes/1", {"n": 3})
        wait_for(page, "stream.state === 'open' && events.length === 3")
        publish(restarted, "notes/1", {"n": 4})
        wait_for(page, "events.length === 4")
        page.evaluate("stream.close()")
        events = page.evaluate("events")
        urls = page.evaluate("urls")
    finally:
        restarted.stop()
    assert [e[2]["n"] for e in events] == [1, 2, 3, 4]  # no gap, no duplicate
    assert f"last_event_id={first}" in urls[-1]
    tickets = [url.split("ticket=")[1].split("&")[0] for url in urls]
    assert len(set(tickets)) == len(tickets) >= 2  # a fresh ticket for every connection
    states = page.evaluate("states")
    assert states[:2] == ["connecting", "open"]
    assert "reconnecting" in states
    assert states[-2:] == ["open", "closed"]


def test_reauth_is_surfaced_and_the_stream_resumes_with_a_new_credential(
    page: Page, server: LiveServer
) -> None:
    page.evaluate("t => { window.token = t }", server.token("alice", ttl=2))
    page.evaluate(
        """() => { window.stream = jc.subscribe(['notes/2'], handlers, {
             token: () => window.token, types: ['note'], EventSource: RecordingEventSource,
           }); }"""
    )
    wait_for(page, "stream.state === 'open'")
    page.evaluate("t => { window.token = t }", server.token("alice", ttl=3600))
    wait_for(page, "reauths === 1 && urls.length === 2 && stream.state === 'open'")
    publish(server, "notes/2", {"after": "reauth"})
    assert wait_for(page, "events.length === 1 && events[0][2].after") == "reauth"


def test_a_reset_is_surfaced(page: Page, server: LiveServer) -> None:
    page.evaluate("t => { window.token = t }", server.token("alice"))
    page.evaluate(
        """() => { window.stream = jc.subscribe(['notes/3'], handlers, {
             token: () => window.token, lastEventId: 'another-epoch-7',
           }); }"""
    )
    assert wait_for(page, "resets.length === 1 && resets[0].reason")


def test_watch_job_follows_a_job_to_its_end(page: Page, server: LiveServer) -> None:
    job = httpx.post(
        server.url + "/api/jobs",
        json={"kind": "demo", "params": {"steps": 5, "delay": 0.05}},
        headers=server.auth("alice"),
    ).json()
    page.evaluate(
        """([id, t]) => { window.stream = jc.watchJob(id, handlers, {token: t}); }""",
        [job["id"], server.token("alice")],
    )
    final = wait_for(page, "window.done")
    assert final["state"] == "succeeded"
    assert final["progress"] == 100
    types = [e[0] for e in page.evaluate("events")]
    assert types[0] == "snapshot"
    assert types[-1] == "succeeded"
    wait_for(page, "stream.state === 'closed'")


def test_watching_a_job_one_may_not_see_stops_with_a_404(page: Page, server: LiveServer) -> None:
    job = httpx.post(
        server.url + "/api/jobs",
        json={"kind": "demo", "params": {"steps": 1, "delay": 0}},
        headers=server.auth("bob"),
    ).json()
    page.evaluate(
        """([id, t]) => { window.stream = jc.watchJob(id, handlers, {token: t}); }""",
        [job["id"], server.token("alice")],
    )
    wait_for(page, "stream.state === 'closed'")
    assert page.evaluate("errors")[-1][:2] == [404, True]
    assert page.evaluate("events") == []


def test_the_websocket_transport(page: Page, server: LiveServer) -> None:
    job = httpx.post(
        server.url + "/api/jobs",
        json={"kind": "demo", "params": {"steps": 3, "delay": 0.05}},
        headers=server.auth("alice"),
    ).json()
    page.evaluate(
        """([id, t]) => {
             window.stream = jc.watchJob(id, handlers, {token: t, transport: 'ws'});
             window.hub = jc.subscribe(['notes/4'], {
               onEvent: (e) => { window.wsEvent = [e.topic, e.type, e.data]; },
             }, {token: t, transport: 'ws'});
           }""",
        [job["id"], server.token("alice")],
    )
    assert wait_for(page, "window.done")["state"] == "succeeded"
    wait_for(page, "hub.state === 'open'")
    publish(server, "notes/4", {"via": "ws"})
    assert wait_for(page, "window.wsEvent") == ["notes/4", "note", {"via": "ws"}]


def test_submit_job_uploads_a_file_with_progress(page: Page, server: LiveServer) -> None:
    result = page.evaluate(
        """async (t) => {
             const seen = [];
             const file = new File(['x'.repeat(1 << 20)], 'x.txt', {type: 'text/plain'});
             const job = await jc.submitJob('ingest', {}, {
               token: t, file, onUploadProgress: (p) => seen.push(p.fraction) });
             return [job.kind, job.input.size, seen[seen.length - 1]];
           }""",
        server.token("alice"),
    )
    assert result == ["ingest", 1 << 20, 1]


def test_the_fetch_transport_honours_a_closing_retry_hint(page: Page) -> None:
    # A fake server: each response ends after its frames; the backoff alone would be 0 ms.
    page.evaluate(
        """() => {
             const bodies = [': hi\\nretry: 3000\\n\\ndata: 1\\nid: e-1\\n\\nretry: 1200\\n\\n',
                             'data: 2\\nid: e-2\\n\\n', 'data: 3\\nid: e-3\\n\\n'];
             window.calls = [];
             const fakeFetch = async (url) => {
               calls.push([performance.now(), String(url)]);
               const text = bodies.shift() ?? '';
               return new Response(text, {headers: {'content-type': 'text/event-stream'}});
             };
             window.seen = [];
             window.stream = jc.subscribe(['notes/5'], {onEvent: (e) => seen.push(e.data)},
               {transport: 'fetch', fetch: fakeFetch, random: () => 0});
           }"""
    )
    wait_for(page, "seen.length === 3")
    page.evaluate("stream.close()")
    assert page.evaluate("seen") == [1, 2, 3]
    calls = page.evaluate("calls")
    assert calls[1][0] - calls[0][0] >= 1150  # the server's closing hint
    assert calls[2][0] - calls[1][0] < 1000  # no hint: the backoff (0 here)
    assert "last_event_id=e-2" in calls[2][1]
