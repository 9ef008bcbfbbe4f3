"""Logs: credentials kept out, and a JSON format with request ids.

``?token=`` and ``?ticket=`` values, ``Bearer`` credentials and anything shaped like a JWT are
redacted, and so are passwords in the service URLs ``jobcast serve`` prints. With
``JOBCAST_LOG_FORMAT=json`` (``jobcast serve --log-format json``) every line is one JSON object:
``time``, ``level``, ``logger``, ``message``, ``request_id`` (``request_id.py`` sets it for each
request and WebSocket; ``null`` outside them) and, for errors, ``exception``. Headers are never
logged, and the formatter redacts the whole line, whatever logger wrote it.
"""

from __future__ import annotations

import logging
import re
import time
from contextvars import ContextVar
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

#: The id of the request (or WebSocket) being handled, for log lines written meanwhile.
REQUEST_ID: ContextVar[str | None] = ContextVar("jobcast_request_id", default=None)

_SECRET_PARAMS = re.compile(r"(?<=[?&])(token|ticket|access_token)=[^&\s\"]*", re.IGNORECASE)
_BEARER = re.compile(r"\b(bearer)\s+[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_PASSWORD_PARAM = re.compile(r"(?<=[?&])password=[^&]*", re.IGNORECASE)


def redact(text: str) -> str:
    text = _SECRET_PARAMS.sub(r"\1=REDACTED", text)
    text = _BEARER.sub(r"\1 REDACTED", text)
    return _JWT.sub("REDACTED", text)


def hide_password(url: str) -> str:
    """``url`` with its password (``redis://:pw@host``, ``?password=pw``) shown as ``***``."""
    parts = urlsplit(url)
    if parts.password is not None:  # rebuilt only then: urlunsplit drops sqlite:////'s slashes
        userinfo, _, host = parts.netloc.rpartition("@")
        url = urlunsplit(parts._replace(netloc=f"{userinfo.partition(':')[0]}:***@{host}"))
    return _PASSWORD_PARAM.sub("password=***", url)


class RedactSecrets(logging.Filter):
    """Rewrites log records (uvicorn's access log passes the path as an argument)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        return True


def install_log_redaction(*logger_names: str) -> None:
    """Add the filter to the access and error loggers and to jobcast's, once (idempotent).

    A logger's filters see only the records it creates itself, not its children's, so every
    ``jobcast.*`` logger that exists by now (they are created when their modules are imported)
    gets the filter too.
    """
    names = list(logger_names or ("uvicorn.access", "uvicorn.error", "jobcast"))
    if not logger_names:
        names += [n for n in logging.root.manager.loggerDict if n.startswith("jobcast.")]
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactSecrets) for f in logger.filters):
            logger.addFilter(RedactSecrets())


class JsonFormatter(logging.Formatter):
    """One JSON object per line, redacted as a whole (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        created = time.gmtime(record.created)
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", created) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
            "request_id": REQUEST_ID.get(),
        }
        if record.exc_info:
            line["exception"] = redact(self.formatException(record.exc_info))
        if record.stack_info:
            line["stack"] = redact(self.formatStack(record.stack_info))
        return orjson.dumps(line).decode()


def log_config(level: str) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for uvicorn that writes JSON lines: access lines to
    stdout, everything else (uvicorn's, jobcast's, any library's) to stderr."""
    json_handler = {"formatter": "json", "class": "logging.StreamHandler"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
        "handlers": {
            "default": {**json_handler, "stream": "ext://sys.stderr"},
            "access": {**json_handler, "stream": "ext://sys.stdout"},
        },
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": level.upper(), "propagate": False},
            "uvicorn.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
        },
        "root": {"handlers": ["default"], "level": level.upper()},
    }


def use_json_logs() -> None:
    """Switch the handlers already installed (uvicorn's, the root's) to JSON lines, for servers
    started by ``uvicorn`` itself with ``JOBCAST_LOG_FORMAT=json``. Lines written before the
    application started keep uvicorn's format."""
    root = logging.getLogger()
    if not root.handlers:  # jobcast's own loggers would otherwise print bare messages
        root.addHandler(logging.StreamHandler())
        root.setLevel(logging.INFO)
    for name in ("", "uvicorn", "uvicorn.access", "uvicorn.error"):
        for handler in logging.getLogger(name).handlers:
            if not isinstance(handler.formatter, JsonFormatter):
                handler.setFormatter(JsonFormatter())
    logging.captureWarnings(True)  # warnings are log lines too, not bare text on stderr
