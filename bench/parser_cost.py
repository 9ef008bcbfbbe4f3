"""``python -m bench.parser_cost``: the load generator's CPU per event, for each parser.

A load process competes with the server for the same cores, so what it spends per event moves
every streaming row. This feeds the same recorded stream (jobcast's frames: ``id``, ``event``,
``data`` with the publisher's JSON, in chunked transfer coding) to one connection of each
parser, in process and without sockets, and divides its CPU time by the events read. Two
shapes: one event a chunk (the trickle regime) and 20 a chunk (a burst, where the server writes
everything pending at once).
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
import time

import orjson

from bench.loadgen import PARSERS, LoadProcess, SSEConnection, StreamSpec
from bench.publisher import event_data
from bench.report import print_medians

HEAD = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"


def recorded(events: int, per_chunk: int) -> list[bytes]:
    """What a stream of ``events`` events receives, ``per_chunk`` events a chunk."""
    chunks = []
    for first in range(0, events, per_chunk):
        frames = b"".join(
            b"id: 17-%d\nevent: tick\ndata: %s\n\n" % (seq, orjson.dumps(event_data(seq)))
            for seq in range(first, min(events, first + per_chunk))
        )
        chunks.append(b"%x\r\n%s\r\n" % (len(frames), frames))
    return chunks


async def cpu_per_event(parser: str, chunks: list[bytes], events: int) -> float:
    """Microseconds of CPU per event one connection of ``parser`` spends reading ``chunks``."""
    process = LoadProcess("127.0.0.1", 9, [], 1, parser)
    connection = SSEConnection(StreamSpec(b"GET / HTTP/1.1\r\n\r\n", expect=events), process)
    connection.data_received(HEAD)
    started = time.process_time()
    for chunk in chunks:
        connection.data_received(chunk)
    took = time.process_time() - started
    if connection.unique != events:
        raise RuntimeError(f"{parser} read {connection.unique} of {events} events")
    return took / events * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.parser_cost", description=__doc__)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    shapes = {"1 event a chunk": 1, "20 events a chunk": 20}
    found: dict[str, list[float]] = {}
    for _ in range(args.repeat):
        for shape, per_chunk in shapes.items():
            chunks = recorded(args.events, per_chunk)
            for name in PARSERS:
                value = asyncio.run(cpu_per_event(name, chunks, args.events))
                found.setdefault(f"{name}, {shape}", []).append(value)
    for shape in shapes:  # each shape's rows against its own scan row
        print_medians(
            shlex.join(["python", "-m", "bench.parser_cost", *sys.argv[1:]]),
            f"medians of {args.repeat} rounds of {args.events} events",
            ("parser", "µs of CPU per event"),
            {label: values for label, values in found.items() if label.endswith(shape)},
            f"scan, {shape}",
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
