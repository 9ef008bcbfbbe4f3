"""``jobcast serve``'s collector settings (server/ops/gc_tuning.py), in a process of their own."""

from __future__ import annotations

import subprocess
import sys

from jobcast.server.ops.gc_tuning import MIDDLE_THRESHOLD, YOUNG_THRESHOLD

PROBE = """
import gc
from jobcast.server.app import create_app
from jobcast.server.ops.gc_tuning import tune_for_serving
before = gc.get_freeze_count()
tune_for_serving()
print(before, gc.get_freeze_count(), *gc.get_threshold()[:2])
"""


def test_startup_objects_are_frozen_and_young_collections_are_rarer() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True
    )
    before, frozen, young, middle = map(int, result.stdout.split())
    assert before == 0 and frozen > 10_000  # the imported framework is out of the collector's way
    assert (young, middle) == (YOUNG_THRESHOLD, MIDDLE_THRESHOLD)
