"""Garbage-collector settings for the serving process of ``jobcast serve``.

A server holding thousands of streams keeps a large, stable heap of connection objects, and
every write allocates a few short-lived container objects (futures, messages, lists). With
CPython's defaults, young collections run every 700 allocations and promote whatever happens
to be alive (a waiting subscriber's future, say) to the old generation; every 25% of growth
there triggers a full collection that walks the whole heap, startup modules included: about
150 ms per full collection at 5,000 streams, a latency spike for every subscriber. Measured in
the benchmark's fan-out scenario (5,000 subscribers): server CPU -40% and p99 -40% with the
settings below (the numbers in docs/benchmarks.md are with them).

G1. ``gc.freeze()`` after startup: the imported modules and the built app never change and
    are never garbage; frozen, they are never walked again.
G2. Young collections every 20,000 allocations instead of 700, the middle generation every 5
    of them instead of 10: short-lived objects die by reference counting before a collection
    sees them, so far fewer are promoted and full collections become rare, while the middle
    generation stays small enough to collect in tens of milliseconds. (50,000 and 10 made a
    wave of new connections pile up there: one 300 ms pause, measured with ``gc.callbacks``,
    and a paced fan-out's p99 went from 120 ms to 390 ms.) Cyclic garbage still goes; it
    waits a little longer (a few MB).

Only ``jobcast serve`` calls this: a library should not change its host process's collector
(an app that embeds jobcast can call :func:`tune_for_serving` itself).
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD, MIDDLE_THRESHOLD = 20_000, 5  # G2


def tune_for_serving() -> None:
    """Apply G1 and G2; call once, after the app is built and before serving."""
    gc.collect()
    gc.freeze()  # G1
    old = gc.get_threshold()[2]
    gc.set_threshold(YOUNG_THRESHOLD, MIDDLE_THRESHOLD, old)  # G2
