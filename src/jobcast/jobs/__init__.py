"""Jobs: the model, handler registry, handler context and the embedded runner.

The names are imported on first use, so ``jobcast.jobs.model``, which the client and the stores
import, loads neither the handler registry (and pydantic with it) nor the runner.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jobcast.jobs.context import JobCancelled, JobContext
    from jobcast.jobs.model import TERMINAL_STATES, InputFile, Job, JobState, job_topic
    from jobcast.jobs.registry import HandlerSpec, Registry
    from jobcast.jobs.retry import Fatal, Retry, RetryPolicy

_LOCATIONS = {
    "TERMINAL_STATES": "jobcast.jobs.model",
    "Fatal": "jobcast.jobs.retry",
    "Retry": "jobcast.jobs.retry",
    "RetryPolicy": "jobcast.jobs.retry",
    "HandlerSpec": "jobcast.jobs.registry",
    "InputFile": "jobcast.jobs.model",
    "Job": "jobcast.jobs.model",
    "JobCancelled": "jobcast.jobs.context",
    "JobContext": "jobcast.jobs.context",
    "JobState": "jobcast.jobs.model",
    "Registry": "jobcast.jobs.registry",
    "job_topic": "jobcast.jobs.model",
}

__all__ = [
    "TERMINAL_STATES",
    "Fatal",
    "HandlerSpec",
    "InputFile",
    "Job",
    "JobCancelled",
    "JobContext",
    "JobState",
    "Registry",
    "Retry",
    "RetryPolicy",
    "job_topic",
]


def __getattr__(name: str) -> Any:
    module = _LOCATIONS.get(name)
    if module is None:
        raise AttributeError(f"module 'jobcast.jobs' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
