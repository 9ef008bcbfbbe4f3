"""The ``jobcast`` command: run the server, mint tokens; client commands in ``cli_client``."""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from jobcast.cli_client import register as register_client_commands
from jobcast.cli_context import EXIT_USAGE, fail, load_settings, no_color
from jobcast.cli_live import register as register_live_commands
from jobcast.principal import Role


class LogFormatChoice(StrEnum):
    TEXT = "text"
    JSON = "json"


app = typer.Typer(
    help="jobcast: real-time job progress and event streaming.",
    epilog="Examples:\n\n  jobcast serve\n\n  export JOBCAST_TOKEN=$(jobcast token --sub alice)\n\n"
    "  jobcast submit demo --param steps=5 --watch\n\n  jobcast jobs --state running\n\n"
    "Run `jobcast COMMAND --help` for each command's options and examples.",
    no_args_is_help=True,
    # --install-completion and --show-completion, for bash, zsh, fish and PowerShell.
    add_completion=True,
    rich_markup_mode="rich",
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"jobcast {_version()}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the version and exit.",
        ),
    ] = False,
) -> None:
    """jobcast: real-time job progress and event streaming."""


@app.command(
    epilog="Examples:\n\n  jobcast serve\n\n  jobcast serve --port 9000 --data-dir /var/lib/jobcast"
    "\n\n  jobcast serve --handlers mypkg.jobs,mypkg.more_jobs"
)
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    data_dir: Annotated[
        Path | None,
        typer.Option(help="State directory (default: $JOBCAST_DATA_DIR, else ./.jobcast)."),
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    log_format: Annotated[
        LogFormatChoice,
        typer.Option(
            envvar="JOBCAST_LOG_FORMAT",
            help="text, or json: one JSON object per line with a request id.",
        ),
    ] = LogFormatChoice.TEXT,
    handlers: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated modules whose job handlers to load (default: "
            "$JOBCAST_HANDLERS; the built-in kinds demo and ingest are always there)."
        ),
    ] = None,
    forwarded_allow_ips: Annotated[
        str | None,
        typer.Option(
            envvar="JOBCAST_FORWARDED_ALLOW_IPS",
            help="Comma-separated addresses of the reverse proxies (or '*') whose "
            "X-Forwarded-For and X-Forwarded-Proto are trusted: per-IP rate limits count the "
            "client address they report (default: uvicorn's $FORWARDED_ALLOW_IPS, else "
            "127.0.0.1).",
        ),
    ] = None,
    root_path: Annotated[
        str,
        typer.Option(
            help="The path a reverse proxy serves jobcast under, e.g. /jobcast (the proxy "
            "strips it; links, the docs and the dashboard include it)."
        ),
    ] = "",
    uds: Annotated[
        Path | None,
        typer.Option(help="Listen on this Unix domain socket instead of --host and --port."),
    ] = None,
) -> None:
    """Run the jobcast server (embedded default: SQLite in the data directory, no other service)."""
    from jobcast.errors import MissingExtra
    from jobcast.extras import check_server
    from jobcast.server.standalone import ServeOptions
    from jobcast.server.standalone import serve as run_server

    if data_dir is not None:
        os.environ["JOBCAST_DATA_DIR"] = str(data_dir)
    if handlers is not None:
        os.environ["JOBCAST_HANDLERS"] = handlers
    os.environ["JOBCAST_LOG_FORMAT"] = log_format.value  # the app's settings agree
    settings = load_settings()
    try:
        check_server("serve")
        settings.check_extras()
    except MissingExtra as exc:
        fail(exc.message, EXIT_USAGE)
    from jobcast.server.ops.logs import hide_password

    banner = (
        f"jobcast {_version()} on {f'unix:{uds}' if uds else f'http://{host}:{port}'}"
        f"{root_path} (data: {settings.data_dir}, "
        f"events: {hide_password(settings.resolved_broker_url)}); API docs at /docs"
    )
    json_logs = log_format is LogFormatChoice.JSON
    if not json_logs:  # in JSON mode every line is JSON: the server logs the banner
        typer.echo(banner)
    options = ServeOptions(
        banner=banner if json_logs else "",
        host=host,
        port=port,
        log_level=log_level,
        json_logs=json_logs,
        forwarded_allow_ips=forwarded_allow_ips,
        root_path=root_path.rstrip("/"),
        uds=str(uds) if uds is not None else None,
    )
    try:
        run_server(settings, options)
    except ValueError as exc:  # a --handlers module that cannot be loaded
        fail(str(exc), EXIT_USAGE)


@app.command(
    epilog="Examples:\n\n  JOBCAST_QUEUE_URL=redis://127.0.0.1:6379/0 "
    "JOBCAST_BROKER_URL=redis://127.0.0.1:6379/0 \\\n"
    "  JOBCAST_STORE_URL=postgresql://app@db/jobs jobcast worker --handlers mypkg.jobs\n\n"
    "  JOBCAST_STORE_URL=postgresql://app@db/jobs "
    "JOBCAST_QUEUE_URL=postgresql://app@db/jobs \\\n"
    "  jobcast worker --handlers mypkg.jobs   # PostgreSQL alone"
)
def worker(
    handlers: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated modules whose job handlers to load (default: "
            "$JOBCAST_HANDLERS; the built-in kinds are always there)."
        ),
    ] = None,
    concurrency: Annotated[
        int | None, typer.Option(help="Jobs run at once (default: $JOBCAST_JOB_CONCURRENCY).")
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Run queued jobs (needs JOBCAST_QUEUE_URL and a Redis or PostgreSQL broker)."""
    import logging

    from jobcast.errors import JobcastError
    from jobcast.extras import check_worker

    if handlers is not None:
        os.environ["JOBCAST_HANDLERS"] = handlers
    if concurrency is not None:
        os.environ["JOBCAST_JOB_CONCURRENCY"] = str(concurrency)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    settings = load_settings()
    try:
        # A worker always needs the queue, whether or not JOBCAST_QUEUE_URL is set yet.
        check_worker()
        settings.check_extras()
        from jobcast.jobs.worker import run_worker

        run_worker(settings)
    except JobcastError as exc:  # a missing extra, bad settings, an unloadable handler module
        fail(exc.message, EXIT_USAGE)
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)


@app.command(
    epilog="Examples:\n\n  jobcast token --sub alice\n\n"
    "  jobcast token --sub worker-1 --role service --ttl 86400"
)
def token(
    sub: Annotated[str, typer.Option(help="The subject (user or service name).")],
    role: Annotated[Role, typer.Option(help="user, service or admin.")] = Role.USER,
    ttl: Annotated[float, typer.Option(help="Lifetime in seconds.")] = 3600.0,
    topic: Annotated[
        list[str] | None, typer.Option(help="A topic pattern to grant; repeat for several.")
    ] = None,
    data_dir: Annotated[Path | None, typer.Option(help="State directory of the server.")] = None,
) -> None:
    """Mint a bearer token signed with the server's secret (for curl, scripts and tests)."""
    from jobcast.errors import MissingExtra
    from jobcast.extras import check_server

    try:
        check_server("token")
    except MissingExtra as exc:
        fail(exc.message, EXIT_USAGE)
    from jobcast.auth import TokenAuthority
    from jobcast.jwt_keys import SECRET_FILE

    if data_dir is not None:
        os.environ["JOBCAST_DATA_DIR"] = str(data_dir)
    settings = load_settings()
    secret = settings.data_dir / SECRET_FILE
    new_secret = settings.jwt_secret is None and not secret.exists()
    authority = TokenAuthority.from_settings(settings)
    if new_secret:  # most likely run away from the server: its tokens would all be refused
        typer.echo(
            f"note: {secret} did not exist, so a new secret was made there; a server whose data"
            " directory is elsewhere will refuse this token (run this next to the server, or"
            " pass --data-dir or JOBCAST_JWT_SECRET)",
            err=True,
        )
    typer.echo(authority.mint(sub, role=role, ttl=ttl, grants=topic))


def _version() -> str:
    from jobcast._version import __version__

    return __version__


register_client_commands(app)  # submit, watch, jobs, cancel, rerun, publish, tail
register_live_commands(app)  # input, live, batch


def main() -> None:
    if no_color():
        # typer draws help and usage errors with rich, which under NO_COLOR alone drops colours
        # but keeps bold and dim; typer's documented switch turns styling off entirely.
        import typer.rich_utils

        typer.rich_utils.COLOR_SYSTEM = None
    app()
