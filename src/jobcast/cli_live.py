"""Client commands for live jobs: ``jobcast input`` (answer a job that waits for input),
``jobcast live`` (a live job list) and ``jobcast batch`` (submit a batch)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from jobcast.cli_client import JsonOption, TokenOption, UrlOption, load_json, parse_value
from jobcast.cli_context import EXIT_USAGE, Target, fail, friendly_errors
from jobcast.cli_render import item_json


def give_input(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    name: Annotated[str, typer.Argument(help="The input it waits for, e.g. approve.")],
    value: Annotated[str, typer.Argument(help="JSON (anything else is sent as a string).")],
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Give a running job the input it waits for (see `waiting` in `jobcast watch --json`)."""
    target = Target.resolve(url, token)
    with friendly_errors(target), target.client() as client:
        job = client.give_input(job_id, name, parse_value(value))
        typer.echo(f"input {name!r} given to {job.id}")


def live(
    tag: Annotated[list[str] | None, typer.Option(help="Repeat: all must match.")] = None,
    kind: Annotated[str | None, typer.Option(help="Only jobs of this kind.")] = None,
    state: Annotated[list[str] | None, typer.Option(help="Any of these states.")] = None,
    as_json: JsonOption = False,
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Follow every job that matches a filter, until interrupted (a live job list)."""
    from jobcast.client import Event

    target = Target.resolve(url, token)
    with friendly_errors(target), target.client() as client:
        for item in client.watch_jobs(tag=tag, kind=kind, state=state):
            if as_json:
                typer.echo(item_json(item))
            elif isinstance(item, Event) and item.type == "snapshot":
                job = item.data
                waiting = f"  waiting for {job['waiting']['name']}" if job.get("waiting") else ""
                typer.echo(
                    f"{job['id']}  {job['kind']:<12} {job['state']:<9} "
                    f"{job['progress']:5.1f}%{waiting}  {json.dumps(job.get('metadata') or {})}"
                )
            elif isinstance(item, Event) and item.type == "removed":
                typer.echo(f"{item.data['id']}  removed ({item.data['reason']})")
            elif isinstance(item, Event) and item.type == "synced":
                typer.echo(f"-- {item.data['count']} jobs; following changes", err=True)


def batch(
    jobs_json: Annotated[
        str, typer.Argument(help='A JSON list: [{"kind": "demo", "params": {...}}, ...]')
    ],
    tag: Annotated[list[str] | None, typer.Option(help="A label; repeat for several.")] = None,
    allow_failures: Annotated[
        bool, typer.Option(help="End succeeded even if some jobs failed.")
    ] = False,
    as_json: JsonOption = False,
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Submit jobs as one batch (all or none); prints the batch's id (watch it like a job)."""
    try:
        items = load_json(jobs_json)
    except ValueError as exc:
        fail(f"JOBS must be a JSON list ({exc})", EXIT_USAGE)
    if not isinstance(items, list):
        fail("JOBS must be a JSON list of jobs", EXIT_USAGE)
    target = Target.resolve(url, token)
    with friendly_errors(target), target.client() as client:
        parent = client.submit_batch(items, tags=tag, allow_failures=allow_failures)
        if as_json:
            typer.echo(json.dumps({"id": parent.id, "total": parent.metadata.get("total")}))
        else:
            typer.echo(parent.id)


def _epilog(*examples: str) -> str:
    return "Examples:\n\n" + "\n\n".join(f"  {example}" for example in examples)


def register(app: typer.Typer) -> None:
    app.command(
        "input",
        epilog=_epilog(
            "jobcast input 18ea3c2d39569917be5249 approve '{\"approved\": true}'",
            "jobcast input JOB_ID speaker anna",
        ),
    )(give_input)
    app.command(
        epilog=_epilog("jobcast live --tag batch-7", "jobcast live --state running --json")
    )(live)
    app.command(
        epilog=_epilog(
            'jobcast batch \'[{"kind": "demo"}, {"kind": "demo", "params": {"steps": 3}}]\'',
            "jobcast watch BATCH_ID; jobcast jobs --parent BATCH_ID",
        )
    )(batch)
