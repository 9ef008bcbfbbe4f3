"""The server's side of Dramatiq messages tracked as jobs (``dramatiq.py``, M3).

Dramatiq has no revoke: a queued message's job is ended ``cancelled`` by the server
(``jobs/external.py``, X1) and its worker skips the message when it takes it; a running
message cannot be stopped, so cancelling one is refused (409). It needs no configuration and
no Dramatiq import.
"""

from __future__ import annotations

from jobcast.errors import Conflict
from jobcast.jobs.model import Job, JobState


class DramatiqQueue:
    """Cancels the Dramatiq messages of tracked jobs that have not started."""

    async def revoke(self, job: Job) -> None:
        if job.state is JobState.RUNNING:
            raise Conflict(f"job {job.id} is a running Dramatiq message, which cannot be stopped")
