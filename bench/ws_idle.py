"""``python -m bench.ws_idle``: server memory per idle, subscribed WebSocket.

The SSE rows of ``python -m bench`` use raw-socket load processes; WebSockets need a handshake
and framing, so this measures them apart, with the ``websockets`` client in this process:
``--sockets`` WebSockets open ``/ws/events`` (the floor: a bare accept), each subscribes to
one topic and waits for the answer, then the server's resident memory growth is divided by
their number. The targets: ``jobcast serve`` as shipped (no permessage-deflate), the same with
``JOBCAST_WS_COMPRESSION=true`` (every client offers deflate), and the trivial ASGI app on the
same uvicorn without deflate (``bench/baselines/floor_app.py``), all in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
import time
from collections.abc import Callable

import websockets

from bench.report import print_medians
from bench.targets import HOST, FloorTarget, JobcastTarget, Target, mint

SUBSCRIBE = '{"op": "subscribe", "topics": ["bench/idle-ws"]}'


async def hold(url: str, sockets: int, measure: Callable[[], int]) -> float:
    """Open ``sockets`` subscribed WebSockets; the server's KB per socket once all are open."""
    before = measure()
    gate = asyncio.Semaphore(64)  # handshakes in flight, as the SSE load processes do
    opened: list[websockets.ClientConnection] = []

    async def open_one() -> None:
        async with gate:
            socket = await websockets.connect(url, max_queue=4)
            opened.append(socket)
            await socket.send(SUBSCRIBE)
            await asyncio.wait_for(socket.recv(), 30)

    try:
        await asyncio.gather(*(open_one() for _ in range(sockets)))
        await asyncio.sleep(1.0)  # let the server finish its per-connection allocations
        return (measure() - before) / 1024 / sockets
    finally:
        await asyncio.gather(*(socket.close() for socket in opened), return_exceptions=True)


def run(target: Target, path: str, sockets: int) -> float:
    target.start()
    try:
        url = f"ws://{HOST}:{target.ports[0]}{path}"
        return asyncio.run(hold(url, sockets, lambda: target.stats().rss_bytes))
    finally:
        target.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ws_idle", description=__doc__)
    parser.add_argument("--sockets", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    token = mint("bench-ws", "admin")  # one subject: the per-subject stream cap is lifted
    jobcast_path = f"/ws/events?token={token}"
    lifted = {"JOBCAST_MAX_STREAMS_PER_SUBJECT": str(args.sockets * 2)}
    targets: dict[str, tuple[Callable[[], Target], str]] = {
        "jobcast": (lambda: JobcastTarget(extra=lifted), jobcast_path),
        "jobcast, compression on": (
            lambda: JobcastTarget(extra={**lifted, "JOBCAST_WS_COMPRESSION": "true"}),
            jobcast_path,
        ),
        # As jobcast serve ships: no permessage-deflate.
        "floor": (lambda: FloorTarget("--ws-per-message-deflate", "false"), "/ws"),
    }
    found: dict[str, list[float]] = {name: [] for name in targets}
    for attempt in range(args.repeat):
        for name, (build, path) in targets.items():  # interleaved, as python -m bench does
            began = time.monotonic()
            found[name].append(run(build(), path, args.sockets))
            took = time.monotonic() - began
            print(f"[{attempt + 1}/{args.repeat}] {name} ({took:.0f} s): {found[name][-1]:.1f} KB")
    print_medians(
        shlex.join(["python", "-m", "bench.ws_idle", *sys.argv[1:]]),
        f"medians of {args.repeat} runs of {args.sockets} sockets",
        ("server", "KB per idle WebSocket"),
        found,
        "floor",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
