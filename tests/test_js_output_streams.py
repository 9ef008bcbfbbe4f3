"""``readStream`` of ``jobcast.js`` in a real browser: a job's output, live, resumed at the byte,
over HTTP long-polls and over a WebSocket."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page

from jobcast.client import Client
from tests.browser_support import chromium, open_page, sign_in, start_server
from tests.output_handlers import chunk
from tests.support import LiveServer

READ = """async ([id, name, token, offset, transport]) => {
  const jc = await import('/static/jobcast.js');
  let sockets = 0;
  class CountingSocket extends WebSocket {
    constructor(url) { super(url); sockets += 1; }
  }
  return await new Promise((resolve) => {
    const parts = [];
    const reading = jc.readStream(id, name, {
      onText: (text) => parts.push(text),
      onMessage: (message) => parts.push(message),
      onDone: () => resolve({parts, offset: reading.offset, sockets}),
      onError: (e) => resolve({error: [e.status, e.message], sockets}),
    }, {token, offset, transport, WebSocket: CountingSocket,
        backoff: {initialMs: 50, maxMs: 300}});
  });
}"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as browser:
        yield browser


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    server = start_server(tmp_path / "data", handlers=["tests.output_handlers"])
    yield server
    server.stop()


@pytest.fixture
def page(browser: Browser, server: LiveServer) -> Iterator[Page]:
    with open_page(browser) as page:
        page.goto(server.url + "/static/jobcast.js")  # any page of the server's origin
        yield page


@pytest.mark.parametrize("transport", [None, "ws"])
def test_read_stream_follows_a_job_s_output_live_and_resumes(
    page: Page, server: LiveServer, transport: str | None
) -> None:
    token = server.token("alice", ttl=3600)
    with Client(server.url, token=token) as client:
        job = client.submit("write_chunks", {"n": 1500, "every": 300, "pause": 0.02})
        messages = client.submit("write_messages", {"n": 2})
    read = page.evaluate(READ, [job.id, "output", token, None, transport])  # before it opened
    assert "".join(read["parts"]) == "".join(chunk(i) for i in range(1500))
    again = page.evaluate(READ, [job.id, "output", token, read["offset"], transport])
    assert again["parts"] == []  # resumed at its end: nothing more
    json_read = page.evaluate(READ, [messages.id, "messages", token, None, transport])
    assert json_read["parts"] == [
        {"step": 0, "text": "step 0"},
        {"step": 1, "text": "step 1"},
        [1, 2],
    ]
    with Client(server.url, token=token) as client:  # both transports name the same offsets
        reading = client.read_stream(job.id, live=False)
        assert "".join(reading) and read["offset"] == reading.offset
    unknown = page.evaluate(READ, ["no-such-job", "output", token, None, transport])
    assert unknown["error"][0] == 404
    # An offset of another stream names data this one does not keep: gone.
    gone = page.evaluate(READ, [messages.id, "messages", token, read["offset"], transport])
    assert gone["error"][0] == 410
    if transport == "ws":
        assert read["sockets"] >= 1 and again["sockets"] == 1


def test_a_websocket_read_cut_by_the_server_again_and_again_is_byte_identical(
    page: Page, tmp_path: Path
) -> None:
    # Every stream socket ends after 0.3 s (close 1012); the job writes for about 2 s.
    server = start_server(
        tmp_path / "cut",
        handlers=["tests.output_handlers"],
        max_stream_seconds=0.3,
        heartbeat_interval=0.1,
    )
    try:
        token = server.token("alice", ttl=3600)
        with Client(server.url, token=token) as client:
            job = client.submit("write_chunks", {"n": 4000, "every": 200, "pause": 0.1})
        page.goto(server.url + "/static/jobcast.js")
        read = page.evaluate(READ, [job.id, "output", token, None, "ws"])
        assert "".join(read["parts"]) == "".join(chunk(i) for i in range(4000))
        assert read["sockets"] > 3  # each resumed at the last offset, with a fresh ticket
    finally:
        server.stop()


def test_the_dashboard_job_page_shows_its_output_live(page: Page, server: LiveServer) -> None:
    sign_in(page, server)
    with Client(server.url, token=server.token("alice")) as client:
        job = client.submit("write_chunks", {"n": 300, "every": 100, "pause": 0.05})
    page.goto(f"{server.url}/#/jobs/{job.id}")
    expected = "".join(chunk(i) for i in range(300))
    page.wait_for_function(
        "(expected) => document.getElementById('job-output').textContent === expected", arg=expected
    )


RESTART = """async ([id, token]) => {
  const jc = await import('/static/jobcast.js');
  window.fetches = 0;
  const counting = (url, init) => { window.fetches += 1; return fetch(url, init); };
  window.pending = new Promise((resolve) => {
    const parts = [];
    jc.readStream(id, 'output', {
      onText: (text) => parts.push(text),
      onDone: () => resolve(parts.join('')),
      onError: (e) => resolve({error: e.status}),
    }, {token, transport: 'ws', fetch: counting, backoff: {initialMs: 50, maxMs: 300}});
  });
}"""


def test_a_websocket_read_waits_out_a_restart_and_reads_everything(
    page: Page, server: LiveServer, tmp_path: Path
) -> None:
    token = server.token("alice", ttl=3600)
    with Client(server.url, token=token) as client:
        job = client.submit("write_chunks", {"n": 300})
        client.wait(job.id, timeout=20)
    page.evaluate("import('/static/jobcast.js')")  # loaded while the server is up
    port = server.port
    server.stop()
    page.evaluate(RESTART, [job.id, token])
    page.wait_for_function("window.fetches >= 3")  # its tickets refused: backing off
    restarted = start_server(tmp_path / "data", port=port, handlers=["tests.output_handlers"])
    try:
        assert page.evaluate("window.pending") == "".join(chunk(i) for i in range(300))
    finally:
        restarted.stop()
