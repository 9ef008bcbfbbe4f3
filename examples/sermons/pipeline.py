"""Processing a video is a jobcast job; the job runs the worker process and follows it.

The job gives the videos API its state, progress, result, cancellation and restart rules; the
worker (``worker.py``) does the work and broadcasts ``video.status`` and ``summary.ready`` to
browsers itself, through the authenticated publish endpoint, with a short-lived service token
minted here. When the worker dies without saying why, or the job is cancelled, the job says so
to browsers (``video.status`` FAILED and ``error``) in its place.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from examples.sermons.config import SermonsConfig
from examples.sermons.dtos import (
    EventType,
    VideoStatus,
    error_event,
    video_status_event,
    video_topic,
)
from jobcast import Jobcast, JobcastError
from jobcast.jobs import JobCancelled, JobContext, Registry

KIND = "sermon.process"
#: Longest a video may take; the worker's token lives as long.
TIMEOUT_SECONDS = 3600.0
#: The directory that holds the ``examples`` package, so the worker can import it.
PROJECT_ROOT = Path(__file__).resolve().parents[2]


class VideoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    youtube_id: str = Field(pattern=r"^[A-Za-z0-9_-]{11}$", description="The YouTube video id.")
    title: str | None = Field(None, max_length=200)
    channel_id: str | None = Field(None, max_length=100)


class WorkerFailed(Exception):
    """The worker process reported a failure (``reported``: it told browsers) or died."""

    def __init__(self, message: str, *, reported: bool) -> None:
        super().__init__(message)
        self.reported = reported


def registry(jc: Jobcast, config: SermonsConfig) -> Registry:
    """The job handlers of this service (bound to its jobcast instance and configuration)."""
    handlers = Registry()

    @handlers.handler(KIND, params_model=VideoParams, timeout=TIMEOUT_SECONDS)
    async def process_video(ctx: JobContext, params: VideoParams) -> Any:
        try:
            return await _run_worker(jc, config, ctx, params)
        except WorkerFailed as exc:
            if not exc.reported:
                await _tell_browsers_failed(jc, ctx.job_id, str(exc))
            raise
        except (asyncio.CancelledError, JobCancelled):  # cancelled, deleted or timed out
            await _tell_browsers_failed(jc, ctx.job_id, "Processing stopped")
            raise

    return handlers


async def _run_worker(
    jc: Jobcast, config: SermonsConfig, ctx: JobContext, params: VideoParams
) -> Any:
    token = jc.tokens.mint("sermons-worker", role="service", ttl=TIMEOUT_SECONDS)
    path = [str(PROJECT_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(path),
        "SERMONS_API_URL": config.internal_url,
        "SERMONS_SERVICE_TOKEN": token,  # in the environment, not argv: ps shows argv
        "SERMONS_STEP_DELAY": str(config.step_delay),
        "SERMONS_UNAVAILABLE_IDS": ",".join(sorted(config.unavailable_ids)),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "examples.sermons.worker",
        ctx.job_id,
        params.youtube_id,
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )
    result: Any = None
    failure: str | None = None
    try:
        lines = process.stdout
        if lines is None:
            raise RuntimeError("the worker's stdout is not a pipe")
        while line := await lines.readline():
            report = json.loads(line)
            if "progress" in report:
                ctx.progress(report["progress"], report.get("message"), report.get("stage"))
            elif "result" in report:
                result = report["result"]
            elif "error" in report:
                failure = str(report["error"])
        code = await process.wait()
    finally:
        if process.returncode is None:  # cancelled or timed out: stop the worker too
            process.kill()
            await process.communicate()
    if failure is not None:
        raise WorkerFailed(failure, reported=True)
    if code != 0 or result is None:
        raise WorkerFailed(f"the worker stopped (exit status {code})", reported=False)
    return result


async def _tell_browsers_failed(jc: Jobcast, video_id: str, message: str) -> None:
    topic = video_topic(video_id)
    with contextlib.suppress(JobcastError):  # the job's own state still says it
        await jc.hub.publish(
            topic,
            EventType.VIDEO_STATUS.value,
            video_status_event(video_id, VideoStatus.FAILED, None, message),
        )
        await jc.hub.publish(
            topic, EventType.ERROR.value, error_event(video_id, "processing_failed", message)
        )
