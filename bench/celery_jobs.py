"""``python -m bench.celery_jobs``: 1,000 tracked Celery tasks against native jobs, in one run.

Three rows, each on a fresh ``jobcast serve`` with the Redis broker and a PostgreSQL store:

- ``jobs-1000``: the native row of ``python -m bench`` (1,000 users each submit a ``demo`` job
  of 100 progress steps 20 ms apart and watch it to its end);
- ``celery-1000-untracked``: 1,000 Celery tasks of the same steps on one worker (threads pool,
  ``--threads`` at once) over RabbitMQ, not tracked: what the worker costs without jobcast;
- ``celery-1000``: the same tasks tracked (``jobcast.integrations.celery``), each sent with
  its watcher's subject as owner, one SSE watcher per task.

Figures: terminal events delivered, seconds to the last one, the server's CPU, job store
writes per progress update (every process's: the server, the worker and this sender, from
the shared ``/metrics``), the worker's CPU (and per task, tracked against untracked) and the
sender's seconds per ``apply_async``. Checks (the issue's bar): every terminal event
delivered, store writes per update below 0.2, server CPU within 1.5x of ``jobs-1000``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.loadgen import LoadGenerator, StreamSpec
from bench.scenarios import Scale, jobs
from bench.targets import HOST, ROOT, JobcastTarget, mint, process_stats


@dataclass(frozen=True)
class Setup:
    tasks: int
    steps: int
    delay: float
    threads: int
    redis: str
    postgres: str
    amqp: str
    prefix: str

    @property
    def broker(self) -> str:
        return f"{self.redis}?prefix={self.prefix}:"

    @property
    def store(self) -> str:
        dsn = self.postgres.replace("postgresql://", "postgresql+asyncpg://", 1)
        return f"{dsn}?schema=bench_{self.prefix}"

    def env(self, tracked: bool) -> dict[str, str]:
        return {
            "JOBCAST_BENCH_AMQP": self.amqp,
            "JOBCAST_BENCH_RESULTS": self.redis,
            "JOBCAST_BENCH_BROKER": self.broker,
            "JOBCAST_BENCH_STORE": self.store,
            "JOBCAST_BENCH_TRACK": "1" if tracked else "0",
            "JOBCAST_METRICS_SNAPSHOT_SECONDS": "0.5",
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
        }


def server(setup: Setup) -> JobcastTarget:
    target = JobcastTarget(
        broker_url=setup.broker,
        extra={"JOBCAST_STORE_URL": setup.store, "JOBCAST_METRICS_SNAPSHOT_SECONDS": "0.5"},
    )
    target.start()
    return target


def store_writes(target: JobcastTarget) -> float:
    """Job rows written by every process sharing the broker (the shared ``/metrics``)."""
    url = f"http://{HOST}:{target.ports[0]}/metrics"
    with urllib.request.urlopen(url, timeout=10) as reply:
        lines = reply.read().decode().splitlines()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in lines
        if line.startswith("jobcast_store_rows_written_total")
    )


def start_worker(setup: Setup, tracked: bool, queue: str, log: Any) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "celery", "-A", "bench.celery_app", "worker", "-P", "threads"]
    args += ["-c", str(setup.threads), "-Q", queue, "-n", f"{queue}@%h", "-l", "info"]
    args += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    env = {**os.environ, **setup.env(tracked), "C_FORCE_ROOT": "1"}
    worker = subprocess.Popen(args, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # its log says when it consumes
        if b"ready." in Path(log.name).read_bytes():
            return worker
        if worker.poll() is not None:
            break
        time.sleep(0.1)
    raise RuntimeError(f"the worker did not start:\n{Path(log.name).read_text()[-2000:]}")


def celery_row(setup: Setup, tracked: bool, scale: Scale) -> dict[str, float]:
    os.environ.update(setup.env(tracked))
    from bench.celery_app import make_app
    from jobcast.integrations.celery import jobcast_headers

    sender = make_app(tracked)
    steps = sender.tasks["bench.steps"]
    queue = f"{setup.prefix}-{'tracked' if tracked else 'plain'}"
    target = server(setup)
    log = open(target.workdir / "worker.log", "wb")  # noqa: SIM115 - closed below
    worker = start_worker(setup, tracked, queue, log)
    try:
        writes_before = store_writes(target)
        before, worker_before = target.stats(), process_stats(worker.pid)
        started = time.time()
        sent = [
            steps.apply_async(
                (setup.steps, setup.delay),
                queue=queue,
                headers=jobcast_headers(f"user-{index}") if tracked else None,
            )
            for index in range(setup.tasks)
        ]
        send_seconds = time.time() - started
        figures = {"send_ms_per_task": send_seconds / setup.tasks * 1000}
        if tracked:
            specs = [
                StreamSpec(target.watch_request(result.id, mint(f"user-{index}")))
                for index, result in enumerate(sent)
            ]
            load = LoadGenerator(HOST, target.ports, specs, processes=scale.processes)
            try:
                _, statuses = load.connect(timeout=scale.deadline)
                merged = load.collect(timeout=scale.deadline)
            finally:
                load.close()
            terminal = sum(min(1, stream.terminal) for stream in merged.streams)
            figures["terminal_missing"] = float(setup.tasks - terminal)
            figures["refused_streams"] = float(sum(status != 200 for status in statuses))
            figures["seconds"] = merged.last_receive - started
        for result in sent:  # every task ended (the result backend says so)
            result.get(timeout=scale.deadline)
        figures.setdefault("seconds", time.time() - started)
        after, worker_after = target.stats(), process_stats(worker.pid)
        figures["server_cpu_s"] = after.cpu_seconds - before.cpu_seconds
        figures["worker_cpu_s"] = worker_after.cpu_seconds - worker_before.cpu_seconds
        if tracked:
            time.sleep(1.5)  # the processes' shared snapshots (every 0.5 s) catch up
            updates = setup.tasks * setup.steps
            figures["store_writes_per_update"] = (store_writes(target) - writes_before) / updates
        return figures
    finally:
        worker.terminate()  # measured already: a slow warm shutdown only costs time
        try:
            worker.wait(5)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(5)
        log.close()
        with sender.connection_for_write() as conn:
            conn.default_channel.queue_delete(queue)
        target.stop()


async def drop_schema(setup: Setup) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(setup.postgres.replace("postgresql://", "postgresql+asyncpg://"))
    try:
        async with engine.begin() as connection:
            await connection.execute(text(f'DROP SCHEMA IF EXISTS "bench_{setup.prefix}" CASCADE'))
    finally:
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--delay", type=float, default=0.02)
    parser.add_argument("--threads", type=int, default=250, help="the worker's threads")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1/test")
    parser.add_argument("--amqp", default="amqp://guest:guest@127.0.0.1:5672//")
    parser.add_argument("--deadline", type=float, default=180.0, help="seconds per row, at most")
    parser.add_argument(
        "--smoke", action="store_true", help="a tiny run: print the checks, never fail on them"
    )
    args = parser.parse_args()
    setup = Setup(
        args.tasks,
        args.steps,
        args.delay,
        args.threads,
        args.redis,
        args.postgres,
        args.amqp,
        f"b{uuid.uuid4().hex[:10]}",
    )
    scale = Scale(
        jobs=args.tasks,
        job_steps=args.steps,
        job_delay=args.delay,
        processes=2,
        deadline=args.deadline,
    )
    rows: dict[str, dict[str, float]] = {}
    try:
        native = server(setup)
        try:
            rows[f"jobs-{args.tasks}"] = jobs(native, scale)
        finally:
            native.stop()
        # Untracked first: once a tracked app exists, its hooks see every send of the process.
        rows[f"celery-{args.tasks}-untracked"] = celery_row(setup, False, scale)
        rows[f"celery-{args.tasks}"] = celery_row(setup, True, scale)
    finally:
        asyncio.run(drop_schema(setup))
    if not report(rows, args.tasks) and not args.smoke:
        sys.exit(1)


def report(rows: dict[str, dict[str, float]], tasks: int) -> bool:
    """Print the table and the checks; whether every check holds."""
    names = sorted({name for figures in rows.values() for name in figures})
    print(f"{'figure':<26}" + "".join(f"{row:>24}" for row in rows))
    for name in names:
        cells = "".join(
            f"{rows[row][name]:>24.3f}" if name in rows[row] else f"{'-':>24}" for row in rows
        )
        print(f"{name:<26}{cells}")
    native, plain, tracked = (rows[r] for r in rows)
    ratio = tracked["server_cpu_s"] / native["server_cpu_s"]
    overhead = (tracked["worker_cpu_s"] - plain["worker_cpu_s"]) / tasks * 1000
    print(f"server CPU, celery / native: {ratio:.2f} (bar: <= 1.5)")
    print(f"worker CPU per task for tracking: {overhead:.2f} ms")
    checks = {
        "every terminal event delivered": tracked["terminal_missing"] == 0,
        "store writes per progress update < 0.2": tracked["store_writes_per_update"] < 0.2,
        "server CPU within 1.5x of native": ratio <= 1.5,
    }
    for check, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {check}")
    return all(checks.values())


if __name__ == "__main__":
    main()
