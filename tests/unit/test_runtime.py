"""The worker's collector settings (asvat/runtime.py), in a child process: they are
process-wide and must not leak into the test run."""

from __future__ import annotations

import json
import subprocess
import sys

from asvat.runtime import THRESHOLDS, GcPauses


def test_tune_gc_freezes_start_up_objects_and_sets_the_thresholds() -> None:
    code = (
        "import gc, json; from asvat.runtime import tune_gc; tune_gc();"
        "print(json.dumps([gc.get_threshold(), gc.get_freeze_count()]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    thresholds, frozen = json.loads(out.stdout)
    assert tuple(thresholds) == THRESHOLDS
    assert frozen > 1000  # the modules and everything alive at start-up


def test_watch_gc_records_each_collection_under_its_generation() -> None:
    # In a child: the hook is process-wide. A full collection over a few hundred thousand
    # tracked objects must land under generation 2, with a pause that is not zero.
    code = (
        "import gc, json; from asvat.runtime import GC_PAUSES, watch_gc; watch_gc(); watch_gc();"
        "keep = [[i] for i in range(300_000)]; gc.collect(2); gc.collect(0);"
        "fam = next(iter(GC_PAUSES.collect()));"
        "hooks = sum(1 for c in gc.callbacks if c == GC_PAUSES.callback);"
        "print(json.dumps([hooks, [[s.name, s.labels, s.value] for s in fam.samples]]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    hooks, samples = json.loads(out.stdout)
    assert hooks == 1  # installed twice, hooked once
    counts = {
        labels["generation"]: value
        for name, labels, value in samples
        if name == "asvat_process_gc_pause_seconds_count"
    }
    sums = {
        labels["generation"]: value
        for name, labels, value in samples
        if name == "asvat_process_gc_pause_seconds_sum"
    }
    assert counts["2"] >= 1
    assert counts["0"] >= 1
    assert sums["2"] > 0


def test_gc_pauses_buckets_are_cumulative_and_end_at_the_count() -> None:
    pauses = GcPauses()
    for seconds in (0.0005, 0.003, 0.003, 0.2, 7.0):
        pauses.observe(2, seconds)
    pauses.observe(0, 0.0001)
    family = next(iter(pauses.collect()))
    buckets = {
        float(s.labels["le"]): s.value
        for s in family.samples
        if s.name.endswith("_bucket") and s.labels["generation"] == "2"
    }
    assert buckets[0.001] == 1
    assert buckets[0.0025] == 1
    assert buckets[0.005] == 3
    assert buckets[0.25] == 4
    assert buckets[2.5] == 4
    assert buckets[float("inf")] == 5
    count = {s.labels["generation"]: s.value for s in family.samples if s.name.endswith("_count")}
    assert count == {"0": 1, "1": 0, "2": 5}
    total = next(s.value for s in family.samples
                 if s.name.endswith("_sum") and s.labels["generation"] == "2")
    assert abs(total - 7.2065) < 1e-9
