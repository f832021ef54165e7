"""The worker's collector settings (asvat/runtime.py), in a child process: they are
process-wide and must not leak into the test run."""

from __future__ import annotations

import json
import subprocess
import sys

from asvat.runtime import THRESHOLDS


def test_tune_gc_freezes_start_up_objects_and_sets_the_thresholds() -> None:
    code = (
        "import gc, json; from asvat.runtime import tune_gc; tune_gc();"
        "print(json.dumps([gc.get_threshold(), gc.get_freeze_count()]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    thresholds, frozen = json.loads(out.stdout)
    assert tuple(thresholds) == THRESHOLDS
    assert frozen > 1000  # the modules and everything alive at start-up
