"""``python -m bench.publish_cost``: server CPU per HTTP publish, with no stream to deliver to.

The topics row measures a publish and its delivery together. This measures only the publish:
the same 16 keep-alive connections as the row, each sending its next single-event request when
the previous one is answered, to servers with no stream open. The floor (a trivial ASGI app on
the same uvicorn, answering ``{}``) is what one HTTP request costs before any application code
runs; jobcast runs on its embedded default (SQLite history) and on ``memory://`` (no history),
so the difference is what keeping the history costs per event. CPU seconds come from
``/proc`` (every thread of the server), after a warm-up round.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys

from bench.publisher import publish
from bench.report import print_medians
from bench.targets import BaselineTarget, FloorTarget, JobcastTarget, Target


def targets() -> dict[str, Target]:
    return {
        "floor (trivial ASGI app)": FloorTarget(),
        "jobcast, SQLite history": JobcastTarget(),
        "jobcast, memory://": JobcastTarget(extra={"JOBCAST_BROKER_URL": "memory://"}),
        "baseline": BaselineTarget(),
    }


def cpu_per_request(target: Target, requests: int) -> float:
    """Microseconds of server CPU per publish request."""
    plan = [(f"tasks/{i}", i) for i in range(requests)]
    before = target.stats()
    sent = asyncio.run(publish(target.ports, target.publish_request, plan, connections=16))
    if sent.failed:
        raise RuntimeError(f"{target.name}: {sent.failed} publishes failed")
    return (target.stats().cpu_seconds - before.cpu_seconds) / requests * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.publish_cost", description=__doc__)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    found: dict[str, list[float]] = {}
    for label, target in targets().items():
        target.start()
        try:
            cpu_per_request(target, args.requests // 5)  # warm-up, not counted
            found[label] = [cpu_per_request(target, args.requests) for _ in range(args.repeat)]
        finally:
            target.stop()
    print_medians(
        shlex.join(["python", "-m", "bench.publish_cost", *sys.argv[1:]]),
        f"medians of {args.repeat} rounds of {args.requests} requests, no stream open",
        ("server", "µs of server CPU per publish request"),
        found,
        "floor (trivial ASGI app)",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
