"""Job handlers that write output streams (``handlers=["tests.output_handlers"]``)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from jobcast.errors import PayloadTooLarge
from jobcast.jobs import JobContext, Registry, RetryPolicy

registry = Registry()


def chunk(index: int) -> str:
    """The ``index``-th chunk a writer job writes: varied lengths, newlines, non-ASCII."""
    return f"{index:05d} tök{'en' * (index % 7)}{chr(10) if index % 13 == 0 else ' '}"


@registry.handler("write_chunks")
def write_chunks(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
    """A sync handler writing ``n`` chunks, pausing ``pause`` seconds every ``every``."""
    out = ctx.stream("output", content_type="text/plain")
    count, every, pause = int(params["n"]), int(params.get("every", 0)), params.get("pause", 0)
    for index in range(count):
        out.write(chunk(index))
        if every and index % every == every - 1:
            time.sleep(float(pause))
    return {"chunks": count}


@registry.handler("write_messages")
async def write_messages(ctx: JobContext, params: dict[str, Any]) -> None:
    """An async handler writing JSON messages on one stream and text on another."""
    messages = ctx.stream("messages", content_type="application/json")
    log = ctx.stream("log")
    for index in range(int(params["n"])):
        messages.write({"step": index, "text": f"step {index}"})
        log.write(f"step {index}\n")
        await asyncio.sleep(0)
    log.close()
    messages.write([1, 2])  # one message: a list


@registry.handler("write_too_much")
def write_too_much(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
    """Writes past the size limit, and reports what the write raised."""
    out = ctx.stream("output")
    written = 0
    try:
        while True:
            out.write("x" * 100)
            written += 100
    except PayloadTooLarge as exc:
        return {"written": written, "error": str(exc)}


@registry.handler("write_then_hang")
async def write_then_hang(ctx: JobContext, params: dict[str, Any]) -> None:
    """Writes a line, then waits for a SIGKILL (not retry-safe: it ends ``Interrupted``)."""
    ctx.stream("output", content_type="text/plain").write("before the kill\n")
    ctx.progress(10, stage="written")
    await asyncio.sleep(3600)


@registry.handler("write_each_attempt", retry_safe=True)
async def write_each_attempt(ctx: JobContext, params: dict[str, Any]) -> int:
    """Writes a line per attempt; its first attempt then waits for a SIGKILL, the next ends."""
    ctx.stream("output", content_type="text/plain").write(f"attempt {ctx.attempt}\n")
    ctx.progress(10, stage=f"attempt {ctx.attempt}")
    if ctx.attempt == 1:
        await asyncio.sleep(3600)
    return ctx.attempt


@registry.handler("write_then_fail", retry=RetryPolicy(max_attempts=2, initial=60, max=60))
async def write_then_fail(ctx: JobContext, params: dict[str, Any]) -> None:
    """Writes a line and fails: its retry waits a minute (long enough to be cancelled)."""
    ctx.stream("output", content_type="text/plain").write(f"attempt {ctx.attempt}\n")
    raise ConnectionError("lost")
