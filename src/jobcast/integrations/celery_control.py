"""The server's side of Celery tasks tracked as jobs: cancelling one revokes its task.

A server given ``JOBCAST_CELERY_APP=module:app`` holds a :class:`CeleryQueue`
(``jobs/external.py``, X1): ``POST /api/jobs/{id}/cancel`` on a job whose ``runs_on`` is
``celery`` calls :meth:`CeleryQueue.revoke`. Celery broadcasts the revoke to its workers: a
task not started yet is dropped when a worker receives it; a running one is terminated when
``terminate`` (prefork: SIGTERM to its child), and the worker reports it ``cancelled``
(``celery.py``, G3). In a thread pool, where a running task cannot be terminated, its next
``progress`` call raises.
"""

from __future__ import annotations

import asyncio
import importlib

from celery import Celery

from jobcast.errors import InvalidInput
from jobcast.jobs.model import Job, JobState


class CeleryQueue:
    """Revokes the Celery tasks of tracked jobs."""

    def __init__(self, app: Celery, *, terminate: bool = True) -> None:
        self.app = app
        self.terminate = terminate

    @classmethod
    def load(cls, spec: str, *, terminate: bool = True) -> CeleryQueue:
        """The app that ``module:attribute`` names."""
        module_name, _, attribute = spec.partition(":")
        app = getattr(importlib.import_module(module_name), attribute or "app", None)
        if not isinstance(app, Celery):
            raise InvalidInput(f"{spec!r} does not name a Celery app (module:attribute)")
        return cls(app, terminate=terminate)

    async def revoke(self, job: Job) -> None:
        terminate = self.terminate and job.state is JobState.RUNNING
        # A broadcast over the Celery broker: blocking I/O, off the event loop.
        await asyncio.to_thread(self.app.control.revoke, job.id, terminate=terminate)
