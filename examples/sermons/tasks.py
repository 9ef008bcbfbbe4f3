"""Processing a video is a Celery task, tracked as a jobcast job (``jobcast.integrations``).

Two Celery apps over the same broker (``SERMONS_CELERY_BROKER``, RabbitMQ by default):

- ``sender``, in the web process: ``POST /api/v2/videos`` creates the video's job and sends
  the task with the job's id as the task's id (``videos.py``); jobcast's servers revoke
  tasks with it (``JOBCAST_CELERY_APP=examples.sermons.tasks:sender``), so deleting a video
  stops its worker.
- ``app``, in the workers (``celery -A examples.sermons.tasks worker -Q sermons``), tracked
  over jobcast's HTTP API with a service token: workers need no access to the service's
  broker or store, as a worker on another machine would. The task reports its progress to
  the job and broadcasts ``video.status`` and ``summary.ready`` to browsers itself, through
  the authenticated publish endpoint (``worker.py``).

Workers read ``SERMONS_API_URL`` (the service's URL), ``SERMONS_SERVICE_TOKEN`` (a service
token: ``jobcast token --role service``), ``SERMONS_STEP_DELAY`` and
``SERMONS_UNAVAILABLE_IDS``. ``app`` is made when a worker asks for it, so the web process,
which only sends, never tracks.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from typing import Any

from celery import Celery, Task

from examples.sermons.worker import VideoReporter, VideoUnavailable, process
from jobcast.client import Client
from jobcast.integrations.celery import progress, track

KIND = "sermon.process"
DEFAULT_BROKER = "amqp://guest:guest@127.0.0.1:5672//"


def _celery(env: Mapping[str, str]) -> Celery:
    app = Celery("sermons", broker=env.get("SERMONS_CELERY_BROKER", DEFAULT_BROKER))
    app.conf.update(
        task_ignore_result=True,  # the job holds the result
        broker_connection_retry_on_startup=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
    )
    return app


#: The web process's app: sends tasks and revokes them (never tracked).
sender = _celery(os.environ)


def worker_app(env: Mapping[str, str] = os.environ) -> Celery:
    """The workers' app: the task, tracked over HTTP with a service token."""
    token = env.get("SERMONS_SERVICE_TOKEN")
    if not token:
        raise RuntimeError("set SERMONS_SERVICE_TOKEN to a service token (jobcast token)")
    api_url = env.get("SERMONS_API_URL", "http://127.0.0.1:8000")
    delay = float(env.get("SERMONS_STEP_DELAY", "0.5"))
    unavailable = {item for item in env.get("SERMONS_UNAVAILABLE_IDS", "").split(",") if item}
    app = _celery(env)
    track(app, jobcast=api_url, token=token)

    @app.task(bind=True, name=KIND, shared=False)  # type: ignore[untyped-decorator]
    def process_video(
        self: Task[Any, Any],
        youtube_id: str,
        title: str | None = None,
        channel_id: str | None = None,
    ) -> dict[str, Any]:
        def report(percent: int, message: str, stage: str) -> None:
            progress(self, percent, stage=stage, message=message)

        with Client(api_url, token=token) as client:
            reporter = VideoReporter(client, str(self.request.id), report)
            try:
                return process(reporter, youtube_id, delay, unavailable)
            except VideoUnavailable as exc:  # browsers are told; the job fails with it
                reporter.failed("video_unavailable", str(exc))
                raise

    return app


@functools.cache
def _worker_app() -> Celery:
    return worker_app()


def __getattr__(name: str) -> Any:
    """``app``, made on first use: by ``celery -A examples.sermons.tasks worker``."""
    if name == "app":
        return _worker_app()
    raise AttributeError(name)
