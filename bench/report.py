"""Turning runs into the table, the JSON file and the chart.

Every figure is the median over the repeats of one (row, target); every ratio compares two
medians measured in the same invocation, on the same machine, minutes apart, so it survives a
machine that is slower or busier than the one the targets were written for.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

Figures = dict[str, float]


@dataclass
class Results:
    """Every run: ``runs[row][target]`` is one figures dict per repeat."""

    command: str
    scale: str
    #: The load generator's parser (bench/loadgen.py): ``scan`` or ``whatwg``.
    generator: str = "scan"
    runs: dict[str, dict[str, list[Figures]]] = field(default_factory=dict)

    def add(self, row: str, target: str, figures: Figures) -> None:
        self.runs.setdefault(row, {}).setdefault(target, []).append(figures)

    def median(self, row: str, target: str, metric: str) -> float:
        values = [f[metric] for f in self.runs.get(row, {}).get(target, []) if metric in f]
        return statistics.median(values) if values else float("nan")

    def worst(self, row: str, target: str, metric: str) -> float:
        values = [f[metric] for f in self.runs.get(row, {}).get(target, []) if metric in f]
        return max(values) if values else float("nan")


@dataclass(frozen=True)
class Check:
    """One line of the table: a metric of a row, and optionally the target it must meet."""

    row: str
    metric: str
    label: str
    goal: str = ""
    #: Given the results, True when the target is met (None: informational row).
    passes: Callable[[Results], bool] | None = None
    #: The (row, target) the ratio column divides by; default: this row's baseline.
    reference: tuple[str, str] | None = None


def print_medians(
    command: str,
    note: str,
    header: tuple[str, str],
    found: dict[str, list[float]],
    reference: str,
) -> None:
    """The machine, the command, and one line per entry of ``found``: its median and its
    ratio to ``reference``'s median (for the small benchmarks beside ``python -m bench``)."""
    print("\nmachine: " + ", ".join(f"{k} {v}" for k, v in machine().items()))
    print(f"command: {command}  ({note})\n")
    base = statistics.median(found[reference])
    print(f"| {header[0]} | {header[1]} | ratio to {reference} |")
    print("|---|---|---|")
    for label, values in found.items():
        median = statistics.median(values)
        # CPU seconds from /proc count in clock ticks: a run too short to use one has no ratio.
        ratio = f"{median / base:.2f}" if base > 0 else "n/a (reference measured 0)"
        print(f"| {label} | {median:.1f} | {ratio} |")


def machine() -> dict[str, str]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as info:
        memory_kb = int(info.readline().split()[1])
    versions = {}
    for package in ("jobcast", "uvicorn", "uvloop", "httptools", "starlette", "sse-starlette"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "-"
    nginx = _nginx_version()
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "memory": f"{memory_kb / 2**20:.0f} GiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
        **versions,
        "nginx": nginx,
    }


def _nginx_version() -> str:
    """nginx's version, or "-" where it is not installed (the nchan rows then do not run)."""
    try:
        found = subprocess.run(["nginx", "-v"], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return "-"
    return found.stderr.strip().split("/")[-1] if found.returncode == 0 else "-"


def _format(value: float) -> str:
    if value != value:  # NaN: not measured for this target
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def table(results: Results, checks: list[Check], targets: list[str]) -> str:
    header = ["row", "metric", *targets, "ratio", "target", "met"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for check in checks:
        values = [results.median(check.row, target, check.metric) for target in targets]
        jobcast = results.median(check.row, "jobcast", check.metric)
        ref_row, ref_target = check.reference or (check.row, "baseline")
        reference = results.median(ref_row, ref_target, check.metric)
        ratio = jobcast / reference if reference and reference == reference else float("nan")
        met = "" if check.passes is None else ("yes" if check.passes(results) else "**no**")
        cells = [check.row, check.label, *map(_format, values), _format(ratio), check.goal, met]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_json(results: Results, path: Path, info: dict[str, str]) -> None:
    medians: dict[str, dict[str, dict[str, float]]] = {}
    for row, by_target in results.runs.items():
        for target, runs in by_target.items():
            metrics = sorted({m for run in runs for m in run})
            medians.setdefault(row, {})[target] = {
                m: results.median(row, target, m) for m in metrics
            }
    document: dict[str, Any] = {
        "machine": info,
        "command": results.command,
        "scale": results.scale,
        "generator": results.generator,
        "medians": medians,
        "runs": results.runs,
    }
    path.write_text(json.dumps(document, indent=2, allow_nan=True))


def chart(results: Results, subscribers: tuple[int, ...], targets: list[str], path: Path) -> None:
    """Delivered events/s and p99 latency against subscribers, burst fan-out, per target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for target in targets:
        rows = [f"fanout-{n}-burst" for n in subscribers]
        rate = [results.median(row, target, "delivered_per_s") for row in rows]
        p99 = [results.median(row, target, "p99_ms") for row in rows]
        if all(value != value for value in rate):
            continue
        left.plot(subscribers, rate, marker="o", label=target)
        right.plot(subscribers, p99, marker="o", label=target)
    left.set(title="Fan-out burst: delivered events/s", xlabel="subscribers on one topic")
    right.set(title="Fan-out burst: p99 publish-to-receive (ms)", xlabel="subscribers")
    right.set_yscale("log")
    for axes in (left, right):
        axes.grid(alpha=0.3)
        axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
