"""The copy a live job publishes after each flush (live.L7) is ``Job.copy``'s copy."""

from __future__ import annotations

import dataclasses

from jobcast.jobs.live import published_copy
from jobcast.jobs.model import InputFile, Job, JobState


def _every_field_set() -> Job:
    return Job(
        id="j1",
        kind="transcode",
        owner="alice",
        params={"file": "a.wav"},
        state=JobState.RUNNING,
        progress=42.0,
        stage="encode",
        message="half way",
        eta_seconds=12.5,
        seq=7,
        started_at=1.0,
        finished_at=None,
        input=InputFile(filename="a.wav", size=3, sha256="00", content_type="audio/wav"),
        result={"ok": True},
        error={"type": "E", "message": "m"},
        attempts=2,
        max_attempts=3,
        next_attempt_at=5.0,
        last_error={"type": "E", "message": "m"},
        scheduled_for=4.0,
        priority=1,
        rerun_of="j0",
        last_event_id="e9",
        readers=["bob"],
        runs_on="celery",
        metadata={"pages": 3},
        tags=["audio"],
        waiting={"name": "ok"},
        inputs={"ok": True},
        parent_id="p1",
    )


def test_the_published_copy_is_the_job_and_shares_none_of_its_lists_or_dicts() -> None:
    job = _every_field_set()
    copy = published_copy(job)
    assert copy == job.copy() == job
    for field in dataclasses.fields(Job):
        if field.name in ("readers", "metadata", "tags", "inputs"):  # what Job.copy copies
            assert getattr(copy, field.name) is not getattr(job, field.name)
    job.readers.append("carol")
    job.metadata["pages"] = 4
    job.tags.append("video")
    job.inputs["more"] = 1
    assert copy.readers == ["bob"] and copy.metadata == {"pages": 3}
    assert copy.tags == ["audio"] and copy.inputs == {"ok": True}
