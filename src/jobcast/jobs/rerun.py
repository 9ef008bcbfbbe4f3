"""Re-runs: ``POST /api/jobs/{id}/rerun`` submits a job again as a new job.

Decisions (cited as U1..U3):

U1. A re-run is a new job (a new id, its own events, attempts and result), never a reset of
    the old one, whose record stays as it ended; ``rerun_of`` links the new job to it.
U2. It has the original's kind, params, owner, priority, ``max_attempts`` and tags (not its
    metadata, which its run wrote), and a copy of its
    uploaded file when the file is still kept (a deleted job's upload is gone; a kind that
    needs a file then cannot be re-run: 409). Not its schedule: it runs now.
U3. The original may be in any state: re-running a job that is still queued or running is
    the caller's decision (a second, independent run).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from typing import TYPE_CHECKING

from jobcast.errors import Conflict
from jobcast.jobs.model import Job

if TYPE_CHECKING:
    from jobcast.jobs.runner import EmbeddedRunner


async def rerun(runner: EmbeddedRunner, original: Job) -> Job:
    """Submit ``original`` again as a new job linked to it (U1, U2)."""
    upload = None
    if original.input is not None:
        kept = runner.upload_path(original.id)
        copy = kept.with_name(f".rerun-{os.urandom(8).hex()}")  # the runner renames it (U2)
        try:
            await asyncio.to_thread(shutil.copyfile, kept, copy)
        except FileNotFoundError:
            raise Conflict(
                f"job {original.id}'s uploaded file is no longer kept; submit it again"
            ) from None
        upload = copy
    try:
        return await runner.submit(
            original.kind,
            original.params,
            original.owner,
            input=original.input,
            upload=upload,
            priority=original.priority,
            max_attempts=original.max_attempts or None,
            rerun_of=original.id,
            tags=tuple(original.tags),
        )
    finally:
        if upload is not None:  # a no-op once the runner took the file
            await asyncio.to_thread(upload.unlink, missing_ok=True)
