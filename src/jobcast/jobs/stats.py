"""What the runner counts about finished jobs, for ``/metrics``: plain numbers, no I/O.

A job is observed once, when it reaches a terminal state in this process (a queue worker's jobs
are counted by the worker, not by the server that queued them).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from jobcast.jobs.model import Job, JobState

#: Upper bounds (seconds) of the job duration histogram: demo jobs to hour-long transcodes.
DURATION_BUCKETS = (0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0)


@dataclass(slots=True)
class Durations:
    """One histogram: ``counts[i]`` jobs fell in bucket ``i`` (the last one is ``+Inf``)."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS) + 1))
    total: float = 0.0


@dataclass(slots=True)
class JobStats:
    """Durations of the jobs that ended here, by terminal state."""

    durations: dict[JobState, Durations] = field(default_factory=dict)

    def finished(self, job: Job) -> None:
        """Record ``job``, just moved to a terminal state: from its start (or, when it never
        started, its submission) to its end."""
        began = job.started_at if job.started_at is not None else job.created_at
        seconds = max(0.0, (job.finished_at or job.updated_at) - began)
        durations = self.durations.get(job.state)
        if durations is None:
            durations = self.durations[job.state] = Durations()
        durations.counts[bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1
        durations.total += seconds
