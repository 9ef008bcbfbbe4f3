"""The servers under test, each a real process on loopback, and how to talk to each.

A target knows how to start and stop its server(s), how to ask for a stream of some topics,
how to publish one event, and how to submit a job; ``/proc`` gives each server's CPU seconds
and resident memory. Every target serves HTTP/1.1 with the same uvicorn (uvloop, httptools)
except nchan, which is nginx, and the hand-written asyncio server (uvloop and httptools, no
ASGI), which is the Python limit.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Any
from urllib.parse import quote

import jwt
import orjson

from bench.loadgen import raise_fd_limit

HOST = "127.0.0.1"
SECRET = "benchmark-secret-that-is-long-enough-for-hs256"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def fd_limit() -> int:
    """The hard limit of open files a server started from here can raise itself to (raising
    the hard limit itself needs CAP_SYS_RESOURCE, which a container rarely grants)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return int(hard if hard != resource.RLIM_INFINITY else 1 << 20)


def mint(subject: str, role: str = "user") -> str:
    now = int(time.time())
    claims = {"sub": subject, "role": role, "iat": now, "exp": now + 24 * 3600}
    return jwt.encode(claims, SECRET, algorithm="HS256")


@dataclass
class ProcessStats:
    cpu_seconds: float
    rss_bytes: int
    system_seconds: float = 0.0  # the kernel's share of cpu_seconds (socket writes, mostly)


def process_stats(pid: int) -> ProcessStats:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    user, system = int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS
    rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_BYTES
    return ProcessStats(user + system, rss, system)


def _sum(readings: list[ProcessStats]) -> ProcessStats:
    return ProcessStats(
        sum(r.cpu_seconds for r in readings),
        sum(r.rss_bytes for r in readings),
        sum(r.system_seconds for r in readings),
    )


def request_bytes(method: str, path: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclass
class Target:
    """One system under test: start it, stream from it, publish to it."""

    name: str
    ports: list[int] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    #: How each server process was started (command, environment, health path, port), so
    #: ``restart`` can start it again the same way.
    launches: list[tuple[list[str], dict[str, str], str, int]] = field(default_factory=list)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="jobcast-bench-")))

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _spawn(self, command: list[str], env: dict[str, str], health: str, port: int) -> None:
        self.processes.append(self._launch(command, env, health, port))
        self.launches.append((command, env, health, port))
        self.ports.append(port)

    def _launch(
        self, command: list[str], env: dict[str, str], health: str, port: int
    ) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"server-{port}.log").open("ab")
        process = subprocess.Popen(
            command,
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            preexec_fn=raise_fd_limit,  # a server holding tens of thousands of streams
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://{HOST}:{port}{health}", timeout=1):
                    return process
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not answer {health} within 30 s")

    def restart(self) -> tuple[float, float, float]:
        """Stop every server process with SIGTERM, as a deploy does, and start each again on
        the same port with the same data directory. Wall-clock times: told to stop, exited,
        answering again."""
        stopping = time.time()
        for process in self.processes:
            process.send_signal(signal.SIGTERM)
        for process in self.processes:
            process.wait(60)
        exited = time.time()
        self.processes = [self._launch(*launch) for launch in self.launches]
        return stopping, exited, time.time()

    def _spawn_uvicorn(self, app: str, *options: str) -> None:
        """One uvicorn process serving ``app`` (a reference app), as jobcast's server runs."""
        port = free_port()
        command = [sys.executable, "-m", "uvicorn", app, "--host", HOST, "--port", str(port)]
        self._spawn([*command, *options, "--log-level", "warning"], {}, "/health", port)

    def log_tail(self) -> str:
        return "\n".join(
            path.read_text(errors="replace")[-2000:] for path in self.workdir.glob("*.log")
        )

    def stats(self) -> ProcessStats:
        """CPU seconds and resident memory, summed over the target's server processes."""
        return _sum([process_stats(p.pid) for p in self.processes])

    # -- protocol ----------------------------------------------------------------------------

    def stream_request(self, topics: list[str], index: int) -> bytes:
        raise NotImplementedError

    def publish_request(self, topic: str, type: str, data: dict[str, Any]) -> bytes:
        raise NotImplementedError


class JobcastTarget(Target):
    """``jobcast serve`` on the embedded default, or N instances sharing a Redis or PostgreSQL
    broker."""

    def __init__(
        self,
        name: str = "jobcast",
        *,
        instances: int = 1,
        broker_url: str = "",
        extra: dict[str, str] | None = None,
    ):
        super().__init__(name)
        self.instances = instances
        self.broker_url = broker_url
        self.extra = extra or {}  # more JOBCAST_* settings
        self.service_token = mint("bench-publisher", "service")

    def settings(self) -> dict[str, str]:
        env = {
            "JOBCAST_JWT_SECRET": SECRET,
            "JOBCAST_DATA_DIR": str(self.workdir / "data"),
            # The jobs scenario's thousand users all submit from one address: lift the per-IP
            # submission limit, nothing else (the publisher is a service, never limited).
            "JOBCAST_RATE_LIMIT_SUBMIT": "100000000/minute",
            "JOBCAST_MAX_STREAMS_TOTAL": "100000",
            "JOBCAST_JOB_CONCURRENCY": "2000",
        }
        if self.broker_url:
            env["JOBCAST_BROKER_URL"] = self.broker_url
        return {**env, **self.extra}

    def start(self) -> None:
        env = self.settings()
        for index in range(self.instances):
            if index:  # the embedded job runner is one per data directory
                env = {**env, "JOBCAST_DATA_DIR": str(self.workdir / f"data-{index}")}
            port = free_port()
            command = [sys.executable, "-m", "jobcast", "serve", "--port", str(port)]
            self._spawn([*command, "--log-level", "warning"], env, "/health", port)

    def stream_request(self, topics: list[str], index: int) -> bytes:
        query = "&".join(f"topic={quote(t, safe='/*')}" for t in topics)
        headers = {"Authorization": f"Bearer {mint(f'user-{index}')}"}
        return request_bytes("GET", f"/api/events?{query}", headers)

    def publish_request(self, topic: str, type: str, data: dict[str, Any]) -> bytes:
        body = orjson.dumps({"topic": topic, "type": type, "data": data})
        headers = {
            "Authorization": f"Bearer {self.service_token}",
            "Content-Type": "application/json",
        }
        return request_bytes("POST", "/api/events", headers, body)

    def publish_batch_request(self, events: list[tuple[str, str, dict[str, Any]]]) -> bytes:
        body = orjson.dumps([{"topic": t, "type": kind, "data": d} for t, kind, d in events])
        headers = {
            "Authorization": f"Bearer {self.service_token}",
            "Content-Type": "application/json",
        }
        return request_bytes("POST", "/api/events", headers, body)

    def job_request(self, steps: int, delay: float, token: str) -> bytes:
        body = orjson.dumps({"kind": "demo", "params": {"steps": steps, "delay": delay}})
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        return request_bytes("POST", "/api/jobs", headers, body)

    def watch_request(self, job_id: str, token: str) -> bytes:
        headers = {"Authorization": f"Bearer {token}"}
        return request_bytes("GET", f"/api/jobs/{job_id}/events", headers)


class BaselineTarget(Target):
    """The seed-style manager (``bench/baselines/seed_app.py``) under the same uvicorn."""

    def __init__(self) -> None:
        super().__init__("baseline")

    def start(self) -> None:
        self._spawn_uvicorn("bench.baselines.seed_app:app")

    def stream_request(self, topics: list[str], index: int) -> bytes:
        query = "&".join(f"topic={quote(t, safe='/')}" for t in topics)
        return request_bytes("GET", f"/events?{query}", {"Accept": "text/event-stream"})

    def publish_request(self, topic: str, type: str, data: dict[str, Any]) -> bytes:
        body = orjson.dumps({"topic": topic, "type": type, "data": data})
        return request_bytes("POST", "/broadcast", {"Content-Type": "application/json"}, body)

    def job_request(self, job_id: str, steps: int, delay: float) -> bytes:
        body = orjson.dumps({"id": job_id, "params": {"steps": steps, "delay": delay}})
        return request_bytes("POST", "/jobs", {"Content-Type": "application/json"}, body)


class FloorTarget(Target):
    """A trivial ASGI app on the same uvicorn (``bench/baselines/floor_app.py``): the floor."""

    def __init__(self, *options: str) -> None:
        super().__init__("floor")
        self.options = options  # more uvicorn options

    def start(self) -> None:
        self._spawn_uvicorn("bench.baselines.floor_app:app", *self.options)

    def stream_request(self, topics: list[str], index: int) -> bytes:
        return request_bytes("GET", "/events", {"Accept": "text/event-stream"})

    def publish_request(self, topic: str, type: str, data: dict[str, Any]) -> bytes:
        return request_bytes("POST", "/publish", {}, orjson.dumps(data))


NCHAN_CONF = Template("""
load_module /usr/lib/nginx/modules/ngx_nchan_module.so;
daemon off;
worker_processes 1;
pid $workdir/nginx.pid;
error_log $workdir/nginx-error.log warn;
events { worker_connections 65536; }  # the idle-50000 row; the open-file limit still applies
http {
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path $workdir/body;
    server {
        listen 127.0.0.1:$port;
        location = /health { return 200 "ok"; }
        location ~ ^/sub/(.+)$$ {
            nchan_subscriber eventsource;
            nchan_channel_id $$1;
            nchan_subscriber_first_message newest;
        }
        location ~ ^/pub/(.+)$$ {
            nchan_publisher;
            nchan_channel_id $$1;
            nchan_message_buffer_length 1000;
        }
    }
}
""")


def nchan_available() -> bool:
    return Path("/usr/lib/nginx/modules/ngx_nchan_module.so").exists() and bool(
        shutil.which("nginx")
    )


class NchanTarget(Target):
    """nginx with the nchan module: the C reference point (one worker process, as fair)."""

    def __init__(self) -> None:
        super().__init__("nchan")

    def start(self) -> None:
        port = free_port()
        conf = self.workdir / "nginx.conf"
        conf.write_text(NCHAN_CONF.substitute(workdir=self.workdir, port=port))
        command = ["nginx", "-p", str(self.workdir), "-c", str(conf)]
        self._spawn(command, {}, "/health", port)

    def stats(self) -> ProcessStats:
        # nginx's master forks one worker: count the worker too.
        pids = [p.pid for p in self.processes]
        for pid in list(pids):
            children = Path(f"/proc/{pid}/task/{pid}/children")
            if children.exists():
                pids += [int(c) for c in children.read_text().split()]
        return _sum([process_stats(pid) for pid in pids])

    def stream_request(self, topics: list[str], index: int) -> bytes:
        (topic,) = topics  # nchan channels are one id per location here
        path = f"/sub/{quote(topic, safe='')}"
        return request_bytes("GET", path, {"Accept": "text/event-stream"})

    def publish_request(self, topic: str, type: str, data: dict[str, Any]) -> bytes:
        body = orjson.dumps(data)
        headers = {"Content-Type": "application/json"}
        return request_bytes("POST", f"/pub/{quote(topic, safe='')}", headers, body)


class AsyncioTarget(Target):
    """The hand-written asyncio server (``bench/baselines/asyncio_server.py``): the Python limit.

    It speaks nchan's paths (``/sub/{topic}``, ``/pub/{topic}`` with the data as the body).
    """

    def __init__(self) -> None:
        super().__init__("asyncio")

    def start(self) -> None:
        port = free_port()
        command = [sys.executable, "-m", "bench.baselines.asyncio_server", str(port)]
        self._spawn(command, {}, "/health", port)

    def stream_request(self, topics: list[str], index: int) -> bytes:
        (topic,) = topics
        path = f"/sub/{quote(topic, safe='')}"
        return request_bytes("GET", path, {"Accept": "text/event-stream"})

    def publish_request(self, topic: str, type: str, data: dict[str, Any]) -> bytes:
        body = orjson.dumps(data)
        headers = {"Content-Type": "application/json"}
        return request_bytes("POST", f"/pub/{quote(topic, safe='')}", headers, body)
