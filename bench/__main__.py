"""``python -m bench``: run every scenario against jobcast and the references, print the table.

    python -m bench                      # the published numbers (about half an hour)
    python -m bench --scale quick        # a one-minute smoke run at toy sizes
    python -m bench --rows fanout-5000-burst,idle-10000 --repeat 5
    python -m bench --parser whatwg      # every event parsed as EventSource does (loadgen.py)
    python -m bench --rows idle-50000,restart-50000 --targets jobcast,nchan,asyncio

Each (row, target, repeat) runs against a freshly started server, targets interleaved within
each repeat so that a machine getting busier affects every target alike. The table gives the
median of the repeats, the ratio of jobcast to the reference measured in the same run, the
target from the performance issue and whether it was met. JSON and a PNG chart go to
``--out`` (``bench/results/`` by default).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import shlex
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bench import scenarios
from bench.loadgen import PARSERS
from bench.report import Check, Figures, Results, chart, machine, table, write_json
from bench.scenarios import QUICK, Scale, many_streams
from bench.scraper import scraping
from bench.targets import (
    HOST,
    AsyncioTarget,
    BaselineTarget,
    FloorTarget,
    JobcastTarget,
    NchanTarget,
    Target,
    nchan_available,
)

REDIS = "redis://127.0.0.1:6379/14"
POSTGRES = os.environ.get("JOBCAST_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1/test")


def postgres_url() -> str:
    """A PostgreSQL broker of its own (fresh tables) for one run."""
    return f"{POSTGRES}?prefix=bench_{uuid.uuid4().hex[:8]}"


ALL = ("jobcast", "baseline", "nchan", "asyncio")


@dataclass(frozen=True)
class Row:
    """One scenario at one size, and which targets it runs against."""

    name: str
    run: Callable[[Target, Scale], Figures]
    targets: tuple[str, ...] = ALL
    #: Builds the jobcast target for this row (the Redis row runs two instances).
    jobcast: Callable[[], Target] = JobcastTarget


def fanout_row(subscribers: int, *, paced: bool) -> Row:
    def run(target: Target, scale: Scale) -> Figures:
        return scenarios.fanout(target, scale, subscribers, paced=paced)

    return Row(f"fanout-{subscribers}-{'paced' if paced else 'burst'}", run)


def rows(scale: Scale) -> list[Row]:
    found = [fanout_row(n, paced=False) for n in scale.fanout]
    found += [fanout_row(n, paced=True) for n in scale.fanout]
    middle = scale.fanout[len(scale.fanout) // 2]
    found += [
        Row(f"topics-{scale.topics}", scenarios.per_topic),
        Row(
            f"topics-{scale.topics}-paced",
            lambda t, s: scenarios.per_topic(t, s, paced=True),
        ),
        # The floor's publish is a trivial ASGI endpoint on the same uvicorn: the request's cost
        # before any application code.
        Row(
            f"publish-{int(scale.single_rate)}-per-s",
            scenarios.single_publishes,
            ("jobcast", "floor", "asyncio"),
        ),
        Row(
            f"topics-{scale.topics}-batched",
            lambda t, s: scenarios.per_topic(t, s, batch=100),
            ("jobcast",),
        ),
        # The floor (a trivial ASGI app on the same uvicorn) shows what the server underneath
        # costs per connection, before any application code.
        Row(f"idle-{scale.idle}", scenarios.idle, (*ALL, "floor")),
        Row(f"connect-{scale.connect}", scenarios.connect, (*ALL, "floor")),
        Row(f"reconnect-{scale.connect}", scenarios.reconnect, (*ALL, "floor")),
        Row(f"jobs-{scale.jobs}", scenarios.jobs, ("jobcast", "baseline")),
        # The asyncio reference has no bound on what a stalled reader holds: not comparable.
        Row(f"slow-{scale.slow}", scenarios.slow_consumers, ("jobcast", "baseline", "nchan")),
        Row(
            f"fanout-{scale.redis_subscribers}-burst-redis2",
            lambda t, s: scenarios.fanout(t, s, s.redis_subscribers, paced=False),
            ("jobcast",),
            jobcast=lambda: JobcastTarget(
                instances=2, broker_url=f"{REDIS}?prefix=bench-{uuid.uuid4().hex[:8]}"
            ),
        ),
        Row(
            f"fanout-{scale.redis_subscribers}-burst-postgres2",
            lambda t, s: scenarios.fanout(t, s, s.redis_subscribers, paced=False),
            ("jobcast",),
            jobcast=lambda: JobcastTarget(instances=2, broker_url=postgres_url()),
        ),
        # One instance per shared broker: what each costs the server for the same topics row.
        Row(
            f"topics-{scale.topics}-redis",
            scenarios.per_topic,
            ("jobcast",),
            jobcast=lambda: JobcastTarget(
                broker_url=f"{REDIS}?prefix=bench-{uuid.uuid4().hex[:8]}"
            ),
        ),
        Row(
            f"topics-{scale.topics}-postgres",
            scenarios.per_topic,
            ("jobcast",),
            jobcast=lambda: JobcastTarget(broker_url=postgres_url()),
        ),
        Row(
            f"fanout-{middle}-burst-scraped",
            lambda t, s: _while_scraping(t, lambda: scenarios.fanout(t, s, middle, paced=False)),
            ("jobcast",),
        ),
    ]
    # 50,000 streams where the server's file limit allows (named by the size that runs).
    many = many_streams(scale)
    found += [
        Row(f"idle-{many}", scenarios.idle_many, ("jobcast", "nchan", "asyncio")),
        # nchan and the asyncio reference keep no history across a restart: jobcast only.
        Row(f"restart-{many}", scenarios.restart, ("jobcast",)),
    ]
    return found


def checks(scale: Scale) -> list[Check]:
    fan = scale.fanout
    middle, top = fan[len(fan) // 2], fan[-1]
    burst = f"fanout-{middle}-burst"

    def ratio(
        row: str, metric: str, reference: tuple[str, str] | None = None
    ) -> Callable[[Results], float]:
        ref_row, ref_target = reference or (row, "baseline")
        return lambda r: r.median(row, "jobcast", metric) / r.median(ref_row, ref_target, metric)

    def no_loss(r: Results) -> bool:
        return all(
            r.worst(row, target, metric) == 0
            for row, by_target in r.runs.items()
            for target in by_target
            for metric in ("lost", "duplicates", "refused_streams", "publish_failures")
            if metric in by_target[target][0]
        )

    def beats_nchan(r: Results) -> bool:
        nchan = r.median(burst, "nchan", "delivered_per_s")
        return ratio(burst, "delivered_per_s")(r) >= 3 and not (
            nchan == nchan and r.median(burst, "jobcast", "delivered_per_s") < nchan
        )

    found = [
        Check(
            burst, "delivered_per_s", "delivered events/s", ">= 3x baseline, >= nchan", beats_nchan
        ),
    ]

    def p99_check(row: str) -> Check:
        return Check(
            row, "p99_ms", "p99 ms", "<= 1/5 baseline", lambda r: ratio(row, "p99_ms")(r) <= 0.2
        )

    found += [p99_check(f"fanout-{n}-burst") for n in sorted({middle, top})]
    for n in fan:
        if n != middle:
            found.append(Check(f"fanout-{n}-burst", "delivered_per_s", "delivered events/s"))
    for n in fan:
        found.append(Check(f"fanout-{n}-paced", "p99_ms", "p99 ms"))
    idle, connect, topics = (
        f"idle-{scale.idle}",
        f"connect-{scale.connect}",
        f"topics-{scale.topics}",
    )
    jobs, slow = f"jobs-{scale.jobs}", f"slow-{scale.slow}"
    redis = f"fanout-{scale.redis_subscribers}-burst-redis2"
    postgres = f"fanout-{scale.redis_subscribers}-burst-postgres2"
    scraped = f"fanout-{middle}-burst-scraped"
    found += [
        Check(
            idle,
            "kb_per_connection",
            "KB per connection",
            "<= 5 KB",
            lambda r: r.median(idle, "jobcast", "kb_per_connection") <= 5,
        ),
        Check(
            connect,
            "connections_per_s",
            "connections/s",
            ">= 5x baseline",
            lambda r: ratio(connect, "connections_per_s")(r) >= 5,
        ),
        Check(connect, "first_event_p99_ms", "first event p99 ms"),
        # Not the target's row (that is a first wave of new clients); a deploy's reconnects.
        Check(f"re{connect}", "connections_per_s", "connections/s, clients coming back"),
        Check(f"re{connect}", "first_event_p99_ms", "first event p99 ms"),
        Check(
            topics,
            "server_cpu_s",
            "server CPU s",
            "<= 1/10 baseline",
            lambda r: ratio(topics, "server_cpu_s")(r) <= 0.1,
        ),
        Check(topics, "p99_ms", "p99 ms"),
        Check(
            f"{topics}-paced",
            "cpu_us_per_event",
            "server CPU µs per event, one event a request at an even rate",
            "<= 3x nchan",
            lambda r: (
                ratio(f"{topics}-paced", "cpu_us_per_event", (f"{topics}-paced", "nchan"))(r) <= 3
            ),
            reference=(f"{topics}-paced", "nchan"),
        ),
        Check(
            f"publish-{int(scale.single_rate)}-per-s",
            "cpu_us_per_request",
            "server CPU µs per single publish, no stream",
            "<= 1.2x floor",
            lambda r: (
                ratio(
                    f"publish-{int(scale.single_rate)}-per-s",
                    "cpu_us_per_request",
                    (f"publish-{int(scale.single_rate)}-per-s", "floor"),
                )(r)
                <= 1.2
            ),
            reference=(f"publish-{int(scale.single_rate)}-per-s", "floor"),
        ),
        Check(
            f"{topics}-batched",
            "server_cpu_s",
            "server CPU s, 100 events a request",
            "(same target)",
            lambda r: ratio(f"{topics}-batched", "server_cpu_s", (topics, "baseline"))(r) <= 0.1,
            reference=(topics, "baseline"),
        ),
        Check(
            jobs,
            "terminal_missing",
            "terminal events missing",
            "0",
            lambda r: r.worst(jobs, "jobcast", "terminal_missing") == 0,
        ),
        Check(jobs, "seconds", "seconds to last terminal"),
        Check(jobs, "server_cpu_s", "server CPU s"),
        Check(
            jobs,
            "store_writes_per_update",
            "store writes per progress update",
            "coalesced (< 1)",
            lambda r: r.median(jobs, "jobcast", "store_writes_per_update") < 1,
        ),
        Check(
            slow,
            "p99_ms",
            "fast subscribers' p99 ms",
            "<= 2x own no-slow p99",
            lambda r: (
                r.median(slow, "jobcast", "p99_ms")
                <= 2 * r.median(f"fanout-{middle}-burst", "jobcast", "p99_ms")
            ),
            reference=(slow, "baseline"),
        ),
        Check(slow, "server_rss_mb", "server RSS MB after"),
        Check(
            redis,
            "delivered_per_s",
            "events/s vs embedded",
            ">= 0.7x embedded",
            lambda r: ratio(redis, "delivered_per_s", (burst, "jobcast"))(r) >= 0.7,
            reference=(burst, "jobcast"),
        ),
        Check(
            postgres,
            "delivered_per_s",
            "events/s vs embedded",
            ">= 0.7x embedded",
            lambda r: ratio(postgres, "delivered_per_s", (burst, "jobcast"))(r) >= 0.7,
            reference=(burst, "jobcast"),
        ),
        Check(
            scraped,
            "delivered_per_s",
            "events/s vs unscraped",
            ">= 0.95x unscraped",
            lambda r: ratio(scraped, "delivered_per_s", (burst, "jobcast"))(r) >= 0.95,
            reference=(burst, "jobcast"),
        ),
    ]
    many = many_streams(scale)
    restart = f"restart-{many}"
    found += [
        Check(
            f"idle-{many}",
            "kb_per_connection",
            "KB per connection",
            reference=(f"idle-{many}", "nchan"),
        ),
        Check(restart, "kb_per_connection", "KB per connection before the restart"),
        Check(restart, "down_s", "s from SIGTERM until the new process answers"),
        Check(restart, "resume_all_s", "s from answering until every stream has an event"),
        Check(
            restart,
            "not_resumed",
            "streams without an event after the restart",
            "0",
            lambda r: r.worst(restart, "jobcast", "not_resumed") == 0,
        ),
        Check("all rows", "lost", "lost + duplicated + refused", "0", no_loss),
    ]
    return found


def _while_scraping(target: Target, run: Callable[[], Figures]) -> Figures:
    """Run a scenario while a Prometheus-like scraper reads ``/metrics`` every 200 ms.

    The scraper is a process of its own: a thread would share the publisher's interpreter
    lock, and the row would measure a slower publisher instead of the cost of metrics.
    """
    with scraping(f"http://{HOST}:{target.ports[0]}/metrics") as scraped:
        figures = run()
    return {**figures, **scraped}


@contextlib.contextmanager
def started(target: Target) -> Iterator[Target]:
    target.start()
    try:
        yield target
    finally:
        target.stop()


def build(name: str, row: Row) -> Target:
    return {
        "jobcast": row.jobcast,
        "baseline": BaselineTarget,
        "nchan": NchanTarget,
        "asyncio": AsyncioTarget,
        "floor": FloorTarget,
    }[name]()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--scale", choices=("full", "quick"), default="full")
    parser.add_argument("--repeat", type=int, default=0, help="runs per row (full 3, quick 1)")
    parser.add_argument("--rows", default="", help="comma-separated row names (default: all)")
    parser.add_argument("--targets", default="jobcast,baseline,nchan,asyncio,floor")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--no-chart", action="store_true")
    parser.add_argument(
        "--parser",
        choices=PARSERS,
        default="scan",
        help="the load generator's: scan (regular expressions) or whatwg (as EventSource)",
    )
    parser.add_argument(
        "--many", type=int, default=0, help="streams in the idle-N and restart-N rows"
    )
    args = parser.parse_args(argv)

    scale = QUICK if args.scale == "quick" else Scale()
    scale = dataclasses.replace(scale, parser=args.parser, many=args.many or scale.many)
    repeat = args.repeat or (1 if args.scale == "quick" else 3)
    wanted = set(filter(None, args.rows.split(",")))
    targets = [t for t in args.targets.split(",") if t != "nchan" or nchan_available()]
    selected = [row for row in rows(scale) if not wanted or row.name in wanted]
    unknown = wanted - {row.name for row in rows(scale)}
    if unknown:
        known = ", ".join(row.name for row in rows(scale))
        parser.error(f"no row {', '.join(sorted(unknown))} at this scale; the rows: {known}")
    many_rows = (scenarios.idle_many, scenarios.restart)
    if many_streams(scale) < scale.many and any(row.run in many_rows for row in selected):
        print(
            f"the servers' hard limit of open files allows {many_streams(scale)} streams, "
            f"not {scale.many}: the many-streams rows run at that size"
        )
    results = Results(
        command=shlex.join(["python", "-m", "bench", *sys.argv[1:]]),
        scale=args.scale,
        generator=args.parser,
    )

    for attempt in range(repeat):
        for row in selected:
            for name in (t for t in targets if t in row.targets):
                began = time.monotonic()
                with started(build(name, row)) as target:
                    figures = row.run(target, scale)
                results.add(row.name, name, figures)
                brief = ", ".join(f"{k}={v:.4g}" for k, v in list(figures.items())[:4])
                took = time.monotonic() - began
                print(f"[{attempt + 1}/{repeat}] {row.name} {name} ({took:.0f} s): {brief}")

    info = machine()
    print()
    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    print(f"command: {results.command}  (medians of {repeat} run(s) per cell)")
    print(f"load generator: {args.parser} parser")
    print()
    print(
        table(
            results,
            [c for c in checks(scale) if c.row in results.runs or c.row == "all rows"],
            targets,
        )
    )
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    write_json(results, args.out / f"bench-{stamp}.json", info)
    if not args.no_chart:
        chart(results, scale.fanout, targets, args.out / f"fanout-{stamp}.png")
    print(
        f"\nwrote {args.out}/bench-{stamp}.json"
        + ("" if args.no_chart else f" and fanout-{stamp}.png")
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
