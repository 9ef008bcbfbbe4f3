"""Job handlers for the tests, loaded like a user's module (``handlers=["tests.handlers"]``)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from pydantic import BaseModel

from jobcast.errors import InvalidInput
from jobcast.jobs import JobContext, Registry, Retry, RetryPolicy

registry = Registry()


@registry.handler("spin")
def spin(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
    """A sync handler that reports progress as fast as it can."""
    count = int(params.get("n", 100_000))
    for index in range(1, count + 1):
        ctx.progress(100 * index / count, stage="spinning")
    return {"n": count}


@registry.handler("wait_cancel")
async def wait_cancel(ctx: JobContext, params: dict[str, Any]) -> None:
    """Runs until cancelled (or its 30 s run out): for cancellation and restart tests."""
    ctx.progress(10, stage="waiting")
    await asyncio.sleep(30)


@registry.handler("sync_wait")
def sync_wait(ctx: JobContext, params: dict[str, Any]) -> None:
    """A sync handler that stops cooperatively once cancelled."""
    ctx.progress(10, stage="waiting")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ctx.check_cancelled()
        time.sleep(0.005)  # simulated work between checks


@registry.handler("slow", timeout=0.3)
async def slow(ctx: JobContext, params: dict[str, Any]) -> None:
    await asyncio.sleep(10)


@registry.handler("chatty")
async def chatty(ctx: JobContext, params: dict[str, Any]) -> str:
    for index in range(3):
        ctx.publish("note", {"index": index})
        ctx.progress(30 * (index + 1))
    return "done"


@registry.handler("bad_result")
async def bad_result(ctx: JobContext, params: dict[str, Any]) -> object:
    return object()


@registry.handler("stubborn")
def stubborn(ctx: JobContext, params: dict[str, Any]) -> None:
    """A sync handler that never checks for cancellation: only its own end stops it."""
    ctx.progress(10, stage="ignoring everyone")
    time.sleep(60)  # the handler's own (uninterruptible) work


@registry.handler(
    "flaky",
    retry=RetryPolicy(max_attempts=3, initial=0.05, max=0.1, retry_on=(ConnectionError,)),
)
async def flaky(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
    """Fails with a retryable error until attempt ``succeed_on``; ``after`` asks for a delay."""
    ctx.progress(50, stage=f"attempt {ctx.attempt}")
    if ctx.attempt < int(params.get("succeed_on", 2)):
        after = params.get("after")
        if after is not None:
            raise Retry(f"attempt {ctx.attempt} asks for a later one", after=float(after))
        raise ConnectionError(f"attempt {ctx.attempt} lost its connection")
    return {"attempt": ctx.attempt}


@registry.handler("metadata")
def metadata(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
    """Updates its metadata in a tight loop (coalesced), then tries to pass the size cap."""
    count = int(params.get("n", 1000))
    for index in range(1, count + 1):
        ctx.metadata.increment("pages")
        ctx.metadata.set("current", f"page-{index}")
        if index % 100 == 0:
            ctx.metadata.append("done", index)
    ctx.metadata.merge({"language": "fr", "cost": 0.25})
    ctx.metadata.remove("current")
    refused = ""
    try:
        ctx.metadata.merge({"language": "de", "huge": "x" * 70_000})
    except InvalidInput as exc:
        refused = str(exc)
    return {"refused": refused}


class Approval(BaseModel):
    approved: bool
    note: str = ""


@registry.handler("approval", retry_safe=True)
async def approval(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
    """Waits for a person's approval (and, with ``second``, a speaker): input tests."""
    ctx.progress(10, stage="drafted")
    extra = {"default": None} if params.get("default") else {}
    answer = await ctx.wait_for_input(
        "approve",
        schema=Approval,
        prompt="Publish the summary?",
        timeout=float(params.get("timeout", 30)),
        **extra,
    )
    if answer is None:
        return {"approved": None}
    result: dict[str, Any] = {"approved": answer.approved, "note": answer.note}
    if params.get("second"):
        schema = {"type": "string", "enum": ["anna", "ben"]}
        result["speaker"] = await ctx.wait_for_input("speaker", schema=schema, timeout=30)
    return result


@registry.handler("fan_out")
async def fan_out(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
    """Spawns ``children`` (``{"kind", "params"}`` each), reports its own part done, then
    holds ``hold`` seconds (until cancelled) and fails when ``fail`` is set."""
    for item in params["children"]:
        await ctx.spawn(item["kind"], item.get("params"), tags=["child"])
    ctx.progress(100, stage="spawned")
    if params.get("hold"):
        await asyncio.sleep(float(params["hold"]))
    if params.get("fail"):
        raise RuntimeError("the parent's own step failed")
    return {"spawned": len(params["children"])}


@registry.handler("tolerant_fan_out", retry_safe=True)
async def tolerant_fan_out(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
    """Spawns ``children`` and lets them fail (``ctx.allow_child_failures``; only on its first
    run when ``allow_once``), keeps metadata keys of its own that the counts also name, then
    holds ``hold`` seconds on its first run."""
    ctx.metadata.merge({"succeeded": "mine", "total": 99})
    try:
        ctx.metadata.set("children", "mine")
    except InvalidInput as exc:
        ctx.metadata.set("refused", exc.message)
    if ctx.attempt == 1 or not params.get("allow_once"):
        ctx.allow_child_failures()
    for item in params["children"]:
        await ctx.spawn(item["kind"], item.get("params"), tags=["child"])
    if params.get("hold") and ctx.attempt == 1:
        await asyncio.sleep(float(params["hold"]))
    return {"spawned": len(params["children"]), "attempt": ctx.attempt}


@registry.handler("fan_out_flaky", retry=RetryPolicy(max_attempts=2, initial=0.05, max=0.1))
async def fan_out_flaky(ctx: JobContext, params: dict[str, Any]) -> list[str]:
    """Spawns two children, then fails its first attempt: the second gets them back."""
    ids = [(await ctx.spawn("demo", {"steps": 1, "delay": 0})).id for _ in range(2)]
    if ctx.attempt == 1:
        raise ConnectionError("lost after spawning")
    return ids


@registry.handler("steady")
async def steady(ctx: JobContext, params: dict[str, Any]) -> None:
    """Reports progress ``steps`` times, ``delay`` seconds apart."""
    steps = int(params.get("steps", 20))
    for index in range(1, steps + 1):
        ctx.progress(100 * index / steps)
        await asyncio.sleep(float(params.get("delay", 0.02)))


@registry.handler("sync_approval")
def sync_approval(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
    """A sync handler that waits for input (input_wait.N6): its thread blocks on the answer."""
    ctx.progress(10, stage="drafted")
    answer = ctx.wait_for_input("approve", schema=Approval, timeout=30)
    speaker = ctx.wait_for_input("speaker", schema={"type": "string"}, timeout=0.2, default="-")
    return {"approved": answer.approved, "speaker": speaker}


@registry.handler("sync_fan_out")
def sync_fan_out(ctx: JobContext, params: dict[str, Any]) -> list[str]:
    """A sync handler that spawns children: each call blocks until the child is queued."""
    return [ctx.spawn("demo", {"steps": 1, "delay": 0}).id for _ in range(int(params["count"]))]


@registry.handler("sync_park", retry_safe=True)
def sync_park(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
    """A re-runnable sync handler that waits for input: it parks (input_wait.N7), so its
    thread and slot are free until the answer or the timeout runs it again."""
    ctx.progress(10, stage="asked")
    if params.get("stream"):
        ctx.stream("output").write("asked\n")
    extra = {"default": params["default"]} if "default" in params else {}
    timeout = float(params.get("timeout", 30))
    answer = ctx.wait_for_input("approve", schema={"type": "boolean"}, timeout=timeout, **extra)
    return {"approved": answer, "attempt": ctx.attempt}
