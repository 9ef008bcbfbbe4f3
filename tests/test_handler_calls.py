"""How an interrupted job ends (lifecycle.R3, ``after_interruption``): retried only when safe."""

from __future__ import annotations

from typing import Any

import pytest

from jobcast.jobs.handler_calls import after_interruption
from jobcast.jobs.model import JobState
from jobcast.jobs.registry import HandlerSpec


async def handler(ctx: Any, params: Any) -> None:
    return None


@pytest.mark.parametrize(
    ("retry_safe", "attempts", "state", "reason"),
    [
        (True, 1, JobState.QUEUED, None),
        (True, 2, JobState.QUEUED, None),
        (True, 3, JobState.FAILED, "it was already tried 3 times"),
        (False, 1, JobState.FAILED, "its handler is not marked retry_safe"),
    ],
)
def test_only_retry_safe_jobs_with_attempts_left_run_again(
    retry_safe: bool, attempts: int, state: JobState, reason: str | None
) -> None:
    spec = HandlerSpec("k", handler, retry_safe=retry_safe)
    ending = after_interruption(spec, attempts, 3, "the worker died")
    assert ending.state is state
    if reason is None:
        assert ending.fields == {"message": "re-queued: the worker died"}
    else:
        error = ending.fields["error"]
        assert error["type"] == "Interrupted"
        assert error["message"].startswith(f"the worker died (attempt {attempts})")
        assert error["message"].endswith(reason)


def test_a_job_whose_handler_is_gone_fails() -> None:
    ending = after_interruption(None, 1, 3, "restart")
    assert ending.state is JobState.FAILED
    assert "not marked retry_safe" in ending.fields["error"]["message"]
