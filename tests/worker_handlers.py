"""Job handlers for the worker tests (``--handlers tests.worker_handlers``)."""

from __future__ import annotations

import asyncio
import functools
import time
from pathlib import Path
from typing import Any

import redis

from jobcast.jobs import JobContext, Registry, RetryPolicy

registry = Registry()


@registry.handler("hang")
async def hang(ctx: JobContext, params: dict[str, Any]) -> None:
    """Reports progress, then waits until cancelled or killed."""
    ctx.progress(10, stage="hanging")
    await asyncio.sleep(60)


@registry.handler("resumable", retry_safe=True)
def resumable(ctx: JobContext, params: dict[str, Any]) -> str:
    """Hangs on its first attempt (leaving a marker file), succeeds on the next."""
    marker = Path(params["marker"])
    ctx.metadata.append("attempts_seen", ctx.attempt)
    if not marker.exists():
        marker.touch()
        ctx.metadata.set("first", "done")
        ctx.progress(10, stage="first attempt")
        for _ in range(600):  # until the worker is killed (or the job cancelled)
            ctx.check_cancelled()
            time.sleep(0.1)
    return "resumed"


@registry.handler("quick_timeout", timeout=0.5)
async def quick_timeout(ctx: JobContext, params: dict[str, Any]) -> None:
    await asyncio.sleep(60)


@registry.handler("flaky", retry=RetryPolicy(max_attempts=3, initial=0.05, max=0.1))
async def flaky(ctx: JobContext, params: dict[str, Any]) -> int:
    """Fails until attempt ``succeed_on``: retried through SAQ (worker.K6)."""
    ctx.progress(50, stage=f"attempt {ctx.attempt}")
    if ctx.attempt < int(params.get("succeed_on", 2)):
        raise ConnectionError(f"attempt {ctx.attempt} lost its connection")
    return ctx.attempt


@registry.handler("limited", concurrency=2)
def limited(ctx: JobContext, params: dict[str, Any]) -> int:
    """Leaves a marker while it runs and returns how many markers it saw (itself included):
    with the kind's limit of 2, never more than 2, whatever the number of workers (K7)."""
    folder = Path(params["dir"])
    marker = folder / ctx.job_id
    marker.touch()
    try:
        seen = len(list(folder.iterdir()))
        time.sleep(0.3)  # the work: long enough for the others to overlap it
        return seen
    finally:
        marker.unlink()


@registry.handler("hang_once", retry=RetryPolicy(max_attempts=3, initial=0.05, max=0.1))
async def hang_once(ctx: JobContext, params: dict[str, Any]) -> int:
    """Hangs on its first attempt (for a SIGKILL), succeeds on the next."""
    ctx.progress(10, stage=f"attempt {ctx.attempt}")
    if ctx.attempt == 1:
        await asyncio.sleep(60)
    return ctx.attempt


@functools.cache
def _redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


def counted(ctx: JobContext, params: dict[str, Any]) -> dict[str, int]:
    """Takes a number in the order jobs start (one counter in Redis for every worker) and
    counts the jobs of its kind and of its owner running with it."""
    client, key = _redis(params["redis"]), params["key"]
    order = int(client.incr(f"{key}:order"))
    kind = int(client.incr(f"{key}:kind:{ctx.kind}"))
    owner = int(client.incr(f"{key}:owner:{ctx.owner}"))
    try:
        time.sleep(params.get("work", 0.002))  # the work: long enough for the others to overlap
        return {"order": order, "kind": kind, "owner": owner}
    finally:
        client.decr(f"{key}:kind:{ctx.kind}")
        client.decr(f"{key}:owner:{ctx.owner}")


registry.handler("counted")(counted)
registry.handler("counted_limited", concurrency=2)(counted)


@registry.handler("ask")
async def ask(ctx: JobContext, params: dict[str, Any]) -> Any:
    """Waits for an answer given through the server (input_wait.N1: read from the store)."""
    ctx.metadata.set("asked", True)
    return await ctx.wait_for_input("answer", schema={"type": "integer"}, timeout=30)


@registry.handler("quick")
async def quick(ctx: JobContext, params: dict[str, Any]) -> int:
    """Ends at once: many of them end on several workers at the same time (batches)."""
    return int(params.get("n", 0))


@registry.handler("ask_twice", retry_safe=True)
async def ask_twice(ctx: JobContext, params: dict[str, Any]) -> list[Any]:
    """Waits for two answers; re-run after its worker died, the first is replayed (N3)."""
    first = await ctx.wait_for_input("first", timeout=60)
    second = await ctx.wait_for_input("second", timeout=60)
    return [first, second, ctx.attempt]


@registry.handler("fan_out")
async def fan_out(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
    """Spawns ``count`` children (demo, or ``kind``) on whatever workers take them, then
    returns, or holds ``hold`` seconds (until cancelled)."""
    kind = params.get("kind", "demo")
    child = {"steps": 3, "delay": 0.05} if kind == "demo" else {}
    if params.get("allow_failures"):  # the children in ``failing`` fail without failing it
        ctx.allow_child_failures()
    for index in range(int(params["count"])):
        fail = {"fail_at": 2} if index in params.get("failing", ()) else {}
        await ctx.spawn(kind, {**child, **fail}, metadata={"index": index})
    if params.get("hold"):
        await asyncio.sleep(float(params["hold"]))
    return {"spawned": int(params["count"])}


@registry.handler("replaying_parent", retry=RetryPolicy(max_attempts=2, initial=0.05, max=0.1))
async def replaying_parent(ctx: JobContext, params: dict[str, Any]) -> str:
    """Fails its first attempt; the second spawns one child, the one already stored (S2)."""
    if ctx.attempt == 1:
        raise ConnectionError("lost before spawning")
    return str((await ctx.spawn("demo", {"steps": 1, "delay": 0})).id)


@registry.handler(
    "tolerant_replaying_parent", retry=RetryPolicy(max_attempts=2, initial=0.05, max=0.1)
)
async def tolerant_replaying_parent(ctx: JobContext, params: dict[str, Any]) -> str:
    """Lets its children fail on its first attempt only, spawns a failing child and fails
    that attempt; the second gets the child back (S2) and returns its id."""
    if ctx.attempt == 1:
        ctx.allow_child_failures()
    child = await ctx.spawn("demo", {"steps": 1, "delay": 0, "fail_at": 1})
    if ctx.attempt == 1:
        raise ConnectionError("lost after spawning")
    return str(child.id)


@registry.handler("ask_park", retry_safe=True)
async def ask_park(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
    """A re-runnable handler that waits for input on a worker: it parks (worker.K8); with
    ``stream``, it writes a line to its output stream first."""
    ctx.progress(10, stage="asked")
    if params.get("stream"):
        ctx.stream("output").write("asked\n")
    await asyncio.sleep(float(params.get("pause", 0)))  # a moment before it asks
    extra = {"default": params["default"]} if "default" in params else {}
    timeout = float(params.get("timeout", 60))
    answer = await ctx.wait_for_input(
        "answer", schema={"type": "integer"}, timeout=timeout, **extra
    )
    return {"answer": answer, "attempt": ctx.attempt}
