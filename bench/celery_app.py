"""The Celery app of ``python -m bench.celery_jobs`` (``celery -A bench.celery_app worker``).

One task, as a real one reports: ``steps`` progress calls, ``delay`` seconds of work apart.
``make_app`` builds it tracked by jobcast or not, from the ``JOBCAST_BENCH_*`` environment
the benchmark sets for its workers (and hands itself for its sender).
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery, Task

from jobcast.integrations.celery import progress, track


def make_app(tracked: bool) -> Celery:
    app = Celery(
        "jobcast_bench",
        broker=os.environ.get("JOBCAST_BENCH_AMQP", "amqp://guest:guest@127.0.0.1:5672//"),
        backend=os.environ.get("JOBCAST_BENCH_RESULTS", "redis://127.0.0.1:6379/14"),
    )
    app.conf.update(
        result_expires=600,
        broker_connection_retry_on_startup=True,
        worker_prefetch_multiplier=4,
        worker_hijack_root_logger=False,
    )
    if tracked:
        track(
            app,
            jobcast=os.environ.get("JOBCAST_BENCH_BROKER", "redis://127.0.0.1:6379/14"),
            store=os.environ.get("JOBCAST_BENCH_STORE", "sqlite+aiosqlite:///bench-jobs.db"),
        )

    @app.task(bind=True, name="bench.steps", shared=False)  # type: ignore[untyped-decorator]
    def steps(self: Task[Any, Any], count: int, delay: float) -> dict[str, int]:
        for step in range(count):
            time.sleep(delay)  # the task's own work
            progress(self, 100 * (step + 1) / count, stage="working")
        return {"steps": count}

    return app


app = make_app(os.environ.get("JOBCAST_BENCH_TRACK", "1") == "1")
