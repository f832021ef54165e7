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

import gc

#: (young, middle, old) thresholds: see :func:`gc.set_threshold`.
THRESHOLDS = (50_000, 20, 10)


def tune_gc() -> None:
    """Freeze what is alive now and set :data:`THRESHOLDS` (call once, after start-up)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
