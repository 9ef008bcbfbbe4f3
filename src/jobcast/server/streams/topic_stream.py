"""A stream of topics as SSE (``GET /api/events``, and an application's own stream routes)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from jobcast.auth import Principal
from jobcast.brokers.base import Replay
from jobcast.events import Event
from jobcast.server.http.credentials import stream_owner
from jobcast.server.streams.sse import EventStreamResponse
from jobcast.subscription import Subscription
from jobcast.topics import TopicPattern

if TYPE_CHECKING:
    from jobcast.server.runtime import Runtime


async def open_stream(
    runtime: Runtime,
    patterns: tuple[TopicPattern, ...],
    last_event_id: str | None,
    allow: Callable[[str], bool] | None,
    *,
    principal: Principal | None = None,
    prelude: bytes = b"",
    final: Callable[[Event], bool] | None = None,
    event_frame: Callable[[Event], bytes] | None = None,
    heartbeat: Callable[[], bytes] | None = None,
) -> EventStreamResponse:
    """Subscribe to ``patterns`` (resuming after ``last_event_id``) and frame it as SSE."""
    subscription, replay = await runtime.hub.subscribe(
        patterns, last_event_id=last_event_id, allow=allow, **stream_owner(principal)
    )
    return stream_response(
        runtime,
        subscription,
        replay,
        last_event_id,
        prelude,
        final,
        event_frame=event_frame,
        heartbeat=heartbeat,
    )


def stream_response(
    runtime: Runtime,
    subscription: Subscription,
    replay: Replay | None,
    last_event_id: str | None,
    prelude: bytes = b"",
    final: Callable[[Event], bool] | None = None,
    *,
    event_frame: Callable[[Event], bytes] | None = None,
    heartbeat: Callable[[], bytes] | None = None,
) -> EventStreamResponse:
    """The SSE response for a subscription the caller already holds."""
    return EventStreamResponse(
        subscription,
        replay=replay,
        last_event_id=last_event_id,
        retry_ms=runtime.settings.retry_ms,
        on_close=runtime.hub.unsubscribe,
        on_write=runtime.metrics.observe_write,
        closing_frame=runtime.closing_frame,
        prelude=prelude,
        final=final,
        event_frame=event_frame,
        heartbeat=heartbeat,
    )
