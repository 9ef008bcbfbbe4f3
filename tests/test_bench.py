"""The benchmark suite still runs: one quick fan-out row against jobcast and the baseline.

The numbers of a run this small mean nothing (the published ones come from ``python -m bench``
on a quiet machine, see docs/benchmarks.md); this checks that every piece works end to end:
servers start, the load processes connect, every event arrives exactly once, the table and
the JSON file are written.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
from bench.loadgen import LoadProcess, SSEConnection, StreamSpec
from bench.scraper import scraping

from tests.services import needs_services

ROOT = Path(__file__).parent.parent


def test_a_quick_benchmark_run_delivers_everything_and_writes_its_table(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "bench", "--scale", "quick", "--no-chart"]
    command += ["--rows", "fanout-100-burst,fanout-100-burst-scraped,reconnect-100,topics-50-paced"]
    command += ["--targets", "jobcast,baseline,asyncio"]
    command += ["--out", str(tmp_path)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "| fanout-100-burst | delivered events/s |" in result.stdout
    assert "machine: cpu" in result.stdout

    (written,) = tmp_path.glob("bench-*.json")
    medians = json.loads(written.read_text())["medians"]["fanout-100-burst"]
    for target in ("jobcast", "baseline", "asyncio"):
        figures = medians[target]
        assert figures["delivered"] == figures["expected"] > 0, (target, figures)
        assert figures["lost"] == figures["duplicates"] == figures["refused_streams"] == 0
    back = json.loads(written.read_text())["medians"]["reconnect-100"]
    for target in ("jobcast", "baseline"):  # the second wave, with the first wave's requests
        assert back[target]["delivered"] == back[target]["expected"] == 100, back[target]
    scraped = json.loads(written.read_text())["medians"]["fanout-100-burst-scraped"]["jobcast"]
    assert scraped["scrapes"] > 0  # the scraper process really ran (it once failed to start)
    paced = json.loads(written.read_text())["medians"]["topics-50-paced"]
    for target in ("jobcast", "baseline", "asyncio"):  # one event a request, at a rate
        assert paced[target]["delivered"] == paced[target]["expected"] == 200, paced[target]
        assert paced[target]["cpu_us_per_event"] > 0


def test_a_scraper_that_never_scraped_fails_its_row() -> None:
    unreachable = "http://127.0.0.1:9/metrics"
    with pytest.raises(RuntimeError, match="never read"), scraping(unreachable, first_within=1):
        pass


def test_the_stream_opening_benchmark_prints_both_kinds_of_request() -> None:
    command = [sys.executable, "-m", "bench.open_cost", "--streams", "50", "--repeat", "1"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = {line.split("|")[1].strip(): line for line in result.stdout.splitlines() if "| " in line}
    assert "new token" in rows and "token verified before" in rows
    assert rows["token verified before"].rstrip().endswith("| 1.00 |")


def test_the_websocket_memory_benchmark_measures_every_server() -> None:
    command = [sys.executable, "-m", "bench.ws_idle", "--sockets", "20", "--repeat", "1"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    names = [row.split("|")[1].strip() for row in rows[1:]]
    assert names == ["jobcast", "jobcast, compression on", "floor"]


def test_the_publish_cost_benchmark_measures_every_server() -> None:
    command = [sys.executable, "-m", "bench.publish_cost", "--requests", "1000", "--repeat", "1"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = {line.split("|")[1].strip(): line for line in result.stdout.splitlines() if "| " in line}
    servers = ["floor (trivial ASGI app)", "jobcast, SQLite history", "jobcast, memory://"]
    assert all(server in rows for server in [*servers, "baseline"])
    assert rows["floor (trivial ASGI app)"].rstrip().endswith("| 1.00 |")


@needs_services
@pytest.mark.parametrize("module", ["bench.take_cost", "bench.take_cost_postgres"])
def test_the_take_cost_benchmark_drains_both_rows(module: str) -> None:
    command = [sys.executable, "-m", module, "--jobs", "300"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("kind limits")]
    assert len(rows) == 2, result.stdout


def test_the_whatwg_load_generator_and_a_restart_with_resuming_streams(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "bench", "--scale", "quick", "--no-chart"]
    command += ["--parser", "whatwg", "--rows", "fanout-100-burst,idle-300,restart-300"]
    command += ["--targets", "jobcast,asyncio", "--out", str(tmp_path)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "load generator: whatwg parser" in result.stdout

    (written,) = tmp_path.glob("bench-*.json")
    document = json.loads(written.read_text())
    assert document["generator"] == "whatwg"
    for target in ("jobcast", "asyncio"):  # every event parsed field by field, then JSON
        figures = document["medians"]["fanout-100-burst"][target]
        assert figures["delivered"] == figures["expected"] > 0, (target, figures)
        assert figures["lost"] == figures["duplicates"] == 0
        assert document["medians"]["idle-300"][target]["refused_streams"] == 0
    # 300 streams on 10 topics, 2 events each before the restart and 3 after: every stream
    # resumed from its Last-Event-ID on the new process, nothing lost or repeated.
    restart = document["medians"]["restart-300"]["jobcast"]
    assert restart["delivered"] == restart["expected"] == 1500, restart
    assert restart["lost"] == restart["duplicates"] == restart["not_resumed"] == 0, restart
    assert restart["reconnect_attempts"] >= 300
    assert 0 < restart["resume_all_s"] < 30


def test_the_whatwg_parser_reads_events_split_anywhere_by_the_transfer_coding() -> None:
    async def read(pieces: list[bytes]) -> SSEConnection:
        process = LoadProcess("127.0.0.1", 9, [], 1, parser="whatwg")
        connection = SSEConnection(StreamSpec(b"GET / HTTP/1.1\r\n\r\n", expect=3), process)
        for piece in pieces:
            connection.data_received(piece)
        return connection

    frames = b"retry: 1500\n\n" + b"".join(
        b'id: 7-%d\r\nevent: tick\ndata: {"seq": %d,\ndata: "t": 1.5}\n\n' % (i, i)
        for i in (0, 1, 1, 2)  # one duplicate; the data spans two lines
    )
    body = b"".join(
        b"%x\r\n%s\r\n" % (len(frames[i : i + 7]), frames[i : i + 7])
        for i in range(0, len(frames), 7)
    )
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body + b"0\r\n\r\n"
    connection = asyncio.run(read([raw[i : i + 5] for i in range(0, len(raw), 5)]))
    assert (connection.unique, connection.result.duplicates) == (3, 1)
    assert (connection.last_id, connection.retry_ms) == ("7-2", 1500)
    assert connection.result.closed_by_server


def test_the_parser_cost_benchmark_measures_both_parsers() -> None:
    command = [sys.executable, "-m", "bench.parser_cost", "--events", "2000", "--repeat", "1"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = {line.split("|")[1].strip(): line for line in result.stdout.splitlines() if "| " in line}
    for shape in ("1 event a chunk", "20 events a chunk"):
        assert f"whatwg, {shape}" in rows
        assert rows[f"scan, {shape}"].rstrip().endswith("| 1.00 |")
