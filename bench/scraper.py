"""A Prometheus-like scraper in a process of its own (the ``-scraped`` row).

A module of its own, not a function of ``__main__``: a spawned process imports its target by
module name, and ``python -m bench``'s ``__main__`` cannot be imported again by name.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import time
from collections.abc import Iterator
from typing import Any

from bench.report import Figures

INTERVAL = 0.2


def scrape_forever(url: str, stop: Any, scrapes: Any) -> None:
    import urllib.request

    while True:
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=5) as response:
            response.read()
            with scrapes.get_lock():
                scrapes.value += 1
        if stop.wait(INTERVAL):
            return


@contextlib.contextmanager
def scraping(url: str, first_within: float = 10.0) -> Iterator[Figures]:
    """Scrape ``url`` every 200 ms while the block runs (from its first scrape on); the yielded
    figures get ``scrapes``.

    Raises if no scrape succeeded: a row that claims the cost of scraping must have scraped.
    """
    ctx = multiprocessing.get_context("spawn")
    stop, scrapes = ctx.Event(), ctx.Value("i", 0)
    scraper = ctx.Process(target=scrape_forever, args=(url, stop, scrapes), daemon=True)
    scraper.start()
    deadline = time.monotonic() + first_within
    while not scrapes.value and scraper.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)  # the scraper's first read: another process's state, polled
    figures: Figures = {}
    try:
        yield figures
    finally:
        stop.set()
        scraper.join(10)
    figures["scrapes"] = float(scrapes.value)
    if not scrapes.value:
        raise RuntimeError(f"the scraper never read {url} (exit code {scraper.exitcode})")
