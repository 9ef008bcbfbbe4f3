"""OpenTelemetry spans, with the "otel" extra and ``JOBCAST_OTEL=true``; off by default.

What is traced (span names are stable; attributes are ``jobcast.*`` and ``messaging.*``):

- ``jobcast publish``: one publish (``Hub.publish_many``), from the call through the broker's
  commit to its delivery in this process, with an event ``delivered`` at the moment its batch
  was fanned out (how many events the batch held, how many subscriber deliveries it made).
- ``jobcast job submit``: a job's submission, from its creation until it is stored, a child of
  whatever span is current (the request's, say).
- ``jobcast job attempt``: each run of a job, a child of its submit span wherever it runs; the
  attempt's end state, and the job's publishes and the handler's own spans, inside it.
- ``jobcast stream open``: a stream or socket subscription being opened (and its replay).

Decisions (cited as O1..O5):

O1. Free when off. The hub, the job engine and the worker are built with a :class:`Tracing`
    or ``None`` (``HubOptions.tracing``, ``RunnerOptions.tracing``, from the settings), and
    test it once per publish, per job run, per stream open; the fan-out loop has no hook at
    all: a traced hub hands the broker a wrapper of its deliver (:meth:`Tracing.delivering`).
    This module, and OpenTelemetry, are imported only when tracing is on.
O2. jobcast only creates spans, through the API's global tracer provider: the application
    configures the SDK and its exporters (or runs under ``opentelemetry-instrument``).
    Without an SDK the spans are the API's no-ops.
O3. A job's trace context is taken at submit and carried with the job as W3C headers
    (``traceparent``, through the global propagator): in memory for the embedded runner
    (``LiveJob.trace``), in the SAQ job's arguments for ``jobcast worker`` processes, so the
    attempt spans of a job are children of its submit span in whichever process runs them,
    retries included. A job recovered after a restart starts a trace of its own.
O4. A publish learns of its delivery without work per event: the traced deliver notes each
    batch's position range, time and delivery count (a bounded ring), and the publish, once
    the broker returns (after the commit and the local delivery), finds its batch there.
    Deliveries on other instances (a shared broker) are not part of its span.
O5. An HTTP publish or submission continues its caller's trace: the span of the request when
    one is current (the framework's or the host's instrumentation), else the ``traceparent``
    the request carries (the fast entrance answers publishes in front of the framework).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Protocol

from opentelemetry import context, propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from jobcast._version import __version__
from jobcast.jobs.model import JobState

if TYPE_CHECKING:
    from jobcast.brokers.base import Replay
    from jobcast.events import Event, EventDraft
    from jobcast.jobs.model import Job
    from jobcast.topics import TopicPattern

#: Batches remembered for the publishes waiting on them (O4); a publish returns right after
#: its batch is delivered, so only the last few are ever looked up.
RECENT_BATCHES = 64
#: Subscription patterns named in a stream-open span, at most.
MAX_PATTERNS = 10

Carrier = dict[str, str]


class Counters(Protocol):
    """The hub's stats, as far as a traced deliver reads them (not imported: the hub
    imports this module)."""

    delivered: int


class Tracing:
    """jobcast's spans. One per hub or job engine; cheap to create."""

    def __init__(self) -> None:
        self.tracer = trace.get_tracer("jobcast", __version__)
        #: (epoch, first position, last position, time in ns, events, deliveries) (O4)
        self._batches: collections.deque[tuple[str, int, int, int, int, int]] = collections.deque(
            maxlen=RECENT_BATCHES
        )

    # -- requests --------------------------------------------------------------------------

    @contextmanager
    def incoming(self, headers: Mapping[str, str]) -> Iterator[None]:
        """Continue the trace of the request with these headers (O5)."""
        token = self.enter_request(headers)
        try:
            yield
        finally:
            self.leave_request(token)

    def enter_request(self, headers: Mapping[str, str]) -> object | None:
        """Make the caller's trace (``traceparent`` in ``headers``) current, unless a request
        span already is (it continues that trace); the token for :meth:`leave_request`."""
        if trace.get_current_span().get_span_context().is_valid:
            return None
        return context.attach(propagate.extract(headers))

    def leave_request(self, token: object | None) -> None:
        if token is not None:
            context.detach(token)  # type: ignore[arg-type]  # what attach returned

    # -- events ----------------------------------------------------------------------------

    async def publish(
        self,
        drafts: Sequence[EventDraft],
        publish: Callable[[Sequence[EventDraft]], Awaitable[list[Event]]],
    ) -> list[Event]:
        """Run ``publish(drafts)`` (the broker's) inside a ``jobcast publish`` span."""
        topics = {draft.topic for draft in drafts}
        with self.tracer.start_as_current_span("jobcast publish", kind=SpanKind.PRODUCER) as span:
            span.set_attribute("messaging.system", "jobcast")
            span.set_attribute("messaging.operation.type", "send")
            span.set_attribute("messaging.batch.message_count", len(drafts))
            if len(topics) == 1:
                span.set_attribute("messaging.destination.name", drafts[0].topic)
            events = await publish(drafts)
            if events:
                span.set_attribute("jobcast.event_id", events[0].id)
                self._note_delivery(span, events[0])
            return events

    def delivering(
        self, deliver: Callable[[list[Event]], None], stats: Counters
    ) -> Callable[[list[Event]], None]:
        """The hub's deliver, noting each batch for the publishes that wait on it (O4)."""
        batches = self._batches

        def traced_deliver(events: list[Event]) -> None:
            before = stats.delivered
            deliver(events)
            if events:
                first, last = events[0], events[-1]
                batches.append(
                    (
                        first.epoch,
                        first.position,
                        last.position,
                        time.time_ns(),
                        len(events),
                        stats.delivered - before,
                    )
                )

        return traced_deliver

    def _note_delivery(self, span: Span, event: Event) -> None:
        for epoch, first, last, at, count, deliveries in reversed(self._batches):
            if epoch == event.epoch and first <= event.position <= last:
                attributes = {"jobcast.batch.events": count, "jobcast.deliveries": deliveries}
                span.add_event("delivered", attributes, timestamp=at)
                return

    # -- streams ---------------------------------------------------------------------------

    @contextmanager
    def stream_open(
        self, patterns: Sequence[TopicPattern], transport: str, last_event_id: str | None
    ) -> Iterator[Callable[[Replay | None], None]]:
        """A ``jobcast stream open`` span; call what it yields with the replay, if any."""
        with self.tracer.start_as_current_span("jobcast stream open") as span:
            span.set_attribute("jobcast.transport", transport)
            span.set_attribute("jobcast.patterns", [p.text for p in patterns[:MAX_PATTERNS]])
            span.set_attribute("jobcast.resume", last_event_id is not None)

            def replayed(replay: Replay | None) -> None:
                if replay is not None:
                    span.set_attribute("jobcast.replayed", len(replay.events))
                    if replay.gap is not None:
                        span.set_attribute("jobcast.reset", str(replay.gap))

            yield replayed

    # -- jobs ------------------------------------------------------------------------------

    def submitted(self, job: Job) -> Carrier:
        """Record a job's submission (from its creation until now) and return the trace
        context its attempts continue (O3)."""
        start = int(job.created_at * 1e9)
        span = self.tracer.start_span(
            "jobcast job submit", kind=SpanKind.PRODUCER, start_time=start
        )
        _job_attributes(span, job)
        carrier: Carrier = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span))
        span.end()
        return carrier

    @contextmanager
    def attempt(self, job: Job, trace_context: Carrier | None) -> Iterator[None]:
        """A ``jobcast job attempt`` span around one run of ``job`` (the live instance, read
        again at the end), a child of its submit span when its trace context came with it (O3)."""
        parent = propagate.extract(trace_context) if trace_context else None
        with self.tracer.start_as_current_span(
            "jobcast job attempt", context=parent, kind=SpanKind.CONSUMER
        ) as span:
            _job_attributes(span, job)
            try:
                yield
            finally:
                span.set_attribute("jobcast.job.attempt", job.attempts)
                span.set_attribute("jobcast.job.state", job.state.value)
                error = job.error if job.state is JobState.FAILED else None
                if job.state is JobState.QUEUED and job.next_attempt_at is not None:
                    error = job.last_error  # this attempt failed; the next one is scheduled
                if error is not None:
                    span.set_status(Status(StatusCode.ERROR, error.get("type", "failed")))


def _job_attributes(span: Span, job: Job) -> None:
    span.set_attribute("jobcast.job.id", job.id)
    span.set_attribute("jobcast.job.kind", job.kind)
