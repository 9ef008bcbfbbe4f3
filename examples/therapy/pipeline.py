"""Processing a recorded session: a jobcast job with the pipeline's stages.

Transcription and note writing are simulated with realistic stages and delays; an empty
recording fails, as a real transcriber would.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from examples.therapy.access import SESSION_KIND
from examples.therapy.config import TherapyConfig
from jobcast.jobs import JobContext, Registry

#: (stage, message, progress when it is done), in order.
STAGES = [
    ("uploading", "Recording received", 5),
    ("transcribing", "Transcribing the recording...", 35),
    ("transcribing", "Transcribing the recording...", 60),
    ("analyzing", "Finding themes and risk indicators...", 80),
    ("writing_notes", "Writing the session notes...", 95),
]


class EmptyRecording(Exception):
    """The uploaded recording has no audio."""


class SessionParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    patient_id: str = Field(min_length=1, max_length=255)
    title: str | None = Field(None, max_length=200)


def registry(config: TherapyConfig) -> Registry:
    handlers = Registry()

    @handlers.handler(SESSION_KIND, params_model=SessionParams, needs_input=True, retry_safe=True)
    async def process_session(ctx: JobContext, params: SessionParams) -> dict[str, Any]:
        if ctx.input is None or ctx.input.size == 0:
            raise EmptyRecording("the recording is empty")
        for stage, message, progress in STAGES:
            await asyncio.sleep(config.step_delay)
            ctx.progress(progress, message, stage)
        await asyncio.sleep(config.step_delay)
        return {
            "patient_id": params.patient_id,
            "recording_sha256": ctx.input.sha256,
            "notes": "Patient reported better sleep; continue the current plan.",
        }

    return handlers
