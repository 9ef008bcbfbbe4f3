"""Keep credentials out of logs: ``?token=`` and ``?ticket=`` values are redacted."""

from __future__ import annotations

import logging
import re

_SECRET_PARAMS = re.compile(r"(?<=[?&])(token|ticket|access_token)=[^&\s\"]*", re.IGNORECASE)


def redact(text: str) -> str:
    return _SECRET_PARAMS.sub(r"\1=REDACTED", text)


class RedactSecrets(logging.Filter):
    """Rewrites log records (uvicorn's access log passes the path as an argument)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        return True


def install_log_redaction(*logger_names: str) -> None:
    """Add the filter to the access and error loggers, once (it is idempotent)."""
    for name in logger_names or ("uvicorn.access", "uvicorn.error", "jobcast"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactSecrets) for f in logger.filters):
            logger.addFilter(RedactSecrets())
