"""``jobcast serve --log-format json`` as a user runs it: every line JSON, request ids, no token."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from jobcast.auth import TokenAuthority
from jobcast.server.ops.logs import JsonFormatter, redact
from tests.scale_support import free_port, jobcast_env, wait_for_port
from tests.support import EventStream, make_settings
from tests.ws_support import receive, send

TOKEN = TokenAuthority.from_settings(make_settings()).mint("alice")
FIELDS = {"time", "level", "logger", "message", "request_id"}


@pytest.fixture
def json_server(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    port, log = free_port(), tmp_path / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "jobcast", "serve", "--port", str(port), "--log-format", "json"],
            cwd=tmp_path,
            env=jobcast_env(heartbeat_interval=0.2),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(port, process)
        yield f"http://127.0.0.1:{port}", process, log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def lines_of(log: Path) -> list[dict[str, Any]]:
    """Every line of the log, each of which must be one JSON object with the usual fields."""
    lines = []
    for text in log.read_text().splitlines():
        line = json.loads(text)
        assert isinstance(line, dict) and set(line) >= FIELDS, text
        lines.append(line)
    return lines


async def test_every_line_is_json_with_the_request_id_and_no_token(
    json_server: tuple[str, subprocess.Popen[bytes], Path],
) -> None:
    url, process, log = json_server
    ids: list[str] = []
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(timeout=10) as client:
        given = await client.get(f"{url}/health", headers={"X-Request-ID": "lb-7f3a:1"})
        assert given.headers["x-request-id"] == "lb-7f3a:1"  # a proxy's id is kept
        odd = await client.get(f"{url}/health", headers={"X-Request-ID": "no spaces\tor tabs"})
        assert odd.headers["x-request-id"] != "no spaces\tor tabs"  # replaced by our own
        assert len(odd.headers["x-request-id"]) == 32
        for response in (
            given,
            odd,
            await client.get(f"{url}/api/jobs", params={"token": TOKEN}),
            await client.get(f"{url}/api/jobs", headers=bearer),
            await client.post(
                f"{url}/api/jobs",
                json={"kind": "demo", "params": {"steps": 2, "delay": 0, "fail_at": 1}},
                headers=bearer,
            ),
        ):
            assert response.status_code in (200, 202), response.text
            ids.append(response.headers["x-request-id"])
        stream_url = f"{url}/api/events"
        async with EventStream(client, stream_url, params={"topic": "a", "token": TOKEN}) as sse:
            assert sse.response is not None
            ids.append(sse.response.headers["x-request-id"])
        ws_url = f"{url.replace('http', 'ws')}/ws/events?token={TOKEN}"
        async with asyncio.timeout(10), connect(ws_url) as ws:
            await send(ws, {"op": "subscribe", "topics": ["a"]})
            assert (await receive(ws))["op"] == "subscribed"
    process.terminate()  # the lines of a clean shutdown are JSON too
    assert process.wait(15) == 0
    lines = lines_of(log)
    text = log.read_text()
    assert TOKEN not in text and TOKEN.split(".")[2] not in text
    assert "Bearer" not in text and "authorization" not in text.lower()
    access = {line["request_id"]: line for line in lines if line["logger"] == "uvicorn.access"}
    for request_id in ids:
        assert request_id in access
    assert "token=REDACTED" in access[ids[2]]["message"]
    sockets = [line for line in lines if "WebSocket /ws/events" in line["message"]]
    assert sockets and all(line["request_id"] for line in sockets)
    assert "token=REDACTED" in sockets[0]["message"]
    failed = next(line for line in lines if line["logger"] == "jobcast.jobs")
    assert "DemoFailure" in failed["exception"]
    assert lines[0]["logger"] == "jobcast" and lines[0]["request_id"] is None  # the banner


def test_the_formatter_redacts_what_any_logger_writes() -> None:
    try:
        raise ValueError(f"bad header Authorization: Bearer {TOKEN}")
    except ValueError:
        failure = sys.exc_info()
    record = logging.LogRecord(
        "jobcast.x",
        logging.ERROR,
        __file__,
        1,
        "cookie %s in %s",
        (TOKEN, f"/s?ticket={TOKEN}"),
        failure,
    )
    line = json.loads(JsonFormatter().format(record))
    assert TOKEN not in json.dumps(line) and TOKEN.split(".")[2] not in json.dumps(line)
    assert line["message"] == "cookie REDACTED in /s?ticket=REDACTED"
    assert "Bearer REDACTED" in line["exception"]
    assert line["request_id"] is None and line["level"] == "ERROR"
    assert redact("see https://x/?topic=a&token=abc") == "see https://x/?topic=a&token=REDACTED"
