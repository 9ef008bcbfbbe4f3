"""The videos API (``/api/v2/videos``): list, get, submit a YouTube id, delete.

A video is the jobcast job of the Celery task that processes it (kind ``sermon.process``,
``tasks.py``): its id, state, progress and result are the job's, shown in the front end's
``VideoDTO`` shape. Submitting creates the job ``queued`` (with the caller as its owner) and
sends the task under the job's id; deleting a running video revokes its task. Callers sign in
with a bearer token or the cookie session (``POST /api/auth/session``), whose state-changing
requests need the ``X-CSRF-Token`` header; responses to cookie requests carry the token too.
"""

# No ``from __future__ import annotations``: FastAPI reads these signatures at runtime.

import asyncio
import contextlib
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, Field

from examples.sermons.config import SermonsConfig
from examples.sermons.dtos import (
    EventType,
    VideoStatus,
    error_event,
    video_dto,
    video_status_event,
    video_topic,
)
from examples.sermons.tasks import KIND, sender
from jobcast import Jobcast, JobcastError, NotFound, Principal
from jobcast.jobs import Job
from jobcast.jobs.reported import ReportedJobs
from jobcast.server.http.credentials import CSRF_COOKIE
from jobcast.stores.base import JobQuery


class VideoSubmission(BaseModel):
    youtube_id: str = Field(pattern=r"^[A-Za-z0-9_-]{11}$", examples=["dQw4w9WgXcQ"])
    title: str | None = Field(None, max_length=200)
    channel_id: str | None = Field(None, max_length=100)


def videos_router(jc: Jobcast, config: SermonsConfig) -> APIRouter:
    router = APIRouter(prefix="/api/v2/videos", tags=["videos"])
    principal_dep = Annotated[Principal | None, Depends(jc.principal)]

    async def send(job: Job) -> None:
        """The job, ``queued`` (as ``track`` creates a sent task's), then its Celery task."""
        jobs = ReportedJobs(jc.hub, jc.store, jc.runner.access, jc.settings.runner_options())
        await jobs.queued(job)
        await asyncio.to_thread(  # the broker's client blocks: off the event loop
            sender.send_task, KIND, kwargs=job.params, task_id=job.id, queue=config.celery_queue
        )

    async def video_job(video_id: str, principal: Principal | None, action: Any) -> Job:
        job = await jc.runner.get(video_id)
        if job is None or job.kind != KIND:
            raise NotFound(f"no video {video_id!r}")
        jc.policy.check_job(principal, job, action)
        return job

    @router.get("", summary="List your videos, newest first")
    async def list_videos(
        request: Request,
        response: Response,
        principal: principal_dep,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
    ) -> list[dict[str, Any]]:
        owner = jc.policy.job_list_owner(principal)
        page = await jc.runner.list_jobs(JobQuery(owner=owner, kind=KIND, limit=limit))
        echo_csrf_token(request, response, principal)
        return [video_dto(job.to_dict()) for job in page.jobs]

    @router.get("/{video_id}", summary="One video, with its summary once processed")
    async def get_video(
        video_id: str, request: Request, response: Response, principal: principal_dep
    ) -> dict[str, Any]:
        job = await video_job(video_id, principal, "read")
        echo_csrf_token(request, response, principal)
        return video_dto(job.to_dict())

    @router.post("", status_code=202, summary="Submit a YouTube video for transcription")
    async def submit_video(
        body: VideoSubmission, request: Request, principal: principal_dep
    ) -> dict[str, Any]:
        subject = principal.subject if principal else ""
        jc.policy.check_job(principal, Job(id="new", kind=KIND, owner=subject), "submit")
        await jc.limiter.hit("submit", principal, request)
        params = body.model_dump(exclude_none=True)
        job_id = str(uuid.uuid4())
        await send(Job(id=job_id, kind=KIND, owner=subject, params=params, runs_on="celery"))
        job = await video_job(job_id, principal, "read")
        event = video_status_event(job.id, VideoStatus.QUEUED, 0, "Video queued for processing")
        await jc.hub.publish(video_topic(job.id), EventType.VIDEO_STATUS.value, event)
        # Resuming the events stream after this id (Last-Event-ID) shows every event of the
        # video from QUEUED on, however late the client subscribes.
        return {**video_dto(job.to_dict()), "last_event_id": job.last_event_id}

    @router.delete("/{video_id}", status_code=204, summary="Delete a video (stops processing)")
    async def delete_video(video_id: str, principal: principal_dep) -> Response:
        job = await video_job(video_id, principal, "delete")
        if not job.terminal:
            await jc.runner.cancel(job.id)  # revoked; a running task is terminated
            await _tell_browsers_failed(jc, job.id, "Processing stopped")
        await jc.runner.delete(job.id)
        return Response(status_code=204)

    return router


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


def echo_csrf_token(request: Request, response: Response, principal: Principal | None) -> None:
    """Cookie sessions read their CSRF token from any response, as the front end expects."""
    token = request.cookies.get(CSRF_COOKIE)
    if principal is not None and principal.via == "cookie" and token:
        response.headers["X-CSRF-Token"] = token
