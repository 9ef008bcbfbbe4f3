"""``/api/events``: publish over HTTP, subscribe over SSE."""

# No ``from __future__ import annotations``: FastAPI reads these signatures at runtime.

import contextlib
import hashlib
import math
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.requests import HTTPConnection

from jobcast.auth import Principal
from jobcast.errors import Conflict, InvalidInput, JobcastError, PayloadTooLarge
from jobcast.events import EventDraft
from jobcast.jobs.idempotency import REPLAYED_HEADER, valid_key
from jobcast.server.http.errors import jobcast_router
from jobcast.server.routes.table import EVENTS_STREAM, PUBLISH
from jobcast.server.streams.sse import EventStreamResponse
from jobcast.server.streams.topic_stream import open_stream
from jobcast.topics import parse_patterns

if TYPE_CHECKING:
    from jobcast.server.runtime import Runtime


class PublishRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    topic: str = Field(description="Topic name, e.g. `jobs/8f3c` or `videos/42`.")
    type: str = Field(description="Event type, e.g. `video.status`; sent as the SSE `event:`.")
    data: Any = Field(None, description="Any JSON value; sent verbatim as the SSE `data:`.")

    @field_validator("data")
    @classmethod
    def _only_json_numbers(cls, value: Any) -> Any:
        # Python's json reads NaN, Infinity and 1e400, which JSON cannot hold: published,
        # they would reach subscribers as null. (The fast path's orjson refuses them.)
        if not _finite(value):
            raise ValueError("NaN and infinite numbers are not JSON")
        return value


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(item) for item in value.values())
    if isinstance(value, list):
        return all(_finite(item) for item in value)
    return True


class Published(BaseModel):
    id: str


class PublishedBatch(BaseModel):
    ids: list[str]


#: The answer to a publish retried with its Idempotency-Key (idempotency.I5).
REPLAY_DOC: dict[str, Any] = {
    "description": "A retry of an earlier publish with this Idempotency-Key and the same "
    "events: the original ids; nothing is published again.",
    "headers": {
        REPLAYED_HEADER: {"description": "`true`: answered again", "schema": {"type": "string"}}
    },
}

SSE_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "A Server-Sent Events stream. Each frame has `id:`, `event:` (the type) "
        "and `data:` (the published JSON). Heartbeats are `: ping` comments; a resume that "
        "history cannot cover starts with `event: reset`.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}


def events_router(jc: "Runtime") -> APIRouter:
    router = jobcast_router(tags=["events"])
    principal_dep = Annotated[Principal | None, Depends(jc.principal)]

    @router.post(
        PUBLISH.path,
        status_code=202,
        response_model=Published | PublishedBatch,
        responses={200: REPLAY_DOC},
        summary="Publish one event, or a batch (a JSON list) atomically",
    )
    async def publish(
        body: PublishRequest | list[PublishRequest],
        request: Request,
        response: Response,
        principal: principal_dep,
        idempotency_key: Annotated[
            str | None,
            Header(
                alias="Idempotency-Key",
                description="Publish at most once: a retry with this key and the same events "
                "is answered 200 with the original ids and publishes nothing.",
            ),
        ] = None,
    ) -> Published | PublishedBatch:
        # Normally answered by fast_publish.py before reaching here (one definition, below).
        items = body if isinstance(body, list) else [body]
        drafts = [(item.topic, item.type, item.data) for item in items]
        ids, replayed = await publish_events(
            jc, request, principal, drafts, batch=isinstance(body, list)
        )
        if replayed:  # idempotency.I5
            response.status_code = 200
            response.headers[REPLAYED_HEADER] = "true"
        return PublishedBatch(ids=ids) if isinstance(body, list) else Published(id=ids[0])

    @router.get(
        EVENTS_STREAM.path,
        status_code=200,
        response_class=EventStreamResponse,
        responses=SSE_DOC,
        summary="Subscribe to topics as a Server-Sent Events stream",
    )
    async def subscribe(
        request: Request,
        principal: principal_dep,
        topic: Annotated[
            list[str], Query(description="Topic or `prefix/*` pattern; repeat for several.")
        ],
        last_event_id: Annotated[
            str | None,
            Query(description="Resume after this id (for clients that cannot set headers)."),
        ] = None,
        last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    ) -> EventStreamResponse:
        # Normally answered by fast_streams.py before reaching here; the parameters
        # above document the route and validate it when the fast path is not installed.
        return await open_events_stream(jc, request, principal)

    return router


async def open_events_stream(
    jc: "Runtime", connection: HTTPConnection, principal: Principal | None
) -> EventStreamResponse:
    """``GET /api/events`` from a request's query and headers (one place for both paths)."""
    query = connection.query_params
    patterns = parse_patterns(query.getlist("topic"), limit=jc.settings.max_topics_per_subscription)
    allow = jc.policy.subscription_filter(principal, patterns)
    return await open_stream(jc, patterns, resume_id(connection), allow, principal=principal)


async def publish_events(
    jc: "Runtime",
    connection: HTTPConnection,
    principal: Principal | None,
    items: list[tuple[str, str, Any]],
    *,
    batch: bool,
) -> tuple[list[str], bool]:
    """``POST /api/events`` once its body is parsed: check, publish, return the new ids, and
    whether they are an earlier publish's, answered again for its idempotency key (I5)."""
    if principal is not None:
        await jc.limiter.hit("publish", principal, connection)
    drafts = checked_drafts(jc, principal, items, batch=batch)
    key = valid_key(connection.headers.get("idempotency-key"), None)
    subject = principal.subject if principal else ""
    if jc.hub.tracing is not None:  # tracing.O5: the caller's trace
        with jc.hub.tracing.incoming(connection.headers):
            return await _publish(jc, subject, key, drafts)
    return await _publish(jc, subject, key, drafts)


def publish_now(
    jc: "Runtime",
    connection: HTTPConnection,
    principal: Principal,
    items: list[tuple[str, str, Any]],
    *,
    batch: bool,
) -> list[str] | None:
    """``publish_events`` without waiting, where it needs nothing it would wait for: a
    privileged caller (no rate limit to count), no idempotency key, a broker that can publish
    at once (``Hub.publish_now``). ``None`` when it cannot, with nothing done: then
    ``publish_events`` answers."""
    if not principal.is_privileged or "idempotency-key" in connection.headers:
        return None
    events = jc.hub.publish_now(checked_drafts(jc, principal, items, batch=batch))
    return None if events is None else [event.id for event in events]


def checked_drafts(
    jc: "Runtime", principal: Principal | None, items: list[tuple[str, str, Any]], *, batch: bool
) -> list[EventDraft]:
    """The events of a publish, checked against the limits and the caller's publish rights."""
    settings = jc.settings
    if not items:
        raise InvalidInput("the batch is empty")
    if len(items) > settings.max_batch_events:
        raise PayloadTooLarge(f"at most {settings.max_batch_events} events per batch")
    drafts = []
    for index, (topic, event_type, data) in enumerate(items):
        draft = EventDraft.create(topic, event_type, data)
        if len(draft.data_json) > settings.max_event_bytes:
            where = f"event {index}" if batch else "the event"
            raise PayloadTooLarge(
                f"{where} has {len(draft.data_json)} bytes of data; the limit is "
                f"{settings.max_event_bytes}"
            )
        jc.policy.check_publish(principal, draft.topic)
        drafts.append(draft)
    return drafts


async def _publish(
    jc: "Runtime", subject: str, key: str | None, drafts: list[EventDraft]
) -> tuple[list[str], bool]:
    if key is None:
        events = await jc.hub.publish_many(drafts)
        return [event.id for event in events], False
    return await _publish_once(jc, subject, key, drafts)


async def _publish_once(
    jc: "Runtime", subject: str, key: str, drafts: list[EventDraft]
) -> tuple[list[str], bool]:
    """A keyed publish (idempotency.I5): the first publishes and records its ids; a retry with
    the same events gets those ids back (replayed) and publishes nothing."""
    fingerprint = hashlib.sha256()
    for draft in drafts:
        fingerprint.update(
            b"%s\0%s\0%s\n" % (draft.topic.encode(), draft.type.encode(), draft.data_json)
        )
    request_hash = fingerprint.hexdigest()
    retention = jc.settings.idempotency_retention_seconds
    earlier = await jc.store.claim_publish(subject, key, request_hash, retention)
    if earlier is not None:
        if earlier[0] != request_hash:
            raise Conflict(
                "this Idempotency-Key was already used for a different publish; "
                "use a new key for new events"
            )
        if earlier[1] is None:
            raise Conflict("a publish with this Idempotency-Key is under way; retry shortly")
        return earlier[1], True
    try:
        events = await jc.hub.publish_many(drafts)
    except BaseException:
        with contextlib.suppress(JobcastError):
            await jc.store.record_publish(subject, key, None)
        raise
    ids = [event.id for event in events]
    await jc.store.record_publish(subject, key, ids)
    return ids, False


def resume_id(connection: HTTPConnection) -> str | None:
    """Where a stream resumes: ``Last-Event-ID``, or ``?last_event_id=`` for clients that
    cannot set headers."""
    return connection.headers.get("last-event-id") or connection.query_params.get("last_event_id")
