"""A job's SSE stream (``GET /api/jobs/{id}/events``, and an application's own job routes)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from starlette.responses import Response

from jobcast.auth import Principal
from jobcast.server.streams.job_frames import SseJobFrames, SseRender
from jobcast.server.streams.job_plan import is_terminal_event, plan_job_stream
from jobcast.server.streams.sse import SSE_HEADERS
from jobcast.server.streams.topic_stream import stream_response
from jobcast.wire import retry_frame

if TYPE_CHECKING:
    from jobcast.server.runtime import Runtime


async def job_event_stream(
    jc: Runtime,
    job_id: str,
    principal: Principal | None,
    last_event_id: str | None,
    *,
    kind: str | None = None,
    render: SseRender | None = None,
    heartbeat: Callable[[], bytes] | None = None,
) -> Response:
    """The SSE response for a job's stream: snapshot, replay, live, end after the terminal."""
    plan = await plan_job_stream(jc, job_id, principal, last_event_id, kind=kind)
    frames = SseJobFrames(plan, render)
    prelude = (frames.snapshot() or b"") if plan.snapshot else b""
    if plan.subscription is None:  # finished: answer at once and end (J3)
        if not (plan.snapshot or plan.events or plan.terminal):
            return Response(status_code=204)
        parts = [retry_frame(jc.settings.retry_ms), prelude]
        parts.extend(frames.event(event) or b"" for event in plan.events)
        if plan.terminal:
            parts.append(frames.terminal() or b"")
        headers = {name.decode(): value.decode() for name, value in SSE_HEADERS}
        return Response(b"".join(parts), headers=headers)
    return stream_response(
        jc,
        plan.subscription,
        plan.replay,
        last_event_id,
        prelude,
        is_terminal_event,
        event_frame=None if render is None else frames.event_bytes,
        heartbeat=heartbeat,
    )
