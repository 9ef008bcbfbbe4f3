"""How the job runner is tuned: what the settings hand to the runner, without loading it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class RunnerOptions:
    uploads_dir: Path
    concurrency: int = 4
    default_timeout: float | None = 3600.0
    progress_interval: float = 0.1
    store_interval: float = 0.25
    max_queued: int = 10_000
    max_attempts: int = 3
    max_event_bytes: int = 64 * 1024
    #: How long ``cancel`` waits for a running handler to stop before answering.
    cancel_wait: float = 5.0
    #: Threads of ended sync jobs that may still run while others take their place
    #: (lifecycle.R2).
    max_abandoned_threads: int = 8
    #: OpenTelemetry spans for submissions and attempts (``tracing.py``; the otel extra).
    tracing: bool = False
    #: How long an idempotency key keeps returning its job (idempotency.I4).
    idempotency_retention: float = 24 * 3600.0
    #: Most jobs of one owner running at once; ``None``: no limit (schedule.P6).
    owner_concurrency: int | None = None
