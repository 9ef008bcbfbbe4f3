"""Browsers across JOBCAST_MAX_STREAM_SECONDS cuts, in Chromium: a plain ``EventSource`` (no
SDK) and ``jobcast.js`` over each transport receive every event exactly once, in order."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx

from tests.browser_support import chromium, open_page, start_server

LIMIT = 1.0  # seconds; events are published for more than two of them
COUNT = 30

# Four consumers of topic "cut" in one page, all resuming after the seed event.
CONSUMERS = """async ([token, seed]) => {
  const jc = await import('/static/jobcast.js');
  window.got = {plain: [], sse: [], fetch: [], ws: []};
  window.opens = 0;
  const plain = new EventSource(
    `/api/events?topic=cut&token=${token}&last_event_id=${encodeURIComponent(seed)}`);
  plain.addEventListener('open', () => { window.opens += 1; });
  plain.addEventListener('tick', (e) => got.plain.push([e.lastEventId, JSON.parse(e.data)]));
  for (const transport of ['sse', 'fetch', 'ws']) {
    jc.subscribe(['cut'], {
      onEvent: (e) => { if (e.type === 'tick') got[transport].push([e.id, e.data]); },
    }, {token, transport, types: ['tick'], lastEventId: seed,
        backoff: {initialMs: 100, maxMs: 200}});
  }
}"""


def test_every_browser_client_resumes_across_cuts_without_loss(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data", max_stream_seconds=LIMIT, heartbeat_interval=0.2,
                          retry_ms=100)  # fmt: skip
    publish = server.auth("worker", "service")
    url = f"{server.url}/api/events"
    try:
        seed = httpx.post(url, json={"topic": "cut", "type": "tick", "data": -1}, headers=publish)
        with chromium() as browser, open_page(browser) as page:
            page.goto(server.url + "/static/jobcast.js")  # any page of the server's origin
            page.evaluate(CONSUMERS, [server.token("alice"), seed.json()["id"]])
            ids: list[str] = []

            def publish_paced() -> None:
                for n in range(COUNT):
                    response = httpx.post(
                        url, json={"topic": "cut", "type": "tick", "data": n}, headers=publish
                    )
                    ids.append(response.json()["id"])
                    time.sleep(2.5 * LIMIT / COUNT)  # pacing, not synchronisation

            publisher = threading.Thread(target=publish_paced)
            publisher.start()
            publisher.join(20)
            page.wait_for_function(
                f"Object.values(got).every(list => list.length >= {COUNT})", timeout=15_000
            )
            got = page.evaluate("got")
            opens = page.evaluate("opens")
    finally:
        server.stop()
    expected = [[event_id, n] for n, event_id in enumerate(ids)]
    for name in ("plain", "sse", "fetch", "ws"):
        assert got[name] == expected, name
    assert opens >= 3  # the plain EventSource was cut at least twice and reconnected by itself
