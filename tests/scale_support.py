"""Processes for the scale-out tests: `jobcast serve` and `jobcast worker` subprocesses, a
private redis-server that a test may restart, and a TCP proxy that can cut a database off."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from tests.support import SECRET, eventually

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def jobcast_env(**settings: Any) -> dict[str, str]:
    """The environment of a jobcast process: JOBCAST_<NAME> for each setting."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBCAST_")}
    # This tree's jobcast, whatever is installed, and `--handlers tests.worker_handlers`.
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT)])
    env["JOBCAST_JWT_SECRET"] = SECRET
    for name, value in settings.items():
        env[f"JOBCAST_{name.upper()}"] = str(value)
    return env


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 15) -> None:
    """Return once something accepts connections on ``port`` (the process started)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)  # polling for a port: there is no event to wait on
    raise TimeoutError(f"nothing listens on port {port} after {timeout} s")


class Processes:
    """Starts subprocesses and stops every one of them (by pid) at teardown."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.started: list[subprocess.Popen[bytes]] = []
        self._logs: list[Any] = []

    def spawn(
        self, args: list[str], env: dict[str, str], name: str, *, session: bool = False
    ) -> subprocess.Popen[bytes]:
        """``session``: in a session of its own, so a signal to its group takes its children."""
        log = (self.tmp / f"{name}.log").open("wb")
        self._logs.append(log)
        process = subprocess.Popen(
            args, env=env, cwd=self.tmp, stdout=log, stderr=log, start_new_session=session
        )
        self.started.append(process)
        return process

    def serve(self, name: str, **settings: Any) -> str:
        """A `jobcast serve` process; returns its base URL once it listens."""
        port = free_port()
        settings.setdefault("data_dir", self.tmp / name)
        args = [sys.executable, "-m", "jobcast", "serve", "--port", str(port)]
        process = self.spawn(args, jobcast_env(**settings), name)
        wait_for_port(port, process)
        return f"http://127.0.0.1:{port}"

    def worker(self, name: str, **settings: Any) -> subprocess.Popen[bytes]:
        args = [sys.executable, "-m", "jobcast", "worker", "--log-level", "info"]
        return self.spawn(args, jobcast_env(**settings), name)

    def redis(self, port: int, data_dir: Path, *, persist: bool) -> subprocess.Popen[bytes]:
        """A private redis-server (the shared one is never restarted by a test)."""
        data_dir.mkdir(parents=True, exist_ok=True)
        args = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", ""]
        args += ["--dir", str(data_dir), "--appendonly", "yes" if persist else "no"]
        process = self.spawn(args, dict(os.environ), f"redis-{port}")
        wait_for_port(port, process)
        return process

    def cluster(
        self, nodes: int, *, replicas: int = 0, node_timeout_ms: int = 15000
    ) -> dict[int, subprocess.Popen[bytes]]:
        """A Redis Cluster of ``nodes`` private redis-servers, ``replicas`` per primary, every
        slot assigned; returns each node's process by port, once the cluster says ok."""
        started: dict[int, subprocess.Popen[bytes]] = {}
        for _ in range(nodes):
            port = free_port()
            data = self.tmp / f"node-{port}"
            data.mkdir()
            args = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", ""]
            args += ["--cluster-enabled", "yes", "--dir", str(data), "--appendonly", "no"]
            args += ["--cluster-node-timeout", str(node_timeout_ms)]
            args += ["--cluster-port", str(free_port())]  # port + 10000 may not exist
            started[port] = self.spawn(args, dict(os.environ), f"node-{port}")
            wait_for_port(port, started[port])
        create = ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in started)]
        subprocess.run(
            [*create, "--cluster-replicas", str(replicas), "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=30,
        )
        first = next(iter(started))

        def ok() -> bool:
            info = subprocess.run(
                ["redis-cli", "-p", str(first), "CLUSTER", "INFO"],
                capture_output=True,
                timeout=5,
                text=True,
            ).stdout
            return "cluster_state:ok" in info

        asyncio.run(eventually(ok, timeout=20, interval=0.1))
        return started

    def stop(self, process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)

    def stop_all(self) -> None:
        for process in reversed(self.started):
            self.stop(process)
        for log in self._logs:
            log.close()

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")


@contextlib.contextmanager
def processes(tmp: Path) -> Iterator[Processes]:
    procs = Processes(tmp)
    try:
        yield procs
    finally:
        procs.stop_all()


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target from its own thread and loop (the server under
    test may block the test's loop while it starts); ``cut()`` drops every connection and
    refuses new ones, as a database that went away does."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> TcpProxy:
        self._thread.start()
        listen = asyncio.start_server(self._handle, "127.0.0.1", 0)
        self._server = asyncio.run_coroutine_threadsafe(listen, self._loop).result(5)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def _cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in self._writers:
            writer.close()
        self._writers.clear()

    def cut(self) -> None:
        if self._loop.is_running():
            asyncio.run_coroutine_threadsafe(self._cut(), self._loop).result(5)

    def resume(self) -> None:
        """Accept connections again on the same port: the database is back."""
        listen = asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self._server = asyncio.run_coroutine_threadsafe(listen, self._loop).result(5)

    def stop(self) -> None:
        self.cut()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


async def poll_json(
    client: httpx.AsyncClient, url: str, predicate: Any, *, timeout: float = 10, **kwargs: Any
) -> Any:
    """GET ``url`` until ``predicate(json)`` holds: for state seen from outside."""

    async def polled() -> Any:
        response = await client.get(url, **kwargs)
        if response.status_code == 200 and predicate(body := response.json()):
            return body
        return None

    return await eventually(polled, timeout=timeout, interval=0.05)
