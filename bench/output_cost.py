"""``python -m bench.output_cost``: server CPU per chunk of token streaming, output streams
against plain events, in one run.

``--jobs`` jobs each write ``--rate`` chunks of 20 bytes a second for ``--seconds``; every
job has one SSE reader: on its output stream (``/v1/stream/jobs/{id}/output?live=sse``) or on
its events (``/api/jobs/{id}/events``, the chunks published with ``ctx.publish``). Reported:
chunks written and delivered per second, server CPU per chunk (every thread, from ``/proc``,
submissions and readers' connections included), and bytes the history files grew per chunk.
Every chunk must arrive: a run that loses one fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
import time
from pathlib import Path

import httpx

from bench.output_handlers import TOKEN
from bench.report import print_medians
from bench.targets import HOST, JobcastTarget, mint

MODES = {"output stream (ctx.stream)": "tokens_output", "events (ctx.publish)": "tokens_events"}


async def read_output(
    client: httpx.AsyncClient, url: str, headers: dict[str, str], start_at: float
) -> int:
    """Chunks delivered on a job's output stream, read over SSE until it closes. Its reader
    comes when the job starts (an output stream keeps what came before: nothing is missed),
    so it does not poll a stream that is not there yet."""
    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    received, offset = 0, "-1"
    while True:
        params = {"offset": offset, "live": "sse"}
        async with client.stream("GET", url, params=params, headers=headers) as response:
            if response.status_code == 404:  # the job has not opened it yet
                await asyncio.sleep(0.05)
                continue
            event = ""
            async for line in response.aiter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:") and event == "data":
                    received += line.count(TOKEN.strip())
                elif line.startswith("data:") and event == "control":
                    control = json.loads(line[5:])
                    offset = control["streamNextOffset"]
                    if control.get("streamClosed"):
                        return received


async def read_events(client: httpx.AsyncClient, url: str, headers: dict[str, str]) -> int:
    """Chunks delivered as ``token`` events on a job's event stream, until its end."""
    received = 0
    async with client.stream("GET", url, headers=headers) as response:
        event = ""
        async for line in response.aiter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
                if event in ("succeeded", "failed", "cancelled"):
                    return received
            elif line.startswith("data:") and event == "token":
                received += 1
    return received


async def run(base: str, kind: str, jobs: int, rate: float, seconds: float) -> tuple[int, float]:
    """Submit the jobs, read each with one reader; chunks delivered and the wall time."""
    chunks = int(rate * seconds)
    limits = httpx.Limits(max_connections=jobs + 20, max_keepalive_connections=jobs + 20)
    timeout = httpx.Timeout(30, read=60)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=timeout) as client:
        started = time.monotonic()
        # Every job starts at one moment after all are submitted and their readers connected
        # (a job's event stream starts from its snapshot: earlier custom events are not
        # replayed, so a reader late to its job would miss chunks).
        start_at = started + 2 + jobs * 0.02
        readers = []
        for index in range(jobs):
            # One user per job, as an application's users are (streams per subject are capped).
            headers = {"Authorization": f"Bearer {mint(f'bench-user-{index}')}"}
            delay = round(max(0.0, start_at - time.monotonic()), 3)
            body = {"kind": kind, "params": {"n": chunks, "rate": rate}, "delay_seconds": delay}
            job = (await client.post("/api/jobs", json=body, headers=headers)).json()
            if kind == "tokens_output":
                url = f"/v1/stream/jobs/{job['id']}/output"
                readers.append(read_output(client, url, headers, start_at))
            else:
                readers.append(read_events(client, f"/api/jobs/{job['id']}/events", headers))
        delivered = sum(await asyncio.gather(*readers))
        return delivered, time.monotonic() - started


def history_bytes(data_dir: Path) -> int:
    return sum(path.stat().st_size for path in data_dir.glob("*.db*"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.output_cost", description=__doc__)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args(argv)
    expected = args.jobs * int(args.rate * args.seconds)
    cpu: dict[str, list[float]] = {}
    notes: list[str] = []
    for label, kind in MODES.items():
        target = JobcastTarget(extra={"JOBCAST_HANDLERS": "bench.output_handlers"})
        target.start()
        try:
            base = f"http://{HOST}:{target.ports[0]}"
            for _ in range(args.repeat):
                before, size = target.stats(), history_bytes(target.workdir / "data")
                delivered, wall = asyncio.run(run(base, kind, args.jobs, args.rate, args.seconds))
                if delivered != expected:
                    raise RuntimeError(f"{label}: {delivered} of {expected} chunks delivered")
                used = target.stats().cpu_seconds - before.cpu_seconds
                cpu.setdefault(label, []).append(used / expected * 1e6)
                grown = history_bytes(target.workdir / "data") - size
                notes.append(
                    f"{label}: {expected / wall:,.0f} chunks/s delivered, "
                    f"{grown / expected:.1f} history bytes per chunk"
                )
        finally:
            target.stop()
    print_medians(
        shlex.join(["python", "-m", "bench.output_cost", *sys.argv[1:]]),
        f"{args.jobs} jobs x {args.rate:g} chunks/s x {args.seconds:g} s, one SSE reader per "
        f"job, every chunk delivered",
        ("job output through", "µs of server CPU per chunk"),
        cpu,
        "events (ctx.publish)",
    )
    for note in notes:
        print(f"- {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
