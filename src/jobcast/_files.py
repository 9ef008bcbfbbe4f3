"""Files in the data directory that only this user may read.

The event history and the job store hold what was published and submitted, which can be as
private as the JWT secret beside them, so they are created with mode 0600 like it. SQLite gives
its ``-wal`` and ``-shm`` files the mode of the database file, so creating that one is enough.
An existing file keeps the mode it has: an operator may have chosen it. Uploaded files are
created 0600 in a 0700 directory for the same reason.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO


def create_private(path: Path) -> None:
    """Create ``path`` empty with mode 0600 unless it exists (then leave it alone)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.close(fd)


def open_private(path: Path) -> BinaryIO:
    """A new file at ``path`` (which must not exist), mode 0600, open for writing bytes."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    return os.fdopen(fd, "wb")


def make_private_dir(path: Path) -> None:
    """Create the directory ``path`` with mode 0700 unless it exists."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
