"""Ingesting a document is a jobcast job: validate, hash (when there is a file), parse, index.

Parsing and indexing are simulated (``INGEST_STEP_DELAY`` seconds each); the SHA-256 is real:
taken while the upload streamed to disk, and checked again here before the file is used.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from jobcast.jobs import JobContext, Registry

KIND = "ingest.document"
CHUNK_BYTES = 1024 * 1024


class IngestParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metadata: dict[str, Any] = Field(default_factory=dict)


class CorruptUpload(Exception):
    """The stored file no longer matches the hash taken while it was received."""


def registry(step_delay: float) -> Registry:
    handlers = Registry()

    @handlers.handler(KIND, params_model=IngestParams, retry_safe=True)
    def ingest(ctx: JobContext, params: IngestParams) -> dict[str, Any]:
        # A plain function: jobcast runs it in a worker thread, so blocking I/O is fine.
        ctx.progress(5, "Validating metadata", "validating")
        time.sleep(step_delay)
        result: dict[str, Any] = {"metadata_keys": sorted(params.metadata)}
        if ctx.input is not None and ctx.input_path is not None:
            digest, lines = hashlib.sha256(), 0
            done, total = 0, max(1, ctx.input.size)
            with ctx.input_path.open("rb") as file:
                while chunk := file.read(CHUNK_BYTES):
                    digest.update(chunk)
                    lines += chunk.count(b"\n")
                    done += len(chunk)
                    ctx.progress(10 + 50 * done / total, "Hashing the file", "hashing")
            if digest.hexdigest() != ctx.input.sha256:
                raise CorruptUpload("the stored file does not match its SHA-256")
            result.update(sha256=ctx.input.sha256, size=ctx.input.size, lines=lines)
        time.sleep(step_delay)
        ctx.progress(70, "Parsing the document", "parsing")
        time.sleep(step_delay)
        ctx.progress(90, "Indexing", "indexing")
        time.sleep(step_delay)
        return result

    return handlers
