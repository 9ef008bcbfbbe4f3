"""Live reads of output streams (long-poll, SSE) held at once: bounded per subject and in all,
with the same limits as event streams (``max_streams_per_subject``, ``max_streams_total``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from jobcast.errors import RateLimited


class LiveReads:
    def __init__(self, per_subject: int, total: int) -> None:
        self.per_subject = per_subject
        self.total = total
        self._held: dict[str, int] = {}
        self._count = 0

    @contextlib.contextmanager
    def hold(self, subject: str) -> Iterator[None]:
        """One live read by ``subject`` (``""``: anonymous) while the block runs; 429 past
        a limit."""
        if self._count >= self.total:
            raise RateLimited("too many live stream reads here; retry shortly", retry_after=1)
        if self._held.get(subject, 0) >= self.per_subject:
            raise RateLimited(
                f"at most {self.per_subject} live stream reads at once", retry_after=1
            )
        self._held[subject] = self._held.get(subject, 0) + 1
        self._count += 1
        try:
            yield
        finally:
            self._count -= 1
            left = self._held[subject] - 1
            if left:
                self._held[subject] = left
            else:
                del self._held[subject]
