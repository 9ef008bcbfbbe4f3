"""The client commands: ``submit``, ``watch``, ``jobs``, ``cancel``, ``rerun``, ``publish``,
``tail``.

Each command talks to a server through :mod:`jobcast.client`; where the server and token come
from, and the exit statuses, are in :mod:`jobcast.cli_context`.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from jobcast.cli_context import (
    EXIT_JOB_CANCELLED,
    EXIT_JOB_FAILED,
    EXIT_USAGE,
    Target,
    console,
    fail,
    friendly_errors,
)
from jobcast.cli_render import JobProgress, item_json, jobs_table, outcome

if TYPE_CHECKING:
    from jobcast.client import Client, Job, StreamItem

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url", envvar="JOBCAST_URL", help="Server URL (default: config file, else :8000)."
    ),
]
TokenOption = Annotated[
    str | None,
    typer.Option("--token", envvar="JOBCAST_TOKEN", help="Bearer token (default: config file)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON (one object per line).")]
TimeoutOption = Annotated[
    float | None, typer.Option(help="Give up after this many seconds (exit 5).")
]

_EXITS = (
    "Exit status: 0 succeeded, 1 failed, 3 cancelled, 4 server unreachable or request refused, "
    "5 --timeout ran out."
)


def _epilog(*examples: str) -> str:
    return "Examples:\n\n" + "\n\n".join(f"  {example}" for example in examples)


def _not_json(text: str) -> Any:
    raise ValueError(f"{text} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999: valid syntax, but no JSON number can carry it
        raise ValueError(f"{text} is out of range")
    return value


def load_json(text: str) -> Any:
    """Strict JSON: Python's parser also takes NaN and Infinity, which cannot be sent."""
    return json.loads(text, parse_constant=_not_json, parse_float=_finite)


def parse_value(text: str) -> Any:
    """A ``--param`` value or ``DATA``: JSON if it parses (numbers, true, lists), else text."""
    try:
        return load_json(text)
    except ValueError:
        return text


def parse_object(text: str, option: str) -> dict[str, Any]:
    try:
        loaded = load_json(text)
    except ValueError as exc:
        fail(f"{option} must be a JSON object ({exc})", EXIT_USAGE)
    if not isinstance(loaded, dict):
        fail(f"{option} must be a JSON object", EXIT_USAGE)
    return loaded


def parse_params(pairs: list[str], params_json: str | None) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if params_json:
        params.update(parse_object(params_json, "--params"))
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail(f"--param wants KEY=VALUE, got {pair!r}", EXIT_USAGE)
        params[key] = parse_value(value)
    return params


def _watch(client: Client, job_id: str, as_json: bool, timeout: float | None) -> None:
    from jobcast.client import Event

    final: Job | None = None
    out = console()
    if as_json:
        for item in client.watch(job_id, timeout=timeout):
            typer.echo(item_json(item))
            if isinstance(item, Event) and item.terminal:
                final = item.job
    else:
        with contextlib.ExitStack() as stack:
            bar: JobProgress | None = None
            items = client.watch(job_id, timeout=timeout)
            for item in _connecting(items, f"connecting to {client.url}..."):
                if bar is None:  # not before: a job that cannot be watched shows no empty bar
                    bar = stack.enter_context(JobProgress(out, job_id))
                bar.update(item)
                if isinstance(item, Event) and item.terminal:
                    final = item.job
        if final is not None:
            outcome(out, final)
    state = final.state.value if final is not None else client.get(job_id).state.value
    if state == "failed":
        raise typer.Exit(EXIT_JOB_FAILED)
    if state == "cancelled":
        raise typer.Exit(EXIT_JOB_CANCELLED)


def _connecting(items: Iterator[StreamItem], status: str) -> Iterator[StreamItem]:
    """``items``, with ``status`` on a terminal's stderr until the first arrives.

    Transient, and shown only on a terminal: pipes and logs see nothing of it.
    """
    with console(stderr=True).status(status):
        first = next(items, None)
    if first is not None:
        yield first
        yield from items


def submit(
    kind: Annotated[str, typer.Argument(help="The job kind, e.g. demo or ingest.")],
    param: Annotated[
        list[str] | None, typer.Option("--param", "-p", help="KEY=VALUE; repeat for several.")
    ] = None,
    params: Annotated[str | None, typer.Option(help="All params as one JSON object.")] = None,
    file: Annotated[
        Path | None, typer.Option(exists=True, dir_okay=False, help="A file to upload.")
    ] = None,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Then watch it.")] = False,
    timeout: Annotated[
        float | None, typer.Option(help="With --watch: give up after this many seconds (exit 5).")
    ] = None,
    delay: Annotated[
        float | None, typer.Option(help="Start it no sooner than this many seconds from now.")
    ] = None,
    priority: Annotated[
        int | None, typer.Option(help="-100..100; higher runs first among queued jobs.")
    ] = None,
    max_attempts: Annotated[
        int | None, typer.Option(help="Runs it may have in all (its handler's retries).")
    ] = None,
    idempotency_key: Annotated[
        str | None, typer.Option(help="Submitting again with this key returns the first job.")
    ] = None,
    tag: Annotated[list[str] | None, typer.Option(help="A label; repeat for several.")] = None,
    metadata: Annotated[
        str | None, typer.Option(help="The job's initial metadata, one JSON object.")
    ] = None,
    as_json: JsonOption = False,
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Submit a job; prints its id (with --watch, follows it like `jobcast watch`)."""
    if timeout is not None and not watch:  # a submission is not waited for: say so
        fail("--timeout applies to --watch", EXIT_USAGE)
    target = Target.resolve(url, token)
    values = parse_params(param or [], params)
    initial = parse_object(metadata, "--metadata") if metadata is not None else None
    with friendly_errors(target), target.client() as client:
        job = client.submit(
            kind,
            values,
            file=file,
            delay=delay,
            priority=priority,
            max_attempts=max_attempts,
            idempotency_key=idempotency_key,
            tags=tag,
            metadata=initial,
        )
        if as_json and not watch:
            typer.echo(json.dumps({"id": job.id, "kind": job.kind, "state": job.state.value}))
        elif not as_json:
            typer.echo(job.id)
        if watch:
            _watch(client, job.id, as_json, timeout)


def watch(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    as_json: JsonOption = False,
    timeout: TimeoutOption = None,
    stream: Annotated[
        str | None,
        typer.Option(
            "--stream",
            help="Print this output stream of the job (e.g. output) as it is written, "
            "instead of its progress.",
        ),
    ] = None,
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Follow a job live: progress, stage, message, elapsed and ETA, until it ends.

    Reconnects by itself (and polls if streaming is impossible). With --stream, prints the
    job's output stream instead, resuming at the exact byte after a reconnect.
    """
    target = Target.resolve(url, token)
    with friendly_errors(target), target.client() as client:
        if stream is not None:
            _print_stream(client, job_id, stream)
            return
        _watch(client, job_id, as_json, timeout)


def _print_stream(client: Client, job_id: str, name: str) -> None:
    """The job's output stream on stdout as it arrives (JSON messages one per line); then the
    job's outcome as the exit status, as ``watch`` has."""
    for item in client.read_stream(job_id, name):
        if isinstance(item, str):
            sys.stdout.write(item)
        elif isinstance(item, bytes):
            sys.stdout.flush()
            sys.stdout.buffer.write(item)
        else:
            sys.stdout.write(json.dumps(item) + "\n")
        sys.stdout.flush()
    state = client.get(job_id).state.value
    if state == "failed":
        raise typer.Exit(EXIT_JOB_FAILED)
    if state == "cancelled":
        raise typer.Exit(EXIT_JOB_CANCELLED)


def jobs(
    state: Annotated[
        list[str] | None, typer.Option(help="queued, running, succeeded, failed, cancelled.")
    ] = None,
    kind: Annotated[str | None, typer.Option(help="Only jobs of this kind.")] = None,
    tag: Annotated[
        list[str] | None, typer.Option(help="Only jobs with this tag; repeat: all must match.")
    ] = None,
    parent: Annotated[str | None, typer.Option(help="Only the jobs of this batch.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=200, help="At most this many.")] = 50,
    as_json: JsonOption = False,
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """List jobs, newest first."""
    from jobcast.client import JobState

    states = [each.value for each in JobState]
    for value in state or []:
        if value not in states:  # a usage error, found without asking the server
            fail(f"--state {value!r}: use one of {', '.join(states)}", EXIT_USAGE)
    target = Target.resolve(url, token)
    with friendly_errors(target), target.client() as client:
        page = client.list(state=state, kind=kind, limit=limit, tag=tag, parent=parent)
        if as_json:
            for job in page.jobs:
                typer.echo(json.dumps({"id": job.id, "kind": job.kind, "state": job.state.value}))
        elif not page.jobs:
            typer.echo("no jobs")
        else:
            console().print(jobs_table(page.jobs))


def cancel(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Cancel a queued or running job."""
    target = Target.resolve(url, token)
    with friendly_errors(target), target.client() as client:
        job = client.cancel(job_id)
        typer.echo(f"cancel requested: {job.id} ({job.state.value})")


def rerun(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Then watch the new job.")] = False,
    as_json: JsonOption = False,
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Run a job again as a new job (same kind, params and upload); prints the new id."""
    target = Target.resolve(url, token)
    with friendly_errors(target), target.client() as client:
        job = client.rerun(job_id)
        if as_json and not watch:
            value = {"id": job.id, "kind": job.kind, "state": job.state.value}
            typer.echo(json.dumps({**value, "rerun_of": job.rerun_of}))
        elif not as_json:
            typer.echo(job.id)
        if watch:
            _watch(client, job.id, as_json, None)


def publish(
    topic: Annotated[str, typer.Argument(help="e.g. videos/42")],
    type: Annotated[str, typer.Argument(help="The event type, e.g. video.status.")],
    data: Annotated[str, typer.Argument(help="JSON (anything else is sent as a string).")] = "null",
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Publish one event (needs a service or admin token); prints its id."""
    target = Target.resolve(url, token)
    hint = "Publishing needs a service token: `jobcast token --sub NAME --role service`."
    with friendly_errors(target, forbidden_hint=hint), target.client() as client:
        typer.echo(client.publish(topic, type, parse_value(data)))


def tail(
    topics: Annotated[list[str], typer.Argument(help="Topics or prefix/* patterns.")],
    last_event_id: Annotated[str | None, typer.Option(help="Resume after this event id.")] = None,
    as_json: JsonOption = False,
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Print events on TOPICS as they arrive, until interrupted (reconnects by itself)."""
    from jobcast.client import Event, Reset

    target = Target.resolve(url, token)
    with friendly_errors(target), target.client() as client:
        for item in client.subscribe(topics, last_event_id=last_event_id):
            if as_json:
                typer.echo(item_json(item))
            elif isinstance(item, Event):
                typer.echo(f"{item.id}  {item.type}  {json.dumps(item.data)}")
            elif isinstance(item, Reset):
                typer.echo(f"-- reset ({item.reason}): events were missed", err=True)
            else:
                typer.echo(f"-- reauth ({item.reason}): the token expired", err=True)


def register(app: typer.Typer) -> None:
    """Add the client commands to the ``jobcast`` command."""
    app.command(
        epilog=_epilog(
            "jobcast submit demo --param steps=5 --param delay=0.2 --watch",
            "jobcast submit ingest --file recording.wav",
            "jobcast submit demo --params '{\"steps\": 3}' --json",
        )
        + "\n\n"
        + _EXITS
    )(submit)
    app.command(
        epilog=_epilog(
            "jobcast watch 18ea3c2d39569917be5249",
            "jobcast watch JOB_ID --json | jq .",
            "jobcast watch JOB_ID --stream output",
        )
        + "\n\n"
        + _EXITS
    )(watch)
    app.command(
        epilog=_epilog("jobcast jobs", "jobcast jobs --state running --state queued --kind demo")
    )(jobs)
    app.command(epilog=_epilog("jobcast cancel 18ea3c2d39569917be5249"))(cancel)
    app.command(epilog=_epilog("jobcast rerun 18ea3c2d39569917be5249 --watch") + "\n\n" + _EXITS)(
        rerun
    )
    app.command(
        epilog=_epilog(
            'jobcast publish videos/42 video.status \'{"status": "PROCESSING"}\'',
            "JOBCAST_TOKEN=$(jobcast token --sub svc --role service) jobcast publish a/b ping",
        )
    )(publish)
    app.command(epilog=_epilog("jobcast tail videos/42", "jobcast tail 'jobs/*' --json"))(tail)
