"""The built-in kinds, always available: ``demo`` (to try things out) and ``ingest`` (uploads)."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from jobcast.jobs.context import JobContext
from jobcast.jobs.registry import Registry

registry = Registry()

CHUNK_BYTES = 1024 * 1024


class DemoFailure(Exception):
    """The failure ``demo`` raises at its ``fail_at`` step."""


class DemoParams(BaseModel):
    # Strict: a JSON submission's types are taken as sent (``true`` is not a step count).
    model_config = ConfigDict(extra="forbid", strict=True)

    steps: int = Field(10, ge=1, le=10_000, description="How many steps to run.")
    delay: float = Field(0.5, ge=0, le=60, description="Seconds each step takes.")
    fail_at: int | None = Field(None, ge=1, description="Fail at this step, to try failures.")


@registry.handler("demo", params_model=DemoParams, retry_safe=True)
async def demo(ctx: JobContext, params: DemoParams) -> dict[str, Any]:
    """Count through ``steps`` steps of ``delay`` seconds each, reporting progress and stages."""
    for step in range(1, params.steps + 1):
        stage = f"step {step}/{params.steps}"
        if params.delay:
            await asyncio.sleep(params.delay)
        else:
            await asyncio.sleep(0)  # still a cancellation point
        if params.fail_at == step:
            raise DemoFailure(f"demo failure at step {step}, as requested by fail_at")
        ctx.progress(100 * step / params.steps, message=f"finished {stage}", stage=stage)
    return {"steps": params.steps}


class IngestParams(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


@registry.handler("ingest", params_model=IngestParams, retry_safe=True, needs_input=True)
def ingest(ctx: JobContext, params: IngestParams) -> dict[str, Any]:
    """Hash and inspect the uploaded file in chunks (runs in a worker thread)."""
    if ctx.input_path is None or ctx.input is None:
        raise ValueError("ingest needs an uploaded file")
    total = max(1, ctx.input.size)
    digest = hashlib.sha256()
    size = lines = 0
    binary = False
    with ctx.input_path.open("rb") as file:
        while chunk := file.read(CHUNK_BYTES):
            ctx.check_cancelled()
            digest.update(chunk)
            size += len(chunk)
            lines += chunk.count(b"\n")
            binary = binary or b"\0" in chunk
            ctx.progress(min(99.0, 100 * size / total), stage="hashing")
    sha256 = digest.hexdigest()
    if sha256 != ctx.input.sha256:
        raise ValueError("the stored upload does not match the hash taken while receiving it")
    return {
        "sha256": sha256,
        "size": size,
        "lines": lines,
        "text": not binary,
        "content_type": ctx.input.content_type,
    }
