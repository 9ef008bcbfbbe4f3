"""The subscriber side of the benchmark: many SSE connections in several processes.

Each process runs uvloop with one ``asyncio.Protocol`` per connection (no stream reader, no
task per connection), so one process holds thousands of streams. A connection sends a raw
HTTP/1.1 request, waits for the status line, then reads every event with one of two parsers:
the publisher puts ``"seq"`` and ``"t"`` (its clock at publish time) into every event's data,
so each delivery gives one latency sample and one sequence number. Sequence numbers land in a
bitmap per connection, which counts loss and duplicates exactly without assuming any order.

- ``scan`` (the default): two regular expressions over each received chunk, transfer coding
  and all. About a tenth of a real client's cost per event, so the server gets the cores.
- ``whatwg``: what a real client does: undo the chunked transfer coding, decode UTF-8, parse
  every line as ``EventSource`` does (jobcast's own ``SSEDecoder``: id, event, data, retry,
  dispatch on a blank line), then JSON-decode each event's data to read ``seq`` and ``t``.

Decisions (cited as L1..L6):

L1. Lines are scanned only up to the last newline of what has arrived: a data line is never
    read half-way; the rest waits for the next chunk.
L2. A connection that has everything it expects stays open until the scenario ends, so the
    server does no disconnect work while others are still receiving.
L3. A "stalled" connection reads its status line and then stops reading (``pause_reading``):
    a slow consumer whose socket buffers fill up, as a phone in a tunnel would.
L4. A "resuming" connection behaves as ``EventSource`` when its response ends or its
    connection drops: it waits the server's last ``retry:`` hint, then reconnects with
    ``Last-Event-ID`` set to the last id it saw, again and again while the server is down.
L5. Each process raises its soft ``RLIMIT_NOFILE`` to the hard limit, holds at most
    ``PER_PROCESS`` streams, and above ``PER_SOURCE`` streams the connections come from
    several loopback addresses (127.0.0.2, 127.0.0.3, ...), so the client side has enough
    ephemeral ports: each source address has one port range of its own.
L6. The first event a resuming stream reads on its newest connection is timed (``resumed_at``)
    with when that connection opened, so a restart row can tell the new server's first event
    from one a draining server still sent.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import math
import multiprocessing as mp
import re
import resource
import time
from array import array
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, cast

import orjson

from jobcast.wire import ServerSentEvent, SSEDecoder

PARSERS = ("scan", "whatwg")
PER_PROCESS = 15_000  # L5: below the usual hard limit of file descriptors, 20,000 or more
PER_SOURCE = 20_000  # L5: below the 28,232 ports of Linux's default ephemeral range
TERMINAL_TYPES = frozenset({"succeeded", "failed", "cancelled", "complete", "error"})
ID_LINE = re.compile(rb"(?m)^id: ?([^\r\n]*)\r?$")
RETRY_LINE = re.compile(rb"(?m)^retry: ?(\d{1,10})\r?$")
SEQ_AND_TIME = re.compile(rb'"seq":\s?(\d+),\s?"t":\s?([0-9.]+)')
TERMINAL = re.compile(rb"event: ?(succeeded|failed|cancelled|complete|error)\r?\n")
END_OF_BODY = b"0\r\n\r\n"  # the last chunk of a chunked response: the server ended it


@dataclass(frozen=True)
class StreamSpec:
    """One connection: its raw request, how many events it expects, and how it reads."""

    request: bytes
    expect: int = 0  # distinct seq numbers 0..expect-1; 0: until the server ends the stream
    stall: bool = False  # L3
    resume: bool = False  # L4


@dataclass
class StreamResult:
    status: int = 0
    connect_seconds: float = 0.0
    received: int = 0
    duplicates: int = 0
    missing: int = 0
    terminal: int = 0
    closed_by_server: bool = False
    reconnects: int = 0  # L4: connection attempts after the first, refused ones included
    refusals: int = 0  # L4: reconnections answered with a status other than 200
    opened_at: float = 0.0  # L6: wall clock when the newest connection got its status line
    resumed_at: float = 0.0  # L6: wall clock of the first event on that connection


class Dechunker:
    """HTTP/1.1's chunked transfer coding undone incrementally, as a client's HTTP layer does."""

    __slots__ = ("buffer", "ended", "left", "skip")

    def __init__(self) -> None:
        self.buffer = b""
        self.left = 0  # payload bytes of the current chunk still to come
        self.skip = 0  # bytes of the CRLF after a chunk still to come
        self.ended = False

    def feed(self, data: bytes) -> bytes:
        buffer = self.buffer + data if self.buffer else data
        out: list[bytes] = []
        at, size = 0, len(buffer)
        while at < size and not self.ended:
            if self.left:
                take = min(self.left, size - at)
                out.append(buffer[at : at + take])
                at += take
                self.left -= take
                if not self.left:
                    self.skip = 2
            elif self.skip:
                take = min(self.skip, size - at)
                at += take
                self.skip -= take
            else:
                end = buffer.find(b"\r\n", at)
                if end < 0:
                    break
                self.left = int(buffer[at:end].split(b";", 1)[0], 16)
                at = end + 2
                self.ended = not self.left  # the last chunk: the server ended the body
        self.buffer = buffer[at:]
        return b"".join(out)


@dataclass
class ProcessReport:
    """What one load process measured; the parent merges these."""

    streams: list[StreamResult] = field(default_factory=list)
    latencies: bytes = b""  # array('d') of seconds, one per delivery
    first_receive: float = 0.0
    last_receive: float = 0.0
    errors: list[str] = field(default_factory=list)


class SSEConnection(asyncio.Protocol):
    """One stream; with ``resume`` (L4) it outlives its connections, as an ``EventSource``."""

    def __init__(self, spec: StreamSpec, process: LoadProcess, source: str = "") -> None:
        self.spec = spec
        self.process = process
        self.source = source  # L5: the loopback address this stream connects from, if any
        self.result = StreamResult()
        self.seen = bytearray(spec.expect) if spec.expect else None
        self.unique = 0
        self.last_id = ""
        self.retry_ms = 3000  # EventSource's usual default until the server sends a hint
        self.transport: asyncio.Transport | None = None
        self.reset()

    def reset(self) -> None:
        """Per-connection state: a resuming stream starts each connection afresh (L4)."""
        self.head = b""
        self.tail = b""
        self.chunked = False
        self.dechunker = Dechunker()
        self.text = codecs.getincrementaldecoder("utf-8")("replace")
        self.decoder = SSEDecoder()
        self.decoder.last_event_id = self.last_id
        self.started = time.perf_counter()
        self.opened = asyncio.get_running_loop().create_future()

    @property
    def complete(self) -> bool:
        return self.seen is not None and self.unique >= len(self.seen)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        request = self.spec.request
        if self.last_id:  # L4; a GET has no body: the header goes before the blank line
            request = request[:-2] + b"Last-Event-ID: " + self.last_id.encode() + b"\r\n\r\n"
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        if not self.opened.done():
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.head[:end]
            self.result.status = int(head[: head.find(b"\r\n")].split()[1])
            self.result.connect_seconds = time.perf_counter() - self.started
            self.chunked = b"transfer-encoding: chunked" in head.lower()
            self.result.opened_at, self.result.resumed_at = time.time(), 0.0  # L6
            data, self.head = self.head[end + 4 :], b""
            self.opened.set_result(None)
            if self.spec.resume and self.result.status != 200 and self.transport is not None:
                # EventSource would give up; the benchmark counts it and tries again (L4).
                self.result.refusals += 1
                self.transport.close()
                return
            if self.spec.stall and self.transport is not None:
                self.transport.pause_reading()  # L3
                self.process.finished(self)
                return
        now = time.time()
        if self.process.parser == "whatwg":
            self._parse(data, now)
            return
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
        if self.spec.resume:
            self._scan_resume_fields(lines)
        process.last_receive = now
        if buffer.endswith(END_OF_BODY) and (len(buffer) == 5 or buffer[-6:-5] == b"\n"):
            self._ended()

    def _scan_resume_fields(self, lines: bytes) -> None:
        ids = ID_LINE.findall(lines)
        if ids:
            self.last_id = ids[-1].decode()
        retries = RETRY_LINE.findall(lines)
        if retries:
            self.retry_ms = int(retries[-1])

    def _ended(self) -> None:
        """The server ended the response: a resuming stream reconnects (L4), others are done."""
        self.result.closed_by_server = True
        if self.spec.resume:
            if self.transport is not None:
                self.transport.close()  # connection_lost schedules the reconnect
            return
        self.process.finished(self)

    def _parse(self, data: bytes, now: float) -> None:
        """The ``whatwg`` parser: transfer coding, UTF-8, the WHATWG line rules, JSON."""
        payload = self.dechunker.feed(data) if self.chunked else data
        events = self.decoder.feed(self.text.decode(payload))
        for event in events:
            self._event(event, now)
        decoder = self.decoder
        self.last_id = decoder.last_event_id
        if decoder.retry is not None:
            self.retry_ms = decoder.retry
        if events:
            self.process.last_receive = now
        if self.dechunker.ended:
            self._ended()

    def _event(self, event: ServerSentEvent, now: float) -> None:
        if event.event in TERMINAL_TYPES:
            self.result.terminal += 1
        try:
            body = orjson.loads(event.data or "")
        except orjson.JSONDecodeError:
            return
        if not isinstance(body, dict):
            return
        fields = body if "seq" in body else body.get("data")
        if not isinstance(fields, dict) or "t" not in fields:
            return
        if self.seen is None and not self.process.track_all:
            return
        process = self.process
        if not process.first_receive:
            process.first_receive = now
        if not self.result.resumed_at:
            self.result.resumed_at = now  # L6
        process.latencies.append(now - float(fields["t"]))
        self.result.received += 1
        seen = self.seen
        if seen is None:
            return
        seq = int(fields["seq"])
        if seq >= len(seen) or seen[seq]:
            self.result.duplicates += 1  # not a number sent to this stream, or twice
        else:
            seen[seq] = 1
            self.unique += 1
            if self.unique >= len(seen):
                process.finished(self)

    def _count(self, lines: bytes, now: float) -> None:
        seen, latencies, result = self.seen, self.process.latencies, self.result
        matches = SEQ_AND_TIME.findall(lines)
        if not matches:
            return
        process = self.process
        if not process.first_receive:
            process.first_receive = now
        if not result.resumed_at:
            result.resumed_at = now  # L6
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
        self.transport = None
        if self.spec.resume and not self.complete and not self.process.stopping:
            self.process.reconnect_later(self)  # L4
            return
        self.process.finished(self)

    def finish(self) -> StreamResult:
        if self.seen is not None:
            self.result.missing = len(self.seen) - self.unique
        return self.result


class LoadProcess:
    """The body of one load process: open every stream, report, collect, report."""

    def __init__(
        self,
        host: str,
        port: int,
        specs: list[StreamSpec],
        connect_parallelism: int,
        parser: str = "scan",
        sources: tuple[str, ...] = (),
    ):
        self.host, self.port = host, port
        self.specs = specs
        self.connect_parallelism = connect_parallelism
        self.parser = parser
        self.sources = sources
        self.stopping = False
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
        gate = asyncio.Semaphore(self.connect_parallelism)

        async def open_one(index: int, spec: StreamSpec) -> None:
            async with gate:
                source = self.sources[index % len(self.sources)] if self.sources else ""
                connection = SSEConnection(spec, self, source)
                self.connections.append(connection)
                try:
                    await self._connect(connection)
                    await connection.opened
                except OSError as exc:
                    self.errors.append(f"connect: {exc}")
                    self.finished(connection)

        started = time.perf_counter()
        await asyncio.gather(*(open_one(i, spec) for i, spec in enumerate(self.specs)))
        return time.perf_counter() - started

    async def _connect(self, connection: SSEConnection) -> None:
        local = (connection.source, 0) if connection.source else None
        loop = asyncio.get_running_loop()
        await loop.create_connection(lambda: connection, self.host, self.port, local_addr=local)

    def reconnect_later(self, connection: SSEConnection) -> None:
        """L4: after the server's retry hint, as ``EventSource`` does."""
        loop = asyncio.get_running_loop()
        loop.call_later(
            connection.retry_ms / 1000, lambda: loop.create_task(self._reconnect(connection))
        )

    async def _reconnect(self, connection: SSEConnection) -> None:
        if self.stopping or connection.complete:
            return
        connection.result.reconnects += 1
        connection.reset()
        try:
            await self._connect(connection)
        except OSError:
            self.reconnect_later(connection)  # the server is not back yet: try again later

    async def until(self, unique: int, within: float) -> int:
        """Wait until every stream has ``unique`` distinct events (or ``within`` s); how many do."""
        deadline = time.monotonic() + within
        while True:
            reached = sum(connection.unique >= unique for connection in self.connections)
            if reached >= len(self.connections) or time.monotonic() > deadline:
                return reached
            await asyncio.sleep(0.02)  # a progress poll inside the load process, not a test

    def report(self) -> ProcessReport:
        return ProcessReport(
            streams=[connection.finish() for connection in self.connections],
            latencies=self.latencies.tobytes(),
            first_receive=self.first_receive,
            last_receive=self.last_receive,
            errors=self.errors[:20],
        )

    def close_all(self) -> None:
        self.stopping = True
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
    while True:
        command = await loop.run_in_executor(None, control.recv)
        if command == "stop":
            break
        if command[0] == "until":  # a phase of a scenario: everyone has the first events
            control.send(("until", await load.until(command[1], command[2])))
            continue
        # "collect": report once every stream has what it expects, or when told to stop
        stop = loop.run_in_executor(None, control.recv)  # "stop" from the parent, or a deadline
        done = asyncio.ensure_future(load.all_done.wait())
        await asyncio.wait([stop, done], return_when=asyncio.FIRST_COMPLETED)
        control.send(("done", load.report()))
        await stop  # the parent says when to close, so the server never sees early disconnects
        done.cancel()
        break
    load.close_all()
    await asyncio.sleep(0)


def raise_fd_limit() -> int:
    """L5: the soft limit of open files up to the hard one (raising the hard one needs root's
    CAP_SYS_RESOURCE); the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):  # an unlimited hard limit is above the kernel's nr_open
            return int(soft)
    return int(hard)


def source_addresses(streams: int, least: int = 0) -> tuple[str, ...]:
    """L5: the loopback addresses to connect from (at least ``least``); none (the kernel's
    choice of 127.0.0.1) when one will do."""
    count = max(least, math.ceil(streams / PER_SOURCE) if streams > PER_SOURCE else 0)
    return tuple(f"127.0.0.{2 + i}" for i in range(count))


def _process_main(
    control: Connection,
    host: str,
    port: int,
    specs: list[StreamSpec],
    parallelism: int,
    parser: str,
    sources: tuple[str, ...],
) -> None:
    import uvloop

    raise_fd_limit()
    load = None
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            load = LoadProcess(host, port, specs, parallelism, parser, sources)
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
        parser: str = "scan",
        sources: int = 0,
    ) -> None:
        """``sources``: connect from at least that many loopback addresses (L5)."""
        if parser not in PARSERS:
            raise ValueError(f"parser must be one of {PARSERS}, not {parser!r}")
        ports = port if isinstance(port, list) else [port]
        self.workers: list[tuple[mp.process.BaseProcess, Connection]] = []
        ctx = mp.get_context("spawn")
        count = max(1, min(max(processes, math.ceil(len(specs) / PER_PROCESS)), len(specs)))
        addresses = source_addresses(len(specs), sources)
        for index in range(count):
            mine = specs[index::count]
            parent, child = ctx.Pipe()
            port_here = ports[index % len(ports)]
            process = ctx.Process(
                target=_process_main,
                args=(child, host, port_here, mine, connect_parallelism, parser, addresses),
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

    def until(self, unique: int, timeout: float) -> int:
        """Wait until every stream has ``unique`` distinct events; how many streams do."""
        for _, control in self.workers:
            control.send(("until", unique, timeout))
        reached = 0
        for _, control in self.workers:
            kind, count = self._recv(control, timeout + 30)
            assert kind == "until"
            reached += count
        return int(reached)

    def collect(self, timeout: float) -> Merged:
        """Wait until every stream has what it expects (or ``timeout``), then gather."""
        deadline = time.monotonic() + timeout
        reports: list[ProcessReport] = []
        for _, control in self.workers:
            control.send("collect")
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
