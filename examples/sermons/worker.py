"""The transcription work of one video (the Celery task ``tasks.py`` runs it): it broadcasts the
video's status through the service's authenticated publish endpoint (``POST /api/events`` with
a ``service`` token), exactly as a worker on another machine would, and reports its progress
to the video's job.

Transcription and summary are simulated: realistic stages and delays (``delay`` seconds each),
a summary derived from the YouTube id, and "unavailable" videos for the ids in
``unavailable``.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable
from typing import Any

from examples.sermons.dtos import (
    EventType,
    VideoStatus,
    error_event,
    summary_ready_event,
    video_status_event,
    video_topic,
)
from jobcast.client import Client

SEGMENTS = 5
THEMES = ["Faith", "Grace", "Hope", "Prayer", "Forgiveness", "Service", "Love", "Perseverance"]
PASSAGES = [
    "John 3:16",
    "Romans 8:28",
    "Psalm 23:1-4",
    "Matthew 5:3-12",
    "Hebrews 11:1",
    "1 Corinthians 13:4-7",
]
SPEAKERS = ["Pastor Ana Souza", "Rev. Daniel Okafor", "Pastor Miriam Cole"]
CITATIONS = [
    "C. S. Lewis, Mere Christianity",
    "Augustine, Confessions",
    "Dietrich Bonhoeffer, The Cost of Discipleship",
]


class VideoUnavailable(Exception):
    """The video cannot be downloaded (private, removed, region-locked)."""


class VideoReporter:
    """Broadcasts the video's status to browsers and reports progress to its job."""

    def __init__(
        self, client: Client, video_id: str, to_job: Callable[[int, str, str], None]
    ) -> None:
        self.client = client
        self.video_id = video_id
        self.topic = video_topic(video_id)
        self.to_job = to_job

    def status(self, status: VideoStatus, progress: int, message: str, stage: str) -> None:
        event = video_status_event(self.video_id, status, progress, message)
        self.client.publish(self.topic, EventType.VIDEO_STATUS.value, event)
        self.to_job(progress, message, stage)

    def summary(self, summary: dict[str, Any]) -> None:
        event = summary_ready_event(self.video_id, summary)
        self.client.publish(self.topic, EventType.SUMMARY_READY.value, event)

    def failed(self, code: str, message: str) -> None:
        event = video_status_event(self.video_id, VideoStatus.FAILED, None, message)
        self.client.publish(self.topic, EventType.VIDEO_STATUS.value, event)
        self.client.publish(
            self.topic, EventType.ERROR.value, error_event(self.video_id, code, message)
        )


def summarize(youtube_id: str) -> dict[str, Any]:
    """A plausible summary, the same for the same video (seeded by its id)."""
    rng = random.Random(hashlib.sha256(youtube_id.encode()).digest())
    themes = rng.sample(THEMES, 3)
    return {
        "themes": themes,
        "passages": [
            {
                "reference": reference,
                "context": f"Read while speaking about {rng.choice(themes).lower()}",
            }
            for reference in rng.sample(PASSAGES, 2)
        ],
        "citations": rng.sample(CITATIONS, 1),
        "speaker": rng.choice(SPEAKERS),
        "word_count": rng.randint(3500, 7500),
        "key_points": [f"{theme} shapes how we live each day" for theme in themes],
    }


def process(
    reporter: VideoReporter, youtube_id: str, delay: float, unavailable: set[str]
) -> dict[str, Any]:
    reporter.status(VideoStatus.PROCESSING, 5, "Downloading audio...", "downloading")
    time.sleep(delay)
    if youtube_id in unavailable:
        raise VideoUnavailable(f"Video {youtube_id} is unavailable (private or removed)")
    for segment in range(1, SEGMENTS + 1):
        time.sleep(delay)
        progress = 10 + 50 * segment // SEGMENTS
        reporter.status(
            VideoStatus.PROCESSING,
            progress,
            f"Transcribing audio ({segment}/{SEGMENTS})...",
            "transcribing",
        )
    time.sleep(delay)
    reporter.status(VideoStatus.PROCESSING, 75, "Finding passages and citations...", "analyzing")
    time.sleep(delay)
    reporter.status(VideoStatus.PROCESSING, 90, "Writing the summary...", "summarizing")
    summary = summarize(youtube_id)
    reporter.status(VideoStatus.PROCESSED, 100, "Video processed", "done")
    reporter.summary(summary)
    return {
        "title": f"Sermon {youtube_id}",
        "duration": 60 * random.Random(youtube_id).randint(25, 70),
        "summary": summary,
    }
