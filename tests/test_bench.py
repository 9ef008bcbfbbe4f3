"""The benchmark suite still runs: one quick fan-out row against jobcast and the baseline.

The numbers of a run this small mean nothing (the published ones come from ``python -m bench``
on a quiet machine, see docs/benchmarks.md); this checks that every piece works end to end:
servers start, the load processes connect, every event arrives exactly once, the table and
the JSON file are written.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
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
def test_the_take_cost_benchmark_drains_both_rows() -> None:
    command = [sys.executable, "-m", "bench.take_cost", "--jobs", "300"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("kind limits")]
    assert len(rows) == 2, result.stdout
