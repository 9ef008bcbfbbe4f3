"""The thread pool of sync handlers, and the threads that outlive their jobs (lifecycle R2).

A thread cannot be stopped: a sync handler that never calls ``check_cancelled()`` or
``progress()`` keeps running after its job timed out or was cancelled. The pool holds ``spare``
threads beyond the job concurrency for such threads, so the jobs after one still get a
thread at once, instead of waiting inside the pool while they are reported ``running``. Once
every spare is taken, an outliving thread keeps its job's slot until it returns, so the
jobs after it wait as ``queued``. Either way a warning names the job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

logger = logging.getLogger("jobcast.jobs")

THREAD_PREFIX = "jobcast-job"


def handler_threads_alive() -> int:
    """How many sync handlers' threads are still running, in any pool of this process."""
    return sum(t.name.startswith(THREAD_PREFIX) and t.is_alive() for t in threading.enumerate())


class HandlerThreads:
    """``submit`` sync handlers; tell ``outlived`` of a thread whose job ended without it."""

    def __init__(self, concurrency: int, spare: int, release_slot: Callable[[], None]) -> None:
        self._executor = ThreadPoolExecutor(concurrency + spare, thread_name_prefix=THREAD_PREFIX)
        self._spare = spare
        self._release_slot = release_slot
        #: Threads of ended jobs still running, each with a spare thread in its place.
        self.abandoned = 0
        self._slot_kept: set[str] = set()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        return self._executor.submit(fn, *args)

    def outlived(self, job_id: str, work: Future[Any]) -> None:
        """The thread running ``work`` goes on after its job ended."""
        loop = asyncio.get_running_loop()
        keeps_slot = self.abandoned >= self._spare
        if keeps_slot:
            self._slot_kept.add(job_id)
        else:
            self.abandoned += 1
        logger.warning(
            "job %s: its handler ignores cancellation and its thread is still running; %s",
            job_id,
            "the job's slot stays taken until it returns"
            if keeps_slot
            else f"a spare thread takes its place ({self.abandoned} in use)",
        )

        def returned(_: Future[Any]) -> None:  # in the handler's thread
            with contextlib.suppress(RuntimeError):  # the loop is gone: nothing to give back
                loop.call_soon_threadsafe(self._returned, keeps_slot)

        work.add_done_callback(returned)

    def keeps_slot(self, job_id: str) -> bool:
        """Whether the ended job's slot is released by its thread's return, not by its lifecycle."""
        if job_id not in self._slot_kept:
            return False
        self._slot_kept.discard(job_id)
        return True

    def _returned(self, kept_slot: bool) -> None:
        if kept_slot:
            self._release_slot()
        else:
            self.abandoned -= 1

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
