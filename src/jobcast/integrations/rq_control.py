"""The server's side of RQ jobs tracked as jobcast jobs: cancelling one stops or cancels it.

A server given ``JOBCAST_RQ_REDIS_URL`` (the Redis the RQ queues live in) holds an
:class:`RqQueue` (``jobs/external.py``, X1): a queued RQ job is cancelled in its queue (the
server ends its jobcast job ``cancelled``), a running one is stopped with RQ's
``send_stop_job_command``: its worker kills the work horse and the job's ``on_stopped``
callback reports it ``cancelled`` (``rq.py``, Q4).
"""

from __future__ import annotations

import asyncio

import redis
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job as RqJob

from jobcast.jobs.model import Job, JobState


class RqQueue:
    """Cancels and stops the RQ jobs of tracked jobs."""

    def __init__(self, redis_url: str) -> None:
        self.connection = redis.Redis.from_url(redis_url)

    async def revoke(self, job: Job) -> None:
        # Blocking redis-py calls, off the event loop.
        await asyncio.to_thread(self._revoke, job.id, job.state is JobState.RUNNING)

    def _revoke(self, job_id: str, running: bool) -> None:
        try:
            if running:
                send_stop_job_command(self.connection, job_id)
            else:
                RqJob.fetch(job_id, connection=self.connection).cancel()
        except (NoSuchJobError, InvalidJobOperation):
            pass  # gone or already over: the jobcast job ends as the cancel decides
