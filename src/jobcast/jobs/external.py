"""Jobs that another system's workers run: Celery, RQ or Dramatiq tasks tracked as jobs.

``jobcast.integrations`` reports such a task as a job (``Job.runs_on`` names its queue); the
server only reads it, streams it and, when asked, cancels it through that queue. This module
is the server's side of that seam.

Decisions (cited as X1..X2):

X1. A job marks its queue in ``runs_on`` (stored, not in the snapshot), and the runner holds
    one :class:`ExternalQueue` per queue name, given to its constructor. ``POST
    /api/jobs/{id}/cancel`` on such a job asks its queue to revoke the task; a job still
    ``queued`` is then ended ``cancelled`` here at once (its queue drops the task when a
    worker receives it), a running one is ended by the worker that ran it, which the cancel
    waits for up to ``cancel_wait``.
X2. A server's start leaves such jobs alone: they are not the embedded runner's to recover.
    A dead worker's jobs are the integration's to settle (its heartbeat sweep).
"""

from __future__ import annotations

from typing import Protocol

from jobcast.jobs.model import Job


class ExternalQueue(Protocol):
    """The task queue behind jobs whose ``runs_on`` is its name (X1)."""

    async def revoke(self, job: Job) -> None:
        """Ask the queue not to run the task, and to stop it if it runs and may be stopped."""
        ...
