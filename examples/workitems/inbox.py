"""The inbox's routes: e-mail intake, the live stream, the list, and the dashboard.

- ``POST /api/email/intake`` (the mail gateway, with a ``service`` token): the e-mail becomes a
  work item, stored and broadcast as ``new_workitem``; answers ``{"status": "success",
  "workitem_id": ...}``.
- ``GET /sse/workitems``: first ``{"event": "connected", "connection_id": ...}``, then
  ``{"event": "new_workitem", "data": {...}}`` for each new work item, as unnamed SSE messages
  (the dashboard's ``onmessage`` receives them), with ids so a reconnecting client resumes
  after the last one it saw; ``{"event": "heartbeat", "timestamp": ...}`` while idle.
- ``GET /api/workitems``: the newest work items (the dashboard's first page).
"""

# No ``from __future__ import annotations``: FastAPI reads these signatures at runtime.

import time
import uuid
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Header, Query
from pydantic import BaseModel, ConfigDict, Field

from examples.workitems.extract import work_item
from examples.workitems.store import WorkItemStore
from jobcast import Event, Jobcast, Principal
from jobcast.server.streams.sse import EventStreamResponse
from jobcast.topics import TopicPattern

TOPIC = "workitems"
EVENT_TYPE = "new_workitem"
PATTERNS = (TopicPattern.parse(TOPIC),)


class Email(BaseModel):
    """An e-mail as the mail gateway posts it."""

    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True)

    from_email: str = Field(
        alias="from", pattern=r"^[^@\s]+@[^@\s]+$", max_length=320, examples=["broker@example.com"]
    )
    subject: str = Field(max_length=998)
    body: str = Field("", max_length=200_000, description="The plain-text body.")
    message_id: str | None = Field(
        None, max_length=998, description="The Message-ID header: a redelivery is recognised."
    )
    submission_id: str | None = Field(None, max_length=100)


def message(data: dict[str, Any]) -> bytes:
    """An unnamed SSE message (``onmessage``), without an id."""
    return b"data: %s\n\n" % orjson.dumps(data)


def workitem_frame(event: Event) -> bytes:
    """A published work item: its data is already the ``{"event", "data"}`` envelope."""
    return b"id: %s\ndata: %s\n\n" % (event.id.encode(), event.data_json)


def heartbeat() -> bytes:
    return message({"event": "heartbeat", "timestamp": time.time()})


def inbox_router(jc: Jobcast, store: WorkItemStore) -> APIRouter:
    router = APIRouter(tags=["workitems"])
    principal_dep = Annotated[Principal | None, Depends(jc.principal)]

    @router.post("/api/email/intake", summary="Turn an e-mail into a work item and broadcast it")
    async def intake(email: Email, principal: principal_dep) -> dict[str, str]:
        jc.policy.check_publish(principal, TOPIC)  # a service token, or a grant on the topic
        item = work_item(email.subject, email.from_email, email.body, email.submission_id)
        item, new = await store.add(item, email.message_id)
        if new:
            await jc.hub.publish(TOPIC, EVENT_TYPE, {"event": EVENT_TYPE, "data": item})
        return {"status": "success", "workitem_id": item["id"]}

    @router.get(
        "/sse/workitems",
        response_class=EventStreamResponse,
        summary="Server-Sent Events: connected, then new work items",
    )
    async def stream(
        principal: principal_dep,
        last_event_id: Annotated[str | None, Query(description="Resume after this id.")] = None,
        last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    ) -> EventStreamResponse:
        allow = jc.policy.subscription_filter(principal, PATTERNS)
        connected = {"event": "connected", "connection_id": str(uuid.uuid4())}
        return await jc.open_stream(
            PATTERNS,
            last_event_id_header or last_event_id,
            allow,
            principal=principal,
            prelude=message(connected),
            event_frame=workitem_frame,
            heartbeat=heartbeat,
        )

    @router.get("/api/workitems", summary="The newest work items")
    async def recent(
        principal: principal_dep, limit: Annotated[int, Query(ge=1, le=200)] = 50
    ) -> dict[str, Any]:
        jc.policy.subscription_filter(principal, PATTERNS)  # who may read the stream may list
        return {"workitems": await store.recent(limit)}

    return router
