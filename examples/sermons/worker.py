"""The transcription worker: a separate process that processes one video and broadcasts its
status through the service's authenticated publish endpoint (``POST /api/events`` with a
``service`` token), exactly as a worker on another machine would.

The job handler (``pipeline.py``) starts one per video; to run one by hand against a running
service::

    export SERMONS_SERVICE_TOKEN=$(jobcast token --sub worker --role service \\
                                   --data-dir .jobcast/sermons)
    SERMONS_API_URL=http://127.0.0.1:8000 python -m examples.sermons.worker VIDEO_ID dQw4w9WgXcQ

It also reports to the job that started it, one JSON object per line on stdout:
``{"progress": 40, "stage": "...", "message": "..."}``, then ``{"result": {...}}`` (exit 0) or
``{"error": "..."}`` (exit 1). Transcription and summary are simulated: realistic stages and
delays (``SERMONS_STEP_DELAY`` seconds each), a summary derived from the YouTube id, and
"unavailable" videos for the ids in ``SERMONS_UNAVAILABLE_IDS``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import time
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


class Reporter:
    """Broadcasts the video's status to browsers and reports progress to the job."""

    def __init__(self, client: Client, video_id: str) -> None:
        self.client = client
        self.video_id = video_id
        self.topic = video_topic(video_id)

    def status(self, status: VideoStatus, progress: int, message: str, stage: str) -> None:
        event = video_status_event(self.video_id, status, progress, message)
        self.client.publish(self.topic, EventType.VIDEO_STATUS.value, event)
        tell_job({"progress": progress, "stage": stage, "message": message})

    def summary(self, summary: dict[str, Any]) -> None:
        event = summary_ready_event(self.video_id, summary)
        self.client.publish(self.topic, EventType.SUMMARY_READY.value, event)

    def failed(self, code: str, message: str) -> None:
        event = video_status_event(self.video_id, VideoStatus.FAILED, None, message)
        self.client.publish(self.topic, EventType.VIDEO_STATUS.value, event)
        self.client.publish(
            self.topic, EventType.ERROR.value, error_event(self.video_id, code, message)
        )


def tell_job(message: dict[str, Any]) -> None:
    print(json.dumps(message), flush=True)


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
    reporter: Reporter, youtube_id: str, delay: float, unavailable: set[str]
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Transcribe one video and broadcast its status.")
    parser.add_argument("video_id", help="The service's id of the video (its job id).")
    parser.add_argument("youtube_id", help="The YouTube id to transcribe.")
    args = parser.parse_args(argv)
    env = os.environ
    url = env.get("SERMONS_API_URL", "http://127.0.0.1:8000")
    token = env.get("SERMONS_SERVICE_TOKEN")
    if not token:
        parser.error("set SERMONS_SERVICE_TOKEN to a service token (jobcast token --role service)")
    delay = float(env.get("SERMONS_STEP_DELAY", "0.5"))
    unavailable = {item for item in env.get("SERMONS_UNAVAILABLE_IDS", "").split(",") if item}
    with Client(url, token=token) as client:
        reporter = Reporter(client, args.video_id)
        try:
            result = process(reporter, args.youtube_id, delay, unavailable)
        except VideoUnavailable as exc:
            reporter.failed("video_unavailable", str(exc))
            tell_job({"error": str(exc)})
            return 1
    tell_job({"result": result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
