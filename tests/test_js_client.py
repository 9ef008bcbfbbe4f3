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
    page.evaluate(
        "([t, fresh]) => { window.token = t; window.fresh = fresh; }",
        [server.token("alice", ttl=2), server.token("alice", ttl=3600)],
    )
    # The handler renews the token, as an application would (setting it after 'open' instead
    # races the short token's expiry on a busy machine).
    page.evaluate(
        """() => { window.stream = jc.subscribe(['notes/2'], {
             ...handlers, onReauth: () => { reauths += 1; window.token = window.fresh; },
           }, {
             token: () => window.token, types: ['note'], EventSource: RecordingEventSource,
           }); }"""
    )
    wait_for(page, "stream.state === 'open'")
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


def test_an_expired_cookie_session_ends_the_subscription(page: Page, server: LiveServer) -> None:
    # EventSource hides the 401 of the expired session: the probe must find it (J4).
    page.evaluate(
        """async (t) => {
             const answer = await fetch('/api/auth/session', {
               method: 'POST', headers: {Authorization: `Bearer ${t}`} });
             const {csrf_token} = await answer.json();
             window.stream = jc.subscribe(['notes/6'], handlers, {
               csrfToken: csrf_token, backoff: {initialMs: 100, maxMs: 100} });
           }""",
        server.token("alice", ttl=2),
    )
    wait_for(page, "stream.state === 'open'")
    wait_for(page, "stream.state === 'closed'")
    assert page.evaluate("errors")[-1][:2] == [401, True]


def test_a_websocket_watch_of_another_users_job_ends_at_once(
    page: Page, server: LiveServer
) -> None:
    job = httpx.post(
        server.url + "/api/jobs",
        json={"kind": "demo", "params": {"steps": 1, "delay": 0}},
        headers=server.auth("bob"),
    ).json()
    page.evaluate(
        """([id, t]) => {
             window.stream = jc.watchJob(id, handlers, {token: t, transport: 'ws'});
           }""",
        [job["id"], server.token("alice")],
    )
    wait_for(page, "stream.state === 'closed'")
    assert page.evaluate("errors") == [[404, True, f"no job '{job['id']}'"]]
    assert page.evaluate("stream.connections") == 1
    assert "reconnecting" not in page.evaluate("states")


def test_a_refused_websocket_subscription_ends_the_stream(page: Page) -> None:
    # No credential at all: the hub socket opens, and refuses the subscription in a reply.
    page.evaluate("window.stream = jc.subscribe(['notes/7'], handlers, {transport: 'ws'})")
    wait_for(page, "stream.state === 'closed'")
    assert page.evaluate("errors")[-1][:2] == [401, True]
    assert page.evaluate("stream.connections") == 1


def test_an_expired_token_that_is_not_renewed_ends_the_stream(
    browser: Browser, tmp_path: Path
) -> None:
    # The server's clock-skew leeway still accepts the expired token for tickets, so
    # reconnecting with it at once after `reauth` used to loop for as long as the leeway.
    lenient = start_server(tmp_path / "lenient", jwt_leeway_seconds=30)
    try:
        with open_page(browser) as page:
            page.goto(lenient.url + "/static/jobcast.js")
            page.evaluate(SETUP)
            page.evaluate(
                """(t) => { window.stream = jc.subscribe(['notes/8'], handlers, {
                     token: t, fetch: countingFetch, backoff: {initialMs: 100, maxMs: 100},
                   }); }""",
                lenient.token("alice", ttl=2),
            )
            wait_for(page, "stream.state === 'open'")
            wait_for(page, "stream.state === 'closed'")
            assert page.evaluate("errors")[-1][:2] == [401, True]
            assert 1 <= page.evaluate("reauths") <= 2
            assert page.evaluate("tickets") <= 3
    finally:
        lenient.stop()


def test_a_second_reauth_with_the_same_token_ends_the_stream(page: Page) -> None:
    # A server that ends every stream with `reauth` at once: without a new token, one backed-off
    # retry, then a 401.
    page.evaluate(
        """() => {
             window.calls = 0;
             const reauthing = async () => {
               calls += 1;
               return new Response('event: reauth\\ndata: {"reason":"credential_expired"}\\n\\n',
                                   {headers: {'content-type': 'text/event-stream'}});
             };
             window.stream = jc.subscribe(['notes/9'], handlers, {
               token: 'same', transport: 'fetch', fetch: reauthing, random: () => 0 });
           }"""
    )
    wait_for(page, "stream.state === 'closed'")
    assert page.evaluate("[calls, reauths]") == [2, 2]
    assert page.evaluate("errors") == [[401, True, "the credential expired and was not renewed"]]


def test_a_stream_closed_during_the_probe_stays_closed(page: Page) -> None:
    # An EventSource that fails before opening, and a probe answered only when the test says.
    page.evaluate(
        """() => {
             window.opened = 0;
             window.FailingEventSource = class {
               constructor() { opened += 1; setTimeout(() => this.onerror?.(), 0); }
               addEventListener() {}
               close() {}
             };
             window.probes = [];
             const heldFetch = () => new Promise((answer) => probes.push(answer));
             window.stream = jc.watchJob('j1', handlers, {
               EventSource: FailingEventSource, fetch: heldFetch, random: () => 0 });
           }"""
    )
    wait_for(page, "probes.length === 1")
    page.evaluate(
        """async () => {
             stream.close();
             probes[0](new Response('{"id": "j1"}', {status: 200}));
             // A task boundary: every promise continuation of the probe has run by then.
             await new Promise((done) => setTimeout(done, 0));
             await new Promise((done) => setTimeout(done, 0));
           }"""
    )
    assert page.evaluate("stream.state") == "closed"
    assert page.evaluate("states") == ["connecting", "closed"]
    assert page.evaluate("opened") == 1


def test_submit_job_rejects_an_answer_that_is_not_json(page: Page) -> None:
    page.route(
        "**/api/jobs",
        lambda route: route.fulfill(status=200, body="<html>a proxy page</html>"),
    )
    outcome = page.evaluate(
        """async () => {
             const file = new File(['x'], 'x.txt', {type: 'text/plain'});
             const hung = new Promise((done) => setTimeout(() => done('hung'), 5000));
             const sent = jc.submitJob('ingest', {}, {token: 't', file}).then(
               () => 'resolved', (e) => [e.name, e.status, e.message]);
             return Promise.race([sent, hung]);
           }"""
    )
    assert outcome[:2] == ["JobcastError", 200]


def test_only_a_connection_that_delivered_an_event_resets_the_backoff(page: Page) -> None:
    # Sockets that open and then close at once: opening alone must not reset the attempt count,
    # or a server that accepts and then refuses is retried without any delay, for ever.
    page.evaluate(
        """() => {
             window.attempts = [];
             window.FlakySocket = class {
               constructor() {
                 attempts.push(stream.attempt);
                 const third = attempts.length === 3;
                 setTimeout(() => {
                   this.onopen?.();
                   const event = {id: 'e-1', type: 'progress', data: {progress: 5}};
                   if (third) this.onmessage?.({data: JSON.stringify(event)});
                   this.onclose?.({code: 1011});
                 }, 0);
               }
               send() {}
               close() {}
             };
             window.stream = jc.watchJob('j2', handlers, {
               transport: 'ws', WebSocket: FlakySocket, random: () => 0 });
           }"""
    )
    wait_for(page, "attempts.length >= 5")
    page.evaluate("stream.close()")
    assert page.evaluate("attempts.slice(0, 5)") == [0, 1, 2, 1, 2]


def test_submit_options_rerun_and_a_retrying_job(page: Page, tmp_path: Path) -> None:
    server = start_server(tmp_path / "flaky", handlers=["tests.handlers"])
    try:
        page.goto(server.url + "/static/jobcast.js")
        page.evaluate(SETUP)
        result = page.evaluate(
            """async (t) => {
                 // delayed a second: the watch is attached before the first attempt starts
                 const options = {token: t, idempotencyKey: 'js-1', priority: 3, maxAttempts: 3,
                                  delaySeconds: 1};
                 const first = await jc.submitJob('flaky', {succeed_on: 2}, options);
                 const again = await jc.submitJob('flaky', {succeed_on: 2}, options);
                 const seen = [];
                 const final = await new Promise((done) => jc.watchJob(first.id, {
                   onEvent: (e) => seen.push(e.type), onDone: done }, {token: t}));
                 const rerun = await jc.rerunJob(first.id, {token: t});
                 const later = await jc.submitJob('demo', {}, {token: t, delaySeconds: 60});
                 let refused = null;
                 try { await jc.submitJob('demo', {}, {token: t, priority: 1000}); }
                 catch (e) { refused = e.status; }
                 return [first.id === again.id, first.priority, seen, final.attempts,
                         rerun.rerun_of === first.id, later.scheduled_for !== null, refused];
               }""",
            server.token("alice"),
        )
        same, priority, seen, attempts, linked, scheduled, refused = result
        assert same and priority == 3 and linked and scheduled and refused == 422
        assert "retrying" in seen and seen[-1] == "succeeded" and attempts == 2
    finally:
        server.stop()


def test_watch_jobs_keeps_a_live_list_and_give_input_answers_a_waiting_job(
    page: Page, tmp_path: Path
) -> None:
    server = start_server(tmp_path / "live", handlers=["tests.handlers"])
    try:
        page.goto(server.url + "/static/jobcast.js")
        page.evaluate(SETUP)
        token = server.token("alice", ttl=3600)
        page.evaluate(
            """(t) => {
                 window.synced = 0; window.removed = [];
                 window.list = jc.watchJobs({tag: 'review', state: ['queued', 'running']}, {
                   onSynced: () => { synced += 1; },
                   onRemove: (id, reason) => removed.push([id, reason]) }, {token: t});
                 window.wsList = jc.watchJobs({tag: 'review'}, {
                   onSynced: () => { synced += 1; } }, {token: t, transport: 'ws'});
               }""",
            token,
        )
        wait_for(page, "window.synced >= 2")
        job_id = page.evaluate(
            """async (t) => (await jc.submitJob('approval', {},
                 {token: t, tags: ['review'], metadata: {doc: 'a.pdf'}})).id""",
            token,
        )
        waiting = wait_for(page, f"list.jobs.get('{job_id}')?.waiting")
        assert waiting["name"] == "approve" and waiting["prompt"] == "Publish the summary?"
        assert page.evaluate(f"list.jobs.get('{job_id}').metadata") == {"doc": "a.pdf"}
        statuses = page.evaluate(
            """async ([id, t]) => {
                 const status = async (value) => {
                   try { await jc.giveInput(id, 'approve', value, {token: t}); return 202; }
                   catch (e) { return e.status; }
                 };
                 return [await status({approved: 'maybe'}), await status({approved: true}),
                         await status({approved: false})];
               }""",
            [job_id, token],
        )
        assert statuses == [422, 202, 409]
        # it succeeds, which leaves the filter (queued, running): removed from the list
        assert wait_for(page, f"removed.find(([id]) => id === '{job_id}')") == [job_id, "filter"]
        assert page.evaluate("list.jobs.size") == 0
        final = wait_for(
            page,
            f"wsList.jobs.get('{job_id}')?.state === 'succeeded' && wsList.jobs.get('{job_id}')",
        )
        assert final["inputs"] == {"approve": {"approved": True}}  # as given
        page.evaluate("list.close(); wsList.close()")
        batch = page.evaluate(
            """async (t) => {
                 const batch = await jc.submitBatch([{kind: 'demo', params: {steps: 1}},
                   {kind: 'demo', params: {steps: 1}}], {token: t, tags: ['js']});
                 return await new Promise((done) => jc.watchJob(batch.id, {onDone: done},
                                                                {token: t}));
               }""",
            token,
        )
        assert batch["kind"] == "batch" and batch["result"]["succeeded"] == 2
        # shared "with input", another user answers; unshared, they no longer read it
        other = server.token("dana", ttl=3600)
        page.evaluate(
            """async ([t, other]) => {
                 const job = await jc.submitJob('approval', {}, {token: t});
                 window.shared = await jc.shareJob(job.id, 'dana', {token: t, input: true});
                 window.seen = jc.watchJob(job.id, {onJob: (j) => { window.asked = j.waiting; }},
                                           {token: other});
               }""",
            [token, other],
        )
        wait_for(page, "window.asked")  # dana watches it: it waits for input
        statuses = page.evaluate(
            """async ([t, other]) => {
                 const job = window.shared;
                 await jc.giveInput(job.id, 'approve', {approved: true}, {token: other});
                 await jc.unshareJob(job.id, 'dana', {token: t});
                 let after;
                 try { await jc.getJob(job.id, {token: other}); after = 200; }
                 catch (e) { after = e.status; }
                 window.seen.close();
                 return [job.readers, after];
               }""",
            [token, other],
        )
        assert statuses == [["dana"], 404]
    finally:
        server.stop()
