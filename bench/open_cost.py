"""``python -m bench.open_cost``: the application's share of opening a stream, in-process.

The connect row measures a whole connection: accept, uvicorn's protocol and request cycle,
jobcast's work, the socket writes. This times only jobcast's part, the same call the fast
entrance makes (``open_fast_stream``: credentials, the subscription, the response), for a
stream request with a bearer token the server has not seen (as in connect-2000), against the
same requests once their tokens were verified (the reconnect row), in one run. Nothing is
written to a socket; each opened subscription is dropped at once.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
import tempfile
import time
from typing import Any

import jwt

from bench.report import print_medians
from jobcast.config import Settings
from jobcast.server.app import Jobcast, create_app
from jobcast.server.serving.fast_streams import open_fast_stream
from jobcast.server.streams.sse import EventStreamResponse

SECRET = "benchmark-secret-that-is-long-enough-for-hs256"


def stream_scope(token: str) -> dict[str, Any]:
    """What uvicorn hands the app for ``GET /api/events?topic=bench/connect``."""
    return {
        "type": "http",
        "method": "GET",
        "path": "/api/events",
        "query_string": b"topic=bench%2Fconnect",
        "headers": [(b"host", b"127.0.0.1"), (b"authorization", f"Bearer {token}".encode())],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
        "scheme": "http",
        "root_path": "",
        "http_version": "1.1",
    }


async def open_all(jc: Jobcast, scopes: list[dict[str, Any]]) -> float:
    """Microseconds per stream opened (and dropped)."""
    began = time.perf_counter()
    for scope in scopes:
        response = await open_fast_stream(jc.runtime, scope, scope["path"])
        assert isinstance(response, EventStreamResponse), response.body
        jc.hub.unsubscribe(response.subscription)
    return (time.perf_counter() - began) / len(scopes) * 1e6


async def measure(streams: int, repeat: int) -> dict[str, list[float]]:
    app = create_app(
        Settings(_env_file=None, jwt_secret=SECRET, data_dir=tempfile.mkdtemp(prefix="jobcast-"))
    )
    jc: Jobcast = app.state.jobcast
    found: dict[str, list[float]] = {"new token": [], "token verified before": []}
    async with jc.lifespan(app):
        for attempt in range(repeat + 1):  # the first round warms up, and is not counted
            now = int(time.time())
            scopes = [
                stream_scope(
                    jwt.encode(
                        {"sub": f"user-{attempt}-{i}", "iat": now, "exp": now + 3600},
                        SECRET,
                        algorithm="HS256",
                    )
                )
                for i in range(streams)
            ]
            new = await open_all(jc, scopes)
            again = await open_all(jc, scopes)
            if attempt:
                found["new token"].append(new)
                found["token verified before"].append(again)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.open_cost", description=__doc__)
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    found = asyncio.run(measure(args.streams, args.repeat))
    print_medians(
        shlex.join(["python", "-m", "bench.open_cost", *sys.argv[1:]]),
        f"medians of {args.repeat} rounds of {args.streams} streams",
        ("stream request", "µs per stream opened"),
        found,
        "token verified before",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
