"""Job handlers of ``python -m bench.output_cost``: token streams, as output and as events."""

from __future__ import annotations

import asyncio
from typing import Any

from jobcast.jobs import JobContext, Registry

registry = Registry()

#: About 20 bytes, like a model's token with its framing.
TOKEN = "tok-0123456789abcde "


@registry.handler("tokens_output")
async def tokens_output(ctx: JobContext, params: dict[str, Any]) -> None:
    """``n`` chunks at ``rate`` per second on the job's output stream."""
    out = ctx.stream("output")
    for _ in range(int(params["n"])):
        out.write(TOKEN)
        await asyncio.sleep(1 / float(params["rate"]))


@registry.handler("tokens_events")
async def tokens_events(ctx: JobContext, params: dict[str, Any]) -> None:
    """The same chunks as custom events on the job's topic (``ctx.publish``)."""
    for _ in range(int(params["n"])):
        ctx.publish("token", TOKEN)
        await asyncio.sleep(1 / float(params["rate"]))
