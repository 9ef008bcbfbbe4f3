"""A job stream's frames: jobcast's own or an application's rendering, as SSE or WebSocket.

An application may render a job's stream in its own format (job_plan.J4): each step is handed
over as a :class:`JobUpdate` carrying the whole job as it is after that event (a ``progress``
event only carries what changed, so :class:`JobView` merges it into the last snapshot, as the
JavaScript client's ``watchJob`` does). :class:`JobFrames` is that logic once; its two
encodings differ only in the bytes they make.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import orjson

from jobcast.events import Event
from jobcast.jobs.metadata import fold_metadata
from jobcast.jobs.model import job_topic
from jobcast.server.streams.job_plan import TERMINAL_TYPES, WHOLE_JOB_TYPES, JobStreamPlan
from jobcast.wire import ServerSentEvent


@dataclass(frozen=True, slots=True)
class JobUpdate:
    """One step of a job's stream, as handed to an application's renderer."""

    #: ``snapshot``, ``progress``, ``state``, ``succeeded``, ``failed``, ``cancelled`` or a
    #: custom type published by the handler.
    type: str
    #: The whole job after this step (the shape of ``GET /api/jobs/{id}``, without ``links``).
    job: dict[str, Any]
    #: The event's own data.
    data: Any
    #: The id to resume after (``None`` for a snapshot of a job with no event yet).
    id: str | None

    @property
    def terminal(self) -> bool:
        return self.type in TERMINAL_TYPES


#: An SSE rendering: ``(event name, JSON data)``, or ``None`` to send nothing for this step.
SseRender = Callable[[JobUpdate], "tuple[str, Any] | None"]
#: A WebSocket rendering: the JSON value to send as a text message, or ``None`` for nothing.
WsRender = Callable[[JobUpdate], Any]


class JobView:
    """Follows a job's events and knows the whole job after each one (J4)."""

    def __init__(self, job: dict[str, Any]) -> None:
        self.job = job

    def apply(self, event_type: str, data: Any, event_id: str | None) -> JobUpdate:
        if event_type in WHOLE_JOB_TYPES and isinstance(data, dict):
            self.job = data
        elif event_type == "progress" and isinstance(data, dict):
            self.job = {**self.job, **data}
        elif event_type == "metadata" and isinstance(data, dict):
            self.job = fold_metadata(self.job, data)
        return JobUpdate(event_type, self.job, data, event_id)


Frame = TypeVar("Frame", bytes, str)


class JobFrames(Generic[Frame]):
    """The frames of a job's stream, jobcast's own or an application's rendering (J4), in one
    encoding: :class:`SseJobFrames` (bytes) or :class:`WsJobFrames` (text messages).

    ``None`` is a step the rendering skips."""

    def __init__(self, plan: JobStreamPlan, render: Callable[[JobUpdate], Any] | None) -> None:
        self.plan = plan
        self.render = render
        self.view = JobView(plan.job.to_dict())

    def snapshot(self) -> Frame | None:
        return self._whole("snapshot")

    def terminal(self) -> Frame | None:
        return self._whole(self.plan.job.state.value)

    def event(self, event: Event) -> Frame | None:
        if self.render is None:
            return self.own_event(event)
        return self._rendered(event.type, event.data, event.id)

    def _whole(self, event_type: str) -> Frame | None:
        """The snapshot, or the terminal event rebuilt from it (J3): the whole job."""
        plan = self.plan
        if self.render is None:
            return self.encode(event_type, plan.snapshot_json(), plan.snapshot_id)
        return self._rendered(event_type, plan.job.to_dict(), plan.snapshot_id)

    def _rendered(self, event_type: str, data: Any, event_id: str | None) -> Frame | None:
        render = self.render
        if render is None:
            raise RuntimeError("_rendered without a renderer")
        return self.encode_rendered(render(self.view.apply(event_type, data, event_id)), event_id)

    # -- the encoding -----------------------------------------------------------------------

    def own_event(self, event: Event) -> Frame:
        raise NotImplementedError

    def encode(self, event_type: str, data_json: str, event_id: str | None) -> Frame:
        raise NotImplementedError

    def encode_rendered(self, rendered: Any, event_id: str | None) -> Frame | None:
        raise NotImplementedError


class SseJobFrames(JobFrames[bytes]):
    """SSE frames: an event's shared frame, or ``event: <name>`` with the rendered data."""

    def own_event(self, event: Event) -> bytes:
        return event.sse_frame

    def encode(self, event_type: str, data_json: str, event_id: str | None) -> bytes:
        return ServerSentEvent(data=data_json, event=event_type, id=event_id).encode()

    def encode_rendered(self, rendered: Any, event_id: str | None) -> bytes | None:
        if rendered is None:
            return None
        name, value = rendered
        return ServerSentEvent(data=orjson.dumps(value).decode(), event=name, id=event_id).encode()

    def event_bytes(self, event: Event) -> bytes:
        """``event``'s frame, ``b""`` when the rendering skips it (``EventStreamResponse``'s
        ``event_frame``)."""
        return self.event(event) or b""


class WsJobFrames(JobFrames[str]):
    """WebSocket text messages: ``Event.ws_message``'s shape, or the rendered JSON value."""

    def own_event(self, event: Event) -> str:
        return event.ws_message.decode()

    def encode(self, event_type: str, data_json: str, event_id: str | None) -> str:
        job = self.plan.job
        message = {
            "id": event_id,
            "topic": job_topic(job.id),
            "type": event_type,
            "data": job.to_dict(),
        }
        return orjson.dumps(message).decode()

    def encode_rendered(self, rendered: Any, event_id: str | None) -> str | None:
        return None if rendered is None else orjson.dumps(rendered).decode()
