"""The API v2 events stream (``/api/v2/events/stream``) and its health check.

Frames are jobcast's (``id:``, ``event:`` the type, ``data:`` the DTO), so ``Last-Event-ID``
resumes work; the one difference is the heartbeat, which this front end listens for as a named
``heartbeat`` event with a JSON timestamp rather than a comment. As with every jobcast stream,
it is sent after ``SSE_HEARTBEAT_INTERVAL`` seconds without any other event.
"""

# No ``from __future__ import annotations``: FastAPI reads these signatures at runtime.

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Header, Query

from examples.sermons.dtos import EventType, heartbeat_event, video_topic
from jobcast import Jobcast, Principal
from jobcast.server.streams.sse import EventStreamResponse
from jobcast.topics import parse_patterns
from jobcast.wire import ServerSentEvent


def heartbeat_frame() -> bytes:
    data = orjson.dumps(heartbeat_event()).decode()
    return ServerSentEvent(data=data, event=EventType.HEARTBEAT.value).encode()


def events_router(jc: Jobcast) -> APIRouter:
    router = APIRouter(prefix="/api/v2/events", tags=["events"])
    principal_dep = Annotated[Principal | None, Depends(jc.principal)]

    @router.get(
        "/stream",
        response_class=EventStreamResponse,
        summary="Server-Sent Events: video.status, summary.ready, error, heartbeat",
    )
    async def stream(
        principal: principal_dep,
        video_id: Annotated[
            list[str] | None, Query(description="Only these videos' events; repeat for several.")
        ] = None,
        last_event_id: Annotated[str | None, Query(description="Resume after this id.")] = None,
        last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    ) -> EventStreamResponse:
        topics = [video_topic(video) for video in video_id or []] or [video_topic("*")]
        patterns = parse_patterns(topics, limit=jc.settings.max_topics_per_subscription)
        allow = jc.policy.subscription_filter(principal, patterns)
        return await jc.open_stream(
            patterns,
            last_event_id_header or last_event_id,
            allow,
            principal=principal,
            heartbeat=heartbeat_frame,
        )

    @router.get("/health", summary="Health of the events service")
    async def health() -> dict[str, Any]:
        hub = jc.hub
        return {
            "status": "draining" if hub.draining else "healthy",
            "service": "sse_events",
            "connected_clients": hub.subscriber_count,
        }

    return router
