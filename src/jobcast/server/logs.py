"""Keep credentials out of logs: ``?token=`` and ``?ticket=`` values are redacted, and so are
passwords in the service URLs ``jobcast serve`` prints."""

from __future__ import annotations

import logging
import re
from urllib.parse import urlsplit, urlunsplit

_SECRET_PARAMS = re.compile(r"(?<=[?&])(token|ticket|access_token)=[^&\s\"]*", re.IGNORECASE)
_PASSWORD_PARAM = re.compile(r"(?<=[?&])password=[^&]*", re.IGNORECASE)


def redact(text: str) -> str:
    return _SECRET_PARAMS.sub(r"\1=REDACTED", text)


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
    """Add the filter to the access and error loggers, once (it is idempotent)."""
    for name in logger_names or ("uvicorn.access", "uvicorn.error", "jobcast"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactSecrets) for f in logger.filters):
            logger.addFilter(RedactSecrets())
