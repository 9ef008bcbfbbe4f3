"""Recovery at a server's start: the jobs a stopped or crashed embedded runner left behind.

A server with queue workers leaves this to the workers (``worker_queue.W1``): the jobs that
were running belong to them.

Decisions (cited as C1..C3):

C1. A job found ``running`` was interrupted by a crash: the restart rule applies to it
    (lifecycle.R3: re-queued or failed as ``Interrupted``), so nothing is left ``running``.
    Queued jobs, re-queued ones among them, resume in submission order.
C2. A recovered job's ``seq`` goes on from the newest event it published, which the store may
    lag: it is written at most every ``store_interval``. (A publish-only process,
    a queue worker or an integration's reporter, replays up to Redis's head: redis.X2.)
C3. A job found ``running`` and parked (input_wait.N8: waiting for input, its kind
    re-runnable) was not interrupted: it stays parked, tracked, its wake armed by the
    runner, with its ``attempts`` and its wait's ``timeout_at`` as they were.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import orjson

from jobcast.errors import JobcastError
from jobcast.events import EventId
from jobcast.jobs import input_wait
from jobcast.jobs.model import Job, JobState, job_topic
from jobcast.topics import TopicPattern

if TYPE_CHECKING:
    from jobcast.hub import Hub
    from jobcast.jobs.lifecycle import JobLifecycle

#: Every unfinished job is recovered (the runner bounds how many there can be).
ALL = 1_000_000


async def recover(lifecycle: JobLifecycle) -> tuple[list[str], list[str]]:
    """Settle the interrupted jobs and track the queued ones and the parked ones; the ids of
    the queued ones, in order (C1), and of the parked ones (C3)."""
    store, hub = lifecycle.store, lifecycle.hub
    parked = []
    for job in await store.in_states([JobState.RUNNING], limit=ALL):
        if job.runs_on is not None:  # another queue's task (external.X2)
            continue
        spec = lifecycle.registry.find(job.kind)
        live = lifecycle.track(await caught_up(hub, job))
        if input_wait.is_parked(job, spec is not None and spec.rerunnable):  # C3
            live.parked = True
            parked.append(job.id)
            continue
        await lifecycle.interrupted(live, "the server stopped while the job was running")
    queued = []
    for job in await store.in_states([JobState.QUEUED], limit=ALL):
        if job.runs_on is not None:
            continue
        lifecycle.track(await caught_up(hub, job))
        queued.append(job.id)
    return queued, parked


async def caught_up(hub: Hub, job: Job) -> Job:
    """``job`` with the ``seq`` of the newest event it published (C2).

    Continuing from the stored ``seq`` would number new events as old ones. The events after
    the stored one are in the history: the newest ``seq`` among them is where the job's
    numbering goes on. (History that no longer has them, or that is new, can tell nothing: the
    stored ``seq`` stays.)
    """
    after = EventId.parse(job.last_event_id) if job.last_event_id else None
    if after is None or after.epoch != hub.broker.epoch:
        return job
    topic = (TopicPattern(job_topic(job.id), None),)
    with contextlib.suppress(JobcastError):
        missed = await hub.broker.replay(topic, after, hub.options.max_replay)
        for event in missed.events:
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                job.seq = max(job.seq, int(orjson.loads(event.data_json)["seq"]))
    return job
