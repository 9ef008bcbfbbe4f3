"""The worker tests' handlers, for a `jobcast worker` that exports its spans.

As an application would (tracing.O2), the handler module configures OpenTelemetry's SDK: each
finished span is written as one JSON line to the file named by ``TRACING_TEST_SPANS_FILE``.
"""

from __future__ import annotations

import os
from typing import IO

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

from tests.worker_handlers import registry

__all__ = ["registry"]


def _one_line(span: ReadableSpan) -> str:
    return span.to_json(indent=None) + "\n"


_spans: IO[str] = open(os.environ["TRACING_TEST_SPANS_FILE"], "a")  # noqa: SIM115  # the process's
_provider = TracerProvider()
_provider.add_span_processor(
    SimpleSpanProcessor(ConsoleSpanExporter(out=_spans, formatter=_one_line))
)
trace.set_tracer_provider(_provider)
