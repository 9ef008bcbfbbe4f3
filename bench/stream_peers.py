"""``python -m bench.stream_peers``: Durable Streams servers under one append-and-read load.

jobcast (``jobcast serve``, SQLite, a public stream prefix), the protocol's reference server
(``@durable-streams/server``, file-backed, pinned in ``bench/peers/package.json``; install
with ``npm ci --prefix bench/peers``) and ``rakaia-streams`` (PyPI, its in-memory store, on
the same uvicorn), one after the other in one run. ``--streams`` streams each have one SSE
reader (``?offset=-1&live=sse``) and one appender that posts chunks of 20 bytes back to back
(the next once the last is acknowledged) for ``--seconds``, over raw connections (a client
library would cost the shared cores more than the servers do). Reported: chunks appended and
delivered per second, server CPU per chunk (every process of the server, from ``/proc``).
Every chunk must arrive: a run that loses one fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from bench.report import print_medians
from bench.targets import HOST, ROOT, JobcastTarget, Target, free_port

CHUNK = b"tok-0123456789abcde "
PEERS = ROOT / "bench" / "peers"


@dataclass
class Server:
    """One server under test: where its streams live, and its processes' CPU seconds."""

    name: str
    streams_url: str
    target: Target


class CommandTarget(Target):
    """A server started from a command, ready once its port accepts connections."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], port: int) -> None:
        super().__init__(name)
        self.command, self.env, self.port = command, env, port

    def start(self) -> None:
        log = (self.workdir / "server.log").open("ab")
        process = subprocess.Popen(
            self.command,
            env={**os.environ, **self.env},
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        self.processes.append(process)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start:\n{self.log_tail()}")
            try:
                socket.create_connection((HOST, self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not listen within 30 s")


def jobcast() -> Server:
    target = JobcastTarget(extra={"JOBCAST_PUBLIC_STREAM_PREFIXES": "bench/"})
    target.start()
    return Server("jobcast", f"http://{HOST}:{target.ports[0]}/v1/stream/bench", target)


def reference() -> Server:
    if not (PEERS / "node_modules").is_dir():
        raise RuntimeError("the reference server needs node: npm ci --prefix bench/peers")
    port = free_port()
    target = CommandTarget(
        "reference",
        ["node", str(PEERS / "reference_server.mjs")],
        {"PORT": str(port), "DATA_DIR": ""},
        port,
    )
    target.env["DATA_DIR"] = str(target.workdir / "data")
    target.start()
    return Server("@durable-streams/server", f"http://{HOST}:{port}/bench", target)


def rakaia() -> Server:
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "rakaia:app", "--host", HOST]
    command += ["--port", str(port), "--log-level", "warning"]
    target = CommandTarget("rakaia", command, {}, port)
    target.start()
    return Server("rakaia-streams", f"http://{HOST}:{port}/bench", target)


SERVERS: dict[str, Callable[[], Server]] = {
    "jobcast": jobcast,
    "reference": reference,
    "rakaia": rakaia,
}


class Counter:
    """Chunks seen in a byte stream that arrives in pieces (a chunk may be split)."""

    def __init__(self) -> None:
        self.count = 0
        self.expected: int | None = None  # known once the appends are over
        self.complete = asyncio.Event()
        self._carry = b""

    def feed(self, data: bytes) -> None:
        buffer = self._carry + data
        self.count += buffer.count(CHUNK)
        last = buffer.rfind(CHUNK)
        rest = buffer[last + len(CHUNK) :] if last >= 0 else buffer
        self._carry = rest[-(len(CHUNK) - 1) :]
        self.check()

    def check(self) -> None:
        if self.count == self.expected:
            self.complete.set()


async def read(host: str, port: int, path: str, counter: Counter) -> None:
    """One raw SSE read from the start (no client library: the server gets the cores)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(f"GET {path}?offset=-1&live=sse HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        while data := await reader.read(65536):
            counter.feed(data)
    finally:
        writer.close()


async def append(host: str, port: int, path: str, until: float) -> int:
    """Post chunks back to back on one connection until ``until``; how many were
    acknowledged."""
    reader, writer = await asyncio.open_connection(host, port)
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(CHUNK)}\r\n\r\n"
    ).encode() + CHUNK
    count = 0
    try:
        while time.monotonic() < until:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.lower().split(b"\r\n"):
                if line.startswith(b"content-length:"):
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            if status not in (200, 204):
                raise RuntimeError(f"append answered {status}")
            count += 1
    finally:
        writer.close()
    return count


async def load(base: str, streams: int, seconds: float) -> tuple[int, float, float]:
    """Chunks appended, and the seconds until the last was appended and delivered."""
    url = httpx.URL(base)
    host, port = url.host, url.port or 80
    async with httpx.AsyncClient(timeout=30) as client:
        paths = [f"{url.path}/s{index}-{time.time_ns()}" for index in range(streams)]
        for path in paths:
            created = await client.put(
                str(url.copy_with(path=path)), headers={"Content-Type": "text/plain"}
            )
            if created.status_code not in (200, 201):
                raise RuntimeError(f"create: {created.status_code} {created.text[:200]}")
    counters = [Counter() for _ in paths]
    readers = [
        asyncio.create_task(read(host, port, p, c)) for p, c in zip(paths, counters, strict=True)
    ]
    try:
        started = time.monotonic()
        counts = await asyncio.gather(*(append(host, port, p, started + seconds) for p in paths))
        appended_in = time.monotonic() - started
        for counter, count in zip(counters, counts, strict=True):
            counter.expected = count
            counter.check()
        waiting = asyncio.gather(*(counter.complete.wait() for counter in counters))
        with contextlib.suppress(TimeoutError):  # what is missing is reported below
            await asyncio.wait_for(waiting, 30)
        delivered_in = time.monotonic() - started
        delivered = sum(c.count for c in counters)
        if delivered != sum(counts):
            raise RuntimeError(f"{delivered} of {sum(counts)} chunks delivered")
        return sum(counts), appended_in, delivered_in
    finally:
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stream_peers", description=__doc__)
    parser.add_argument("--streams", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--servers", default=",".join(SERVERS))
    args = parser.parse_args(argv)
    cpu: dict[str, list[float]] = {}
    notes: list[str] = []
    for key in args.servers.split(","):
        server = SERVERS[key]()
        try:
            for _ in range(args.repeat):
                before = server.target.stats().cpu_seconds
                chunks, appended_in, delivered_in = asyncio.run(
                    load(server.streams_url, args.streams, args.seconds)
                )
                used = server.target.stats().cpu_seconds - before
                cpu.setdefault(server.name, []).append(used / chunks * 1e6)
                notes.append(
                    f"{server.name}: {chunks / appended_in:,.0f} chunks/s appended, "
                    f"{chunks / delivered_in:,.0f} chunks/s delivered (every one)"
                )
        finally:
            server.target.stop()
    print_medians(
        shlex.join(["python", "-m", "bench.stream_peers", *sys.argv[1:]]),
        f"{args.streams} streams, one SSE reader each, appends of 20 bytes back to back for "
        f"{args.seconds:g} s",
        ("server", "µs of server CPU per chunk"),
        cpu,
        "jobcast" if "jobcast" in cpu else next(iter(cpu)),
    )
    for note in notes:
        print(f"- {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
