"""How the client commands show things: a live progress bar, a jobs table, JSON lines."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TaskProgressColumn, TextColumn
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from jobcast.client import Job, StreamItem

STATE_STYLES = {
    "queued": "yellow",
    "running": "cyan",
    "succeeded": "green",
    "failed": "red",
    "cancelled": "magenta",
}


def item_json(item: StreamItem) -> str:
    """One stream item as a JSON line (``--json``)."""
    from jobcast.client import Event, Reset

    if isinstance(item, Event):
        value: dict[str, Any] = {"id": item.id, "type": item.type, "data": item.data}
        if item.polled:
            value["polled"] = True
    elif isinstance(item, Reset):
        value = {"type": "reset", "id": item.id, "reason": item.reason}
    else:
        value = {"type": "reauth", "reason": item.reason}
    return json.dumps(value, separators=(",", ":"))


def timestamp(text: str | None) -> float | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-:--"
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class _Elapsed(ProgressColumn):
    """Time since the job started (not since we began watching)."""

    def render(self, task: Task) -> Text:
        started = task.fields.get("started")
        ended = task.fields.get("ended") or time.time()
        return Text(duration(ended - started if started else None), style="progress.elapsed")


class JobProgress:
    """A live progress bar: percentage, stage, message, elapsed and ETA, fed with events."""

    def __init__(self, console: Console, job_id: str) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.fields[stage]}"),
            BarColumn(),
            TaskProgressColumn(),
            _Elapsed(),
            TextColumn("ETA {task.fields[eta]}"),
            TextColumn("{task.fields[message]}", style="dim"),
            console=console,
        )
        self.task = self.progress.add_task(
            job_id, total=100, stage="connecting", message="", eta="-:--", started=None, ended=None
        )

    def __enter__(self) -> JobProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def update(self, item: StreamItem) -> None:
        from jobcast.client import Event, Reset

        if isinstance(item, Reset):
            self.progress.console.print(f"[yellow]history reset ({item.reason}); resynced")
            return
        if not isinstance(item, Event) or not isinstance(item.data, dict):
            return
        data = item.data
        fields: dict[str, Any] = {}
        if "progress" in data:
            fields["completed"] = float(data["progress"])
        if item.type == "retrying":  # an attempt failed; the job waits for its next one
            error = data.get("last_error") or {}
            self.progress.console.print(
                f"[yellow]attempt {data.get('attempts')} of {data.get('max_attempts')} failed"
                f"[/] ({error.get('type', 'Error')}: {error.get('message', '')}); "
                f"next attempt at {data.get('next_attempt_at')}",
                highlight=False,
            )
        if "state" in data:
            fields["stage"] = data.get("stage") or data["state"]
            if item.type == "retrying":
                fields["stage"] = "retrying"
            elif data.get("max_attempts", 0) > 1 and data.get("attempts", 0) > 0:
                fields["stage"] += f" (attempt {data['attempts']}/{data['max_attempts']})"
            fields["started"] = timestamp(data.get("started_at"))
            fields["ended"] = timestamp(data.get("finished_at"))
        elif data.get("stage"):
            fields["stage"] = data["stage"]
        if "message" in data:
            fields["message"] = data.get("message") or ""
        if "eta_seconds" in data:
            fields["eta"] = duration(data["eta_seconds"])
        if item.terminal:
            fields["stage"] = item.type
        self.progress.update(self.task, **fields)


def outcome(console: Console, job: Job) -> None:
    """The one line that says how the job ended."""
    style = STATE_STYLES.get(job.state.value, "")
    if job.state.value == "succeeded":
        result = json.dumps(job.result) if job.result is not None else ""
        console.print(f"[{style}]succeeded[/] {job.id} {result}", highlight=False)
    elif job.state.value == "failed":
        error = job.error or {}
        reason = f"{error.get('type', 'Error')}: {error.get('message', '')}"
        console.print(f"[{style}]failed[/] {job.id}: {reason}", highlight=False)
    else:
        console.print(f"[{style}]{job.state.value}[/] {job.id}", highlight=False)


def jobs_table(jobs: Iterable[Job]) -> Table:
    """The ``jobcast jobs`` table. Its columns fit an 80-column terminal: the id (needed whole,
    to paste into other commands), state, progress and date never shrink; kind, stage and
    owner keep a readable minimum and end in an ellipsis when they must."""
    table = Table(
        box=None, header_style="bold", pad_edge=False, padding=(0, 1), collapse_padding=True
    )
    table.add_column("ID", no_wrap=True, min_width=22)
    table.add_column("KIND", min_width=6, overflow="ellipsis")
    table.add_column("STATE", no_wrap=True)
    table.add_column("DONE", no_wrap=True, justify="right")
    table.add_column("STAGE", min_width=8, overflow="ellipsis")
    table.add_column("OWNER", min_width=6, overflow="ellipsis")
    table.add_column("CREATED", no_wrap=True)  # UTC, as the API gives it
    for job in jobs:
        state = job.state.value
        table.add_row(
            job.id,
            job.kind,
            Text(state, style=STATE_STYLES.get(state, "")),
            f"{job.progress:.0f}%",
            job.stage or "",
            job.owner,
            (job.created_at or "")[:16].replace("T", " "),
        )
    return table
