"""The subscriber side of the benchmark: many SSE connections in several processes.

Each process runs uvloop with one ``asyncio.Protocol`` per connection (no stream reader, no
task per connection), so one process holds a few thousand streams. A connection sends a raw
HTTP/1.1 request, waits for the status line, then scans every received chunk with two regular
expressions: the publisher puts ``"seq"`` and ``"t"`` (its clock at publish time) into every
event's data, so each delivery gives one latency sample and one sequence number. Sequence
numbers land in a bitmap per connection, which counts loss and duplicates exactly without
assuming any order.

Decisions (cited as L1..L3):

L1. Lines are scanned only up to the last newline of what has arrived: a data line is never
    read half-way; the rest waits for the next chunk.
L2. A connection that has everything it expects stays open until the scenario ends, so the
    server does no disconnect work while others are still receiving.
L3. A "stalled" connection reads its status line and then stops reading (``pause_reading``):
    a slow consumer whose socket buffers fill up, as a phone in a tunnel would.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import re
import time
from array import array
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, cast

SEQ_AND_TIME = re.compile(rb'"seq":\s?(\d+),\s?"t":\s?([0-9.]+)')
TERMINAL = re.compile(rb"event: ?(succeeded|failed|cancelled|complete|error)\r?\n")
END_OF_BODY = b"0\r\n\r\n"  # the last chunk of a chunked response: the server ended it


@dataclass(frozen=True)
class StreamSpec:
    """One connection: its raw request, how many events it expects, and how it reads."""

    request: bytes
    expect: int = 0  # distinct seq numbers 0..expect-1; 0: until the server ends the stream
    stall: bool = False  # L3


@dataclass
class StreamResult:
    status: int = 0
    connect_seconds: float = 0.0
    received: int = 0
    duplicates: int = 0
    missing: int = 0
    terminal: int = 0
    closed_by_server: bool = False


@dataclass
class ProcessReport:
    """What one load process measured; the parent merges these."""

    streams: list[StreamResult] = field(default_factory=list)
    latencies: bytes = b""  # array('d') of seconds, one per delivery
    first_receive: float = 0.0
    last_receive: float = 0.0
    errors: list[str] = field(default_factory=list)


class SSEConnection(asyncio.Protocol):
    def __init__(self, spec: StreamSpec, process: LoadProcess) -> None:
        self.spec = spec
        self.process = process
        self.result = StreamResult()
        self.seen = bytearray(spec.expect) if spec.expect else None
        self.unique = 0
        self.head = b""
        self.tail = b""
        self.started = time.perf_counter()
        self.opened = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(self.spec.request)

    def data_received(self, data: bytes) -> None:
        if not self.opened.done():
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            status_line = self.head[: self.head.find(b"\r\n")]
            self.result.status = int(status_line.split()[1])
            self.result.connect_seconds = time.perf_counter() - self.started
            data, self.head = self.head[end + 4 :], b""
            self.opened.set_result(None)
            if self.spec.stall and self.transport is not None:
                self.transport.pause_reading()  # L3
                self.process.finished(self)
                return
        now = time.time()
        buffer = self.tail + data if self.tail else data
        cut = buffer.rfind(b"\n") + 1  # L1
        self.tail = buffer[cut:]
        if not cut:
            return
        lines = buffer[:cut]
        process = self.process
        if self.seen is not None or process.track_all:
            self._count(lines, now)
        if TERMINAL.search(lines):
            self.result.terminal += 1
        process.last_receive = now
        if buffer.endswith(END_OF_BODY) and (len(buffer) == 5 or buffer[-6:-5] == b"\n"):
            self.result.closed_by_server = True
            process.finished(self)

    def _count(self, lines: bytes, now: float) -> None:
        seen, latencies, result = self.seen, self.process.latencies, self.result
        matches = SEQ_AND_TIME.findall(lines)
        if not matches:
            return
        process = self.process
        if not process.first_receive:
            process.first_receive = now
        for seq_text, sent_text in matches:
            latencies.append(now - float(sent_text))
            result.received += 1
            if seen is None:
                continue
            seq = int(seq_text)
            if seq >= len(seen):
                result.duplicates += 1  # not a number the publisher sent to this stream
            elif seen[seq]:
                result.duplicates += 1
            else:
                seen[seq] = 1
                self.unique += 1
        if seen is not None and self.unique >= len(seen):
            process.finished(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_result(None)
        self.process.finished(self)

    def finish(self) -> StreamResult:
        if self.seen is not None:
            self.result.missing = len(self.seen) - self.unique
        return self.result


class LoadProcess:
    """The body of one load process: open every stream, report, collect, report."""

    def __init__(self, host: str, port: int, specs: list[StreamSpec], connect_parallelism: int):
        self.host, self.port = host, port
        self.specs = specs
        self.connect_parallelism = connect_parallelism
        self.latencies = array("d")
        self.track_all = any(not spec.expect for spec in specs)
        self.first_receive = 0.0
        self.last_receive = 0.0
        self.connections: list[SSEConnection] = []
        self.done: set[int] = set()
        self.all_done = asyncio.Event()
        self.errors: list[str] = []

    def finished(self, connection: SSEConnection) -> None:
        self.done.add(id(connection))
        if len(self.done) >= len(self.specs):
            self.all_done.set()

    async def open_all(self) -> float:
        loop = asyncio.get_running_loop()
        gate = asyncio.Semaphore(self.connect_parallelism)

        async def open_one(spec: StreamSpec) -> None:
            async with gate:
                connection = SSEConnection(spec, self)
                self.connections.append(connection)
                try:
                    await loop.create_connection(lambda: connection, self.host, self.port)
                    await connection.opened
                except OSError as exc:
                    self.errors.append(f"connect: {exc}")
                    self.finished(connection)

        started = time.perf_counter()
        await asyncio.gather(*(open_one(spec) for spec in self.specs))
        return time.perf_counter() - started

    def report(self) -> ProcessReport:
        return ProcessReport(
            streams=[connection.finish() for connection in self.connections],
            latencies=self.latencies.tobytes(),
            first_receive=self.first_receive,
            last_receive=self.last_receive,
            errors=self.errors[:20],
        )

    def close_all(self) -> None:
        for connection in self.connections:
            if connection.transport is not None:
                connection.transport.abort()


async def _serve(control: Connection, load: LoadProcess) -> None:
    loop = asyncio.get_running_loop()
    control.send(("ready",))
    await loop.run_in_executor(None, control.recv)  # "go": every process opens at once
    opened_in = await load.open_all()
    statuses = [c.result.status for c in load.connections]
    control.send(("connected", opened_in, statuses))
    stop = loop.run_in_executor(None, control.recv)  # "stop" from the parent, or a deadline
    done = asyncio.ensure_future(load.all_done.wait())
    await asyncio.wait([stop, done], return_when=asyncio.FIRST_COMPLETED)
    control.send(("done", load.report()))
    await stop  # the parent says when to close, so the server never sees early disconnects
    done.cancel()
    load.close_all()
    await asyncio.sleep(0)


def _process_main(
    control: Connection, host: str, port: int, specs: list[StreamSpec], parallelism: int
) -> None:
    import uvloop

    load = None
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            load = LoadProcess(host, port, specs, parallelism)
            runner.run(_serve(control, load))
    except (EOFError, KeyboardInterrupt):
        pass
    finally:
        if load is not None:
            with contextlib.suppress(Exception):
                load.close_all()


@dataclass
class Merged:
    """Every process's report, merged."""

    streams: list[StreamResult]
    latencies: array[float]
    first_receive: float
    last_receive: float
    errors: list[str]

    @property
    def received(self) -> int:
        return sum(s.received for s in self.streams)

    @property
    def duplicates(self) -> int:
        return sum(s.duplicates for s in self.streams)

    @property
    def missing(self) -> int:
        return sum(s.missing for s in self.streams)


class LoadGenerator:
    """Spreads streams over ``processes`` load processes and drives them from the parent."""

    def __init__(
        self,
        host: str,
        port: int | list[int],
        specs: list[StreamSpec],
        *,
        processes: int = 4,
        connect_parallelism: int = 64,
    ) -> None:
        ports = port if isinstance(port, list) else [port]
        self.workers: list[tuple[mp.process.BaseProcess, Connection]] = []
        ctx = mp.get_context("spawn")
        count = max(1, min(processes, len(specs)))
        for index in range(count):
            mine = specs[index::count]
            parent, child = ctx.Pipe()
            process = ctx.Process(
                target=_process_main,
                args=(child, host, ports[index % len(ports)], mine, connect_parallelism),
                daemon=True,
            )
            self.workers.append((process, parent))

    def connect(self, timeout: float) -> tuple[float, list[int]]:
        """Open every stream, all processes at once; return the wall time and every status."""
        for process, _ in self.workers:
            process.start()
        for _, control in self.workers:
            assert self._recv(control, 60) == ("ready",)
        started = time.perf_counter()
        for _, control in self.workers:
            control.send("go")
        statuses = []
        for _, control in self.workers:
            kind, _opened_in, got = self._recv(control, timeout)
            assert kind == "connected"
            statuses.extend(got)
        return time.perf_counter() - started, statuses

    def collect(self, timeout: float) -> Merged:
        """Wait until every stream has what it expects (or ``timeout``), then gather."""
        deadline = time.monotonic() + timeout
        reports: list[ProcessReport] = []
        for _, control in self.workers:
            if not control.poll(max(0.0, deadline - time.monotonic())):
                control.send("stop")
            kind, report = self._recv(control, 30)
            assert kind == "done"
            reports.append(report)
        return _merge(reports)

    def close(self) -> None:
        for _, control in self.workers:
            with contextlib.suppress(OSError, ValueError):
                control.send("stop")
        for process, _ in self.workers:
            process.join(10)
            if process.is_alive():
                process.kill()
                process.join()

    @staticmethod
    def _recv(control: Connection, timeout: float) -> Any:
        if not control.poll(timeout):
            raise TimeoutError(f"a load process did not answer within {timeout:.0f} s")
        return control.recv()


def _merge(reports: list[ProcessReport]) -> Merged:
    latencies = array("d")
    for report in reports:
        latencies.frombytes(report.latencies)
    firsts = [r.first_receive for r in reports if r.first_receive]
    return Merged(
        streams=[s for r in reports for s in r.streams],
        latencies=latencies,
        first_receive=min(firsts, default=0.0),
        last_receive=max((r.last_receive for r in reports), default=0.0),
        errors=[e for r in reports for e in r.errors],
    )
