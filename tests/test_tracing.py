"""OpenTelemetry spans (``tracing.py``) against real servers and a real worker process: a
publish through commit to delivery, a job's submission and each attempt (in the server, and
in a `jobcast worker` the trace context crosses into), stream opens; nothing when off.

The spans of in-process servers are collected with the SDK's in-memory exporter on the global
tracer provider (jobcast uses the global one, tracing.O2); the worker writes its spans to a
file (``tests/otel_worker.py``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from websockets.asyncio.client import connect

from tests.jobs_support import watch
from tests.scale_support import jobcast_env, processes
from tests.services import (
    POSTGRES_URL,
    REDIS_URL,
    delete_prefix,
    drop_schema,
    needs_services,
    redis_prefix,
    redis_url,
)
from tests.support import EventStream, LiveServer, eventually
from tests.ws_support import receive, send

#: The caller's trace: a W3C traceparent a client sends with its request.
CALLER_TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736
TRACEPARENT = f"00-{CALLER_TRACE:032x}-00f067aa0ba902b7-01"


@pytest.fixture(scope="module")
def exporter() -> Iterator[InMemorySpanExporter]:
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):  # set once per process; the API allows no more
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.shutdown()  # later spans (other test files) are not kept


@pytest.fixture
def spans(exporter: InMemorySpanExporter) -> InMemorySpanExporter:
    exporter.clear()
    return exporter


def named(spans: InMemorySpanExporter, name: str, **attributes: Any) -> list[ReadableSpan]:
    """Finished spans called ``name`` whose attributes include ``attributes``, oldest first."""
    found = [
        span
        for span in spans.get_finished_spans()
        if span.name == name
        and all((span.attributes or {}).get(k) == v for k, v in attributes.items())
    ]
    return sorted(found, key=lambda span: span.start_time or 0)


async def publish(
    client: httpx.AsyncClient, server: LiveServer, topic: str, n: int, **headers: str
) -> str:
    response = await client.post(
        f"{server.url}/api/events",
        json={"topic": topic, "type": "created", "data": {"n": n}},
        headers={**server.auth(role="service"), **headers},
    )
    assert response.status_code == 202, response.text
    event_id: str = response.json()["id"]
    return event_id


async def test_a_publish_is_traced_through_commit_to_its_delivery_and_stream_opens_too(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient, spans: InMemorySpanExporter
) -> None:
    server = make_server(otel=True)
    url = f"{server.url}/api/events"
    async with EventStream(
        client, url, params={"topic": "orders/*"}, headers=server.auth(role="service")
    ) as s:
        first = await publish(client, server, "orders/1", 1, traceparent=TRACEPARENT)
        second = await publish(client, server, "orders/1", 2)
        assert [event.id for event in await s.take(2)] == [first, second]

    traced = named(spans, "jobcast publish", **{"jobcast.event_id": first})
    assert len(traced) == 1, spans.get_finished_spans()
    span = traced[0]
    assert span.kind is SpanKind.PRODUCER
    assert span.attributes is not None
    assert span.attributes["messaging.destination.name"] == "orders/1"
    assert span.attributes["messaging.batch.message_count"] == 1
    # the caller's trace continues: through the framework's request span, or else jobcast's
    # own reading of its traceparent (tracing.O5)
    assert span.context is not None and span.context.trace_id == CALLER_TRACE
    (delivered,) = span.events  # tracing.O4: when its batch reached the one subscriber
    assert delivered.name == "delivered"
    assert delivered.attributes is not None and delivered.attributes["jobcast.deliveries"] == 1
    assert span.start_time is not None and span.end_time is not None
    assert span.start_time <= delivered.timestamp <= span.end_time
    # a publish without a caller's trace starts its own
    (other,) = named(spans, "jobcast publish", **{"jobcast.event_id": second})
    assert other.context is not None and other.context.trace_id != CALLER_TRACE

    resume = {**server.auth(role="service"), "Last-Event-ID": first}
    async with EventStream(client, url, params={"topic": "orders/*"}, headers=resume) as s:
        assert [event.id for event in await s.take(1)] == [second]
    socket = f"ws://{server.host}:{server.port}/ws/events?token={server.token(role='service')}"
    async with connect(socket) as ws:
        await send(ws, {"op": "subscribe", "topics": ["orders/2"]})
        assert (await receive(ws))["op"] == "subscribed"
    (on_socket,) = named(spans, "jobcast stream open", **{"jobcast.transport": "websocket"})
    assert (on_socket.attributes or {})["jobcast.patterns"] == ("orders/2",)
    opened = named(spans, "jobcast stream open", **{"jobcast.transport": "sse"})
    assert [dict(span.attributes or {}) for span in opened] == [
        {"jobcast.transport": "sse", "jobcast.patterns": ("orders/*",), "jobcast.resume": False},
        {
            "jobcast.transport": "sse",
            "jobcast.patterns": ("orders/*",),
            "jobcast.resume": True,
            "jobcast.replayed": 1,
        },
    ]


def check_attempts(
    attempts: list[dict[str, Any]], submit_span: int, *, states: list[str], failed: list[bool]
) -> None:
    assert [a["parent"] for a in attempts] == [submit_span] * len(states)
    assert [a["trace"] for a in attempts] == [CALLER_TRACE] * len(states)
    assert [a["attributes"]["jobcast.job.state"] for a in attempts] == states
    assert [a["attributes"]["jobcast.job.attempt"] for a in attempts] == [1, 2]
    assert [a["error"] for a in attempts] == failed


def attempt_of(span: ReadableSpan) -> dict[str, Any]:
    assert span.context is not None and span.parent is not None
    return {
        "trace": span.context.trace_id,
        "parent": span.parent.span_id,
        "attributes": dict(span.attributes or {}),
        "error": span.status.status_code is StatusCode.ERROR,
    }


async def submit_traced(
    client: httpx.AsyncClient, server: LiveServer, spans: InMemorySpanExporter
) -> tuple[str, ReadableSpan]:
    """Submit a job that fails once, then succeeds, with the caller's trace context."""
    response = await client.post(
        f"{server.url}/api/jobs",
        json={"kind": "flaky", "params": {"succeed_on": 2}},
        headers={**server.auth(), "traceparent": TRACEPARENT},
    )
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    (submitted,) = named(spans, "jobcast job submit", **{"jobcast.job.id": job_id})
    assert submitted.context is not None and submitted.context.trace_id == CALLER_TRACE
    assert (submitted.attributes or {})["jobcast.job.kind"] == "flaky"
    assert [t for t, _ in await watch(client, server, job_id, timeout=20)][-1] == "succeeded"
    return job_id, submitted


async def test_a_job_s_attempts_are_children_of_its_submission(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient, spans: InMemorySpanExporter
) -> None:
    server = make_server(otel=True, handlers="tests.worker_handlers")
    job_id, submitted = await submit_traced(client, server, spans)
    assert submitted.context is not None
    attempts = await eventually(
        lambda: len(found := named(spans, "jobcast job attempt")) == 2 and found
    )
    check_attempts(
        [attempt_of(span) for span in attempts],
        submitted.context.span_id,
        states=["queued", "succeeded"],  # the first failed and was retried
        failed=[True, False],
    )
    # the job's events are published inside its attempts
    attempt_ids = {span.context.span_id for span in attempts if span.context is not None}
    inside = [
        span
        for span in named(
            spans, "jobcast publish", **{"messaging.destination.name": f"jobs/{job_id}"}
        )
        if span.parent is not None and span.parent.span_id in attempt_ids
    ]
    assert len(inside) >= 2  # at least "running" and "succeeded"


async def test_off_by_default_nothing_is_traced(
    server: LiveServer, client: httpx.AsyncClient, spans: InMemorySpanExporter
) -> None:
    assert server.jc.hub.tracing is None and server.jc.runner.lifecycle.tracing is None
    url = f"{server.url}/api/events"
    async with EventStream(
        client, url, params={"topic": "quiet"}, headers=server.auth(role="service")
    ) as s:
        event_id = await publish(client, server, "quiet", 1, traceparent=TRACEPARENT)
        assert [event.id for event in await s.take(1)] == [event_id]
    response = await client.post(
        f"{server.url}/api/jobs",
        json={"kind": "demo", "params": {"steps": 1}},
        headers=server.auth(),
    )
    assert [t for t, _ in await watch(client, server, response.json()["id"])][-1] == "succeeded"
    assert [s.name for s in spans.get_finished_spans() if s.name.startswith("jobcast")] == []


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Settings a server and a worker share (Redis broker and queue, a PostgreSQL store)."""
    for prefix in redis_prefix():
        store_url = f"{POSTGRES_URL}?schema=o_{prefix[-12:]}"
        yield {
            "broker_url": redis_url(prefix),
            "queue_url": f"{REDIS_URL}?queue={prefix}",
            "store_url": store_url,
            "worker_heartbeat_seconds": 1,
            "otel": True,
        }
        drop_schema(store_url)
        delete_prefix(f"saq:{prefix}")


@needs_services
async def test_a_job_s_trace_continues_in_the_worker_process_that_runs_it(
    make_server: Callable[..., LiveServer],
    client: httpx.AsyncClient,
    spans: InMemorySpanExporter,
    deployment: dict[str, Any],
    tmp_path: Path,
) -> None:
    spans_file = tmp_path / "worker-spans.jsonl"
    spans_file.touch()
    with processes(tmp_path) as procs:
        env = jobcast_env(**deployment, handlers="tests.otel_worker")
        env["TRACING_TEST_SPANS_FILE"] = str(spans_file)
        args = [sys.executable, "-m", "jobcast", "worker", "--log-level", "info"]
        procs.spawn(args, env, "worker")
        server = make_server(**deployment, handlers="tests.worker_handlers")
        job_id, submitted = await submit_traced(client, server, spans)

        def attempts() -> list[dict[str, Any]]:
            lines = spans_file.read_text().splitlines()
            found = [s for s in map(json.loads, lines) if s["name"] == "jobcast job attempt"]
            return found if len(found) == 2 else []

        in_worker = await eventually(attempts, timeout=10)
    assert submitted.context is not None
    check_attempts(
        [
            {
                "trace": int(span["context"]["trace_id"], 16),
                "parent": int(span["parent_id"], 16),
                "attributes": span["attributes"],
                "error": span["status"]["status_code"] == "ERROR",
            }
            for span in sorted(in_worker, key=lambda span: span["start_time"])
        ],
        submitted.context.span_id,
        states=["queued", "succeeded"],  # retried through SAQ (worker.K6), in the same trace
        failed=[True, False],
    )
    assert all(span["attributes"]["jobcast.job.id"] == job_id for span in in_worker)
