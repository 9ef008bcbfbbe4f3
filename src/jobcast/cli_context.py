"""Where the client commands get the server and token from, and how their errors read.

The server URL and token come from, in order: ``--url``/``--token``, the environment
(``JOBCAST_URL``, ``JOBCAST_TOKEN``), the config file, then the default URL. The config file is
``$JOBCAST_CONFIG`` if set, else ``$XDG_CONFIG_HOME/jobcast/config.toml`` (``~/.config/...``)::

    url = "https://jobs.example.com"
    token = "eyJ..."

Exit statuses of every client command (``watch`` adds the job's outcome):

    0  success (for ``watch``: the job succeeded)
    1  the job failed
    2  usage error (a bad option or argument)
    3  the job was cancelled
    4  the server could not be reached, refused the request, or the job does not exist
    5  ``--timeout`` ran out before the job finished
    130 interrupted (Ctrl-C)
    141 the output pipe closed early (``jobcast watch J --json | head -1``): quietly, as a
        program killed by SIGPIPE would, and distinct from every outcome above

Streams reconnect by themselves once connected, but a first connection that fails (the
server unreachable, a 5xx, an answer that is not jobcast's) ends the command at once with 4:
a wrong ``--url`` should not look like a job that is slow to start (``_policy`` R6).
"""

from __future__ import annotations

import contextlib
import os
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from jobcast.client import Client
    from jobcast.config import Settings

DEFAULT_URL = "http://127.0.0.1:8000"

EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_USAGE = 2
EXIT_JOB_CANCELLED = 3
EXIT_CLIENT_ERROR = 4
EXIT_TIMEOUT = 5
EXIT_INTERRUPTED = 130
EXIT_PIPE_CLOSED = 141  # 128 + SIGPIPE, what the shell reports for a reader that left


def config_path() -> Path:
    explicit = os.environ.get("JOBCAST_CONFIG")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "jobcast" / "config.toml"


def read_config(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        fail(f"cannot read the config file {path}: {exc}", EXIT_USAGE)


@dataclass(frozen=True, slots=True)
class Target:
    """The server and credential one command talks to."""

    url: str
    token: str | None

    @classmethod
    def resolve(cls, url: str | None, token: str | None) -> Target:
        """Flags and environment (typer fills both in), then the config file, then defaults."""
        if url is None or token is None:
            config = read_config(config_path())
            url = url or _text(config.get("url"))
            token = token or _text(config.get("token"))
        # A token pasted with its line break, or read from a file, still works.
        return cls((url or DEFAULT_URL).rstrip("/"), (token or "").strip() or None)

    def client(self) -> Client:
        """The client, or a usage error (exit 2) for a malformed URL or token."""
        from jobcast.client import Client, ReconnectPolicy

        try:
            # R6: a first connection that fails is reported at once, not retried for ever.
            return Client(
                self.url, token=self.token, reconnect=ReconnectPolicy(max_first_attempts=1)
            )
        except ValueError as exc:  # the client checks both before sending anything
            fail(
                f"{exc} (check --url/JOBCAST_URL, --token/JOBCAST_TOKEN and the config file)",
                EXIT_USAGE,
            )


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def no_color() -> bool:
    """https://no-color.org: ``NO_COLOR`` set to anything but the empty string."""
    return bool(os.environ.get("NO_COLOR"))


def console(*, stderr: bool = False) -> Console:
    """The rich console of a command. Under ``NO_COLOR`` rich alone drops colours but keeps
    bold and dim; here no styling is written at all, so output is plain text."""
    from rich.console import Console

    if no_color():
        return Console(stderr=stderr, color_system=None)
    return Console(stderr=stderr)


def fail(message: str, code: int) -> NoReturn:
    if no_color():  # secho would still append a reset sequence
        typer.echo(f"error: {message}", err=True)
    else:
        typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code)


def load_settings() -> Settings:
    """The server's settings from the environment; a value that does not parse ends the command
    with one line naming each variable, never a traceback (nor the value: it may be a secret)."""
    from pydantic import ValidationError

    from jobcast.config import Settings

    try:
        return Settings()
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            message = error["msg"].removeprefix("Value error, ")
            if error["loc"]:
                name = "JOBCAST_" + str(error["loc"][0]).upper()
                message = f"{name}: {message}"
            problems.append(" ".join(message.split()))
        fail("invalid settings: " + "; ".join(problems), EXIT_USAGE)


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that flushing it at exit cannot fail a second time."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


@contextlib.contextmanager
def friendly_errors(target: Target, forbidden_hint: str | None = None) -> Iterator[None]:
    """Turn client errors into one helpful line and an exit status; never a traceback.

    ``forbidden_hint`` follows the message of a 403, for the command where it helps.
    """
    from jobcast.client import (
        AuthError,
        ClientError,
        ConnectionFailed,
        ForbiddenError,
        HTTPStatusError,
        ProtocolError,
        WaitTimeout,
    )

    try:
        yield
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except BrokenPipeError:
        _silence_stdout()
        raise typer.Exit(EXIT_PIPE_CLOSED) from None
    except ConnectionFailed as exc:
        why = str(exc.__cause__ or "") or exc.message
        fail(
            f"cannot reach the jobcast server at {target.url} ({why}).\n"
            "Start it with `jobcast serve`, or point to it with --url or JOBCAST_URL.",
            EXIT_CLIENT_ERROR,
        )
    except AuthError as exc:
        if target.token is None:
            hint = "no token was given"
        else:
            hint = f"the server refused the token ({exc.reason or exc.message})"
        fail(
            f"{hint}.\nMint one with `jobcast token --sub NAME` and pass it with --token "
            "or JOBCAST_TOKEN.",
            EXIT_CLIENT_ERROR,
        )
    except HTTPStatusError as exc:
        if exc.body is None:  # not jobcast's JSON (a proxy's error page): its HTML helps nobody
            fail(f"{target.url} answered {exc.status} {exc.error}", EXIT_CLIENT_ERROR)
        hint = f"\n{forbidden_hint}" if forbidden_hint and isinstance(exc, ForbiddenError) else ""
        fail(f"{exc.message} ({exc.status} {exc.error}){hint}", EXIT_CLIENT_ERROR)
    except WaitTimeout:
        fail("the job did not finish within --timeout", EXIT_TIMEOUT)
    except ProtocolError as exc:
        fail(f"{exc.message}; is {target.url} a jobcast server?", EXIT_CLIENT_ERROR)
    except ClientError as exc:
        fail(exc.message, EXIT_CLIENT_ERROR)
