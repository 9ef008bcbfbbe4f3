"""``deploy/nginx/jobcast.conf`` in front of real jobcast servers, on Debian's nginx.

The committed site file is rendered with the test's ports (and, to prove that heartbeats keep
idle streams alive, a read timeout of one second instead of an hour), then run by a real nginx
in the foreground with its own prefix, pid and logs. When nginx is missing the tests fail with
the fix in the message: CI installs it (.ci/run).
"""

from __future__ import annotations

import asyncio
import gc
import getpass
import os
import re
import shutil
import socket
import statistics
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.typing import Origin

from jobcast.server.app import create_app
from tests.support import EventStream, LiveServer, make_settings, wait_until
from tests.ws_support import receive, receive_until_closed, send

SITE = Path(__file__).parent.parent / "deploy" / "nginx" / "jobcast.conf"
#: The proxy read timeout the tests run with: five heartbeats (0.2 s) fit in it.
READ_TIMEOUT_S = 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def nginx_binary() -> str:
    found = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(found).exists():
        pytest.fail(
            "nginx is not installed: run `apt-get install -y nginx` (.ci/run does)", pytrace=False
        )
    return found


def render_site(site: str, *, port: int, upstreams: list[int]) -> str:
    """The committed site with the test's ports; each substitution must still apply."""

    def sub(pattern: str, replacement: str, text: str, count: int) -> str:
        result, found = re.subn(pattern, replacement, text, flags=re.MULTILINE)
        assert found == count, f"{SITE.name} changed: {pattern!r} matched {found}, not {count}"
        return result

    servers = "".join(f"    server 127.0.0.1:{p} max_fails=1 fail_timeout=5s;\n" for p in upstreams)
    site = sub(r"^    server 127\.0\.0\.1:\d+ .*;\n", "", site, 2)
    site = sub(r"^(upstream jobcast \{\n(?:    #.*\n)*)", rf"\g<1>{servers}", site, 1)
    site = sub(r"^    listen 80;$", f"    listen 127.0.0.1:{port};", site, 1)
    site = sub(r"^    listen \[::\]:80;\n", "", site, 1)
    return sub(r"proxy_(read|send)_timeout 1h;", rf"proxy_\1_timeout {READ_TIMEOUT_S}s;", site, 2)


class Nginx:
    """nginx in the foreground with everything under ``prefix``; not the system service."""

    def __init__(self, prefix: Path, upstreams: list[int]) -> None:
        self.prefix = prefix
        self.port = free_port()
        prefix.mkdir(parents=True, exist_ok=True)
        (prefix / "jobcast.conf").write_text(
            render_site(SITE.read_text(), port=self.port, upstreams=upstreams)
        )
        # As root, nginx's workers would switch to `nobody`, who cannot enter the test's
        # private temporary directory.
        user = f"user {getpass.getuser()};" if os.geteuid() == 0 else ""
        temp = " ".join(
            f"{kind}_temp_path {prefix / kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        (prefix / "nginx.conf").write_text(
            f"daemon off;\n{user}\nworker_processes 1;\npid {prefix / 'nginx.pid'};\n"
            f"error_log {prefix / 'error.log'} info;\nevents {{ worker_connections 512; }}\n"
            f"http {{\n  access_log {prefix / 'access.log'};\n  {temp}\n"
            f"  include {prefix / 'jobcast.conf'};\n}}\n"
        )
        self.process = subprocess.Popen(
            [nginx_binary(), "-p", str(prefix), "-c", str(prefix / "nginx.conf"),
             "-e", str(prefix / "error.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while not self._listening():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"nginx did not start: {self.errors()}")
            time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _listening(self) -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    def errors(self) -> str:
        log = self.prefix / "error.log"
        return log.read_text() if log.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


def start(data_dir: Path) -> LiveServer:
    settings = make_settings(data_dir=data_dir, heartbeat_interval=0.2)
    return LiveServer(create_app(settings)).start()


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = start(tmp_path_factory.mktemp("jobcast"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, upstream: LiveServer) -> Iterator[Nginx]:
    nginx = Nginx(tmp_path_factory.mktemp("nginx"), [upstream.port])
    yield nginx
    nginx.stop()


async def publish_to_receive(
    client: httpx.AsyncClient, url: str, stream: EventStream, headers: dict[str, str], n: int
) -> float:
    """Seconds from publishing event ``n`` through ``url`` until ``stream`` delivers it."""

    async def received() -> tuple[str | None, float]:
        frame = await stream.next(timeout=5)
        return frame.data, time.perf_counter()

    receiving = asyncio.create_task(received())
    sent = time.perf_counter()
    event = {"topic": "lat", "type": "tick", "data": n}
    response = await client.post(f"{url}/api/events", json=event, headers=headers)
    assert response.status_code == 202
    data, arrived = await receiving
    assert data == str(n)
    return arrived - sent


async def test_events_cross_the_proxy_within_100_ms(
    proxy: Nginx, upstream: LiveServer, client: httpx.AsyncClient
) -> None:
    publish = upstream.auth("worker", "service")
    async with EventStream(
        client, f"{proxy.url}/api/events", params={"topic": "lat"}, headers=upstream.auth()
    ) as stream:
        assert stream.response is not None and stream.response.status_code == 200
        # One event first, unmeasured: the first publish also creates the topic's history.
        await publish_to_receive(client, proxy.url, stream, publish, -1)
        # The server runs in a thread of this process: a full collection of the test process's
        # heap (hundreds of ms late in the suite) would stall both ends; it is not the proxy.
        gc.disable()
        try:
            latencies = [
                await publish_to_receive(client, proxy.url, stream, publish, n) for n in range(20)
            ]
        finally:
            gc.enable()
    print(
        f"publish -> receive through nginx: median {statistics.median(latencies) * 1000:.1f} ms, "
        f"max {max(latencies) * 1000:.1f} ms over {len(latencies)} events"
    )
    assert max(latencies) < 0.1, latencies


async def test_heartbeats_keep_an_idle_stream_open_past_the_proxy_read_timeout(
    proxy: Nginx, upstream: LiveServer, client: httpx.AsyncClient
) -> None:
    async with EventStream(
        client,
        f"{proxy.url}/api/events",
        params={"topic": "idle"},
        headers=upstream.auth(),
        comments=True,
    ) as stream:
        opened = time.monotonic()
        heartbeats = 0
        while time.monotonic() - opened < 3 * READ_TIMEOUT_S:
            frame = await stream.next(timeout=READ_TIMEOUT_S)
            heartbeats += frame.comment == "ping"
        assert heartbeats >= 5
        await client.post(
            f"{proxy.url}/api/events",
            json={"topic": "idle", "type": "t", "data": "still here"},
            headers=upstream.auth("worker", "service"),
        )
        while (frame := await stream.next()).comment is not None:
            pass
        assert frame.data == '"still here"'


async def test_websockets_upgrade_through_the_proxy(
    proxy: Nginx, upstream: LiveServer, client: httpx.AsyncClient
) -> None:
    ws_base = proxy.url.replace("http", "ws")
    origin = Origin(proxy.url)
    # A browser's Origin: accepted only because the proxy forwards the Host with its port.
    async with connect(f"{ws_base}/ws/events?token={upstream.token()}", origin=origin) as ws:
        assert ws.response is not None and ws.response.status_code == 101
        await send(ws, {"op": "subscribe", "topics": ["ws/1"]})
        assert (await receive(ws))["op"] == "subscribed"
        published = await client.post(
            f"{proxy.url}/api/events",
            json={"topic": "ws/1", "type": "t", "data": {"n": 1}},
            headers=upstream.auth("worker", "service"),
        )
        message = await receive(ws)
        assert message["id"] == published.json()["id"] and message["data"] == {"n": 1}
        # Idle past the proxy's read timeout: the server's pings keep the tunnel open.
        opened = time.monotonic()
        while time.monotonic() - opened < 2 * READ_TIMEOUT_S:
            assert (await receive(ws, timeout=READ_TIMEOUT_S))["op"] == "ping"

    job = await client.post(
        f"{proxy.url}/api/jobs",
        json={"kind": "demo", "params": {"steps": 3, "delay": 0.05}},
        headers=upstream.auth(),
    )
    assert job.status_code == 202
    async with connect(
        f"{ws_base}/ws/jobs/{job.json()['id']}?token={upstream.token()}", origin=origin
    ) as ws:
        assert ws.response is not None and ws.response.status_code == 101
        messages = await receive_until_closed(ws)
        assert ws.close_code == 1000
    assert messages[0]["type"] == "snapshot" and messages[-1]["type"] == "succeeded"


async def test_streams_refused_by_a_draining_instance_open_on_the_next(
    tmp_path: Path, client: httpx.AsyncClient
) -> None:
    draining, healthy = start(tmp_path / "a"), start(tmp_path / "b")
    nginx = Nginx(tmp_path / "nginx", [draining.port, healthy.port])
    try:
        draining.call(draining.jc.hub.drain)
        await wait_until(lambda: draining.jc.hub.draining)
        assert (await client.get(f"{draining.url}/ready")).status_code == 503
        streams = [
            EventStream(
                client,
                f"{nginx.url}/api/events",
                params={"topic": "x"},
                headers=healthy.auth(),
                comments=True,
            )
            for _ in range(4)
        ]
        for stream in streams:  # round robin would send half of them to the draining one
            await stream.__aenter__()
            assert stream.response is not None and stream.response.status_code == 200
            assert (await stream.next()).comment == "ping"
        assert healthy.jc.hub.subscriber_count == 4
        for stream in streams:
            await stream.__aexit__(None, None, None)
    finally:
        nginx.stop()
        draining.stop()
        healthy.stop()
