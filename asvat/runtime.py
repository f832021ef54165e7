"""Garbage-collector settings for ASVAT's long-running processes.

The worker holds hundreds of thousands of long-lived objects (the retained incidents) and
allocates a few short-lived ones per event. CPython's default collector starts a young
collection every 700 net allocations and, as the heap grows, full ones that walk every
long-lived object; ``bench/engine.py`` measured that as about a tenth of the engine's
time. :func:`tune_gc` moves what exists at start-up (modules, the policy) out of the
collector's sight and collects the young generation every 50,000 allocations. Cyclic
garbage is still collected, only less often; reference counting, which frees almost
everything here, is unaffected.

Ingest and the API call it too: both allocate thousands of short-lived objects per request
or stored batch (the API's ORM rows, ingest's parsed records), and the default thresholds
ran a collection every few hundred of them: 8 % of the API's CPU while it
stored the worker's output (``bench/pipeline.py`` (b)).
"""

from __future__ import annotations

import bisect
import gc
import threading
import time
from collections.abc import Iterator

from prometheus_client.core import HistogramMetricFamily

#: (young, middle, old) thresholds: see :func:`gc.set_threshold`.
THRESHOLDS = (50_000, 20, 10)


def tune_gc() -> None:
    """Freeze what is alive now and set :data:`THRESHOLDS` (call once, after start-up)."""
    watch_gc()
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)


#: Upper bounds (seconds) of the pause histogram's buckets.
PAUSE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class GcPauses:
    """How long the cyclic garbage collector stops this process, by generation.

    A full collection walks every tracked object, and the worker holds millions: the pause
    it makes is a direct delay to every event in flight, which neither CPU nor batch timings
    single out. :func:`watch_gc` installs one instance for the process (a ``gc.callbacks``
    hook: two clock reads per collection); each service's metrics registry registers
    :data:`GC_PAUSES` as a collector, exposed as ``asvat_process_gc_pause_seconds``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = [[0] * (len(PAUSE_BUCKETS) + 1) for _ in range(3)]
        self._sums = [0.0] * 3
        self._started: float | None = None

    def callback(self, phase: str, info: dict[str, int]) -> None:
        """The ``gc.callbacks`` hook."""
        if phase == "start":
            self._started = time.perf_counter()
            return
        started, self._started = self._started, None
        if started is None:
            return
        self.observe(info.get("generation", 2), time.perf_counter() - started)

    def observe(self, generation: int, seconds: float) -> None:
        generation = min(max(generation, 0), 2)
        with self._lock:
            self._counts[generation][bisect.bisect_left(PAUSE_BUCKETS, seconds)] += 1
            self._sums[generation] += seconds

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(
            "asvat_process_gc_pause_seconds",
            "Time the cyclic garbage collector stopped this process, by generation (0 and 1: "
            "young collections; 2: full collections, which walk every long-lived object).",
            labels=["generation"],
        )
        with self._lock:
            counts = [list(c) for c in self._counts]
            sums = list(self._sums)
        bounds = (*PAUSE_BUCKETS, float("inf"))
        for generation in range(3):
            running, buckets = 0, []
            for bound, count in zip(bounds, counts[generation], strict=True):
                running += count
                buckets.append((_bound(bound), running))
            family.add_metric([str(generation)], buckets, sums[generation])
        yield family


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(value)


#: The process's one pause recorder (see :func:`watch_gc`).
GC_PAUSES = GcPauses()


def watch_gc() -> None:
    """Record every collection's pause in :data:`GC_PAUSES` (idempotent)."""
    if GC_PAUSES.callback not in gc.callbacks:
        gc.callbacks.append(GC_PAUSES.callback)
