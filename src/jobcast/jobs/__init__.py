"""Jobs: the model, handler registry, handler context and the embedded runner."""

from __future__ import annotations

from jobcast.jobs.context import JobCancelled, JobContext
from jobcast.jobs.model import TERMINAL_STATES, InputFile, Job, JobState, job_topic
from jobcast.jobs.registry import HandlerSpec, Registry

__all__ = [
    "TERMINAL_STATES",
    "HandlerSpec",
    "InputFile",
    "Job",
    "JobCancelled",
    "JobContext",
    "JobState",
    "Registry",
    "job_topic",
]
