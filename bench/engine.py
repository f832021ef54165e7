"""Benchmark of the detection engine in-process (a benchmark, not a timed test).

Run ``python bench/engine.py [--years N] [--retained 1000000] [--quick]``. It prints one
table with:

* **throughput** — events per second on a realistic mix: the shipped Northumbria 2022
  points with the demo's synthetic callers, pseudonymised with a fixed HMAC key, under the
  default policy. The year is repeated ``--years`` times, each copy shifted by whole years,
  with its own incident ids and its own callers (victim keys re-keyed per copy), and
  delivered in ``reported_at`` order. Three figures, so that each part is shown honestly:
  *engine only* (``DetectionEngine.apply`` on events decoded before the clock starts),
  *detector* (``Detector.apply``: the engine plus risk, case review, integrity and the
  escalation lifecycle, what the worker runs) and *decode + detector* (the worker's path:
  each batch of 500 JSON messages decoded by ``decode_incidents``, one PROJ call for its
  WGS84 points, then each event applied).
* **decode** — microseconds per event of ``decode_incidents`` (batch), ``decode_incident``
  (one message) and the path before them (``json.loads`` + ``IncidentEvent.from_wire``),
  with ``json.loads`` alone.

Every measure runs ``--repeat`` times (default 3), each on a fresh engine after a garbage
collection; the table gives the median by wall clock, by process CPU time (steadier when
other work shares the machine) and the range of the runs.
* **memory** — resident-set growth (``VmRSS`` of ``/proc/self/status``) per retained
  incident once the engine holds ``--retained`` incidents. The policy is the default one
  with ``max_lateness`` raised so that nothing is pruned. It runs in a fresh child process
  (memory freed by the other measures would otherwise be reused and hide growth), which
  reads the base year from a file line by line and makes the events lazily, one alive at a
  time, each decoded from JSON (so every string is a fresh object, as in the worker).

Targets (2-core machine): at least 100,000 events/s and at most 1 KiB per retained incident.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.append(str(Path(__file__).resolve().parents[1]))  # when asvat is not installed

from machine import cpu_model  # bench/machine.py (scripts run from bench/)

from asvat.contracts import decode_incident, decode_incidents
from asvat.demo import northumbria_incidents
from asvat.domain.detector import Detector
from asvat.domain.engine import DetectionEngine
from asvat.domain.identity import pseudonymise_event
from asvat.domain.incident import IncidentEvent
from asvat.domain.policy import Policy, default_policy
from asvat.domain.timeutil import format_timestamp, parse_timestamp
from asvat.runtime import tune_gc

TARGET_EVENTS_PER_S = 100_000
TARGET_BYTES_PER_INCIDENT = 1024
HMAC_KEY = b"asvat-bench-key-0123456789abcdef"
BASE_YEAR = 2022
DAY = 86_400 * 1_000_000


# --------------------------------------------------------------------------- workload


def base_year(seed: int) -> list[dict[str, Any]]:
    """One year of pseudonymised ``incident.v1`` events (the demo's Northumbria mix)."""
    return [pseudonymise_event(e, HMAC_KEY, "k1") for e in northumbria_incidents(seed=seed)]


def year_offset(copy: int) -> int:
    """Microseconds from 1 January of the base year to 1 January ``copy`` years later."""
    start = datetime(BASE_YEAR, 1, 1, tzinfo=UTC)
    return int((datetime(BASE_YEAR + copy, 1, 1, tzinfo=UTC) - start).total_seconds()) * 10**6


def shifted(event: dict[str, Any], copy: int, offset: int) -> dict[str, Any]:
    """``event`` moved ``copy`` whole years on, with its own ids and its own callers."""
    if copy == 0:
        return event
    out = dict(event)
    prefix = f"NB-{BASE_YEAR + copy}-"
    out["event_id"] = prefix + event["event_id"][8:]
    out["incident_id"] = prefix + event["incident_id"][8:]
    out["occurred_at"] = format_timestamp(parse_timestamp(event["occurred_at"]) + offset)
    out["reported_at"] = format_timestamp(parse_timestamp(event["reported_at"]) + offset)
    if event.get("victim_key"):
        # Another year, another population of callers (same sizes and repeat pattern).
        out["victim_key"] = hashlib.sha256(f"{event['victim_key']}|{copy}".encode()).hexdigest()
    return out


def copies_of(
    year: Callable[[], Iterable[dict[str, Any]]], copies: int
) -> Iterator[dict[str, Any]]:
    """The events of ``year()`` repeated ``copies`` times, each copy a year later."""
    for copy in range(copies):
        offset = year_offset(copy)
        for event in year():
            yield shifted(event, copy, offset)


def read_year(path: Path) -> Iterator[dict[str, Any]]:
    """The events of an NDJSON file, one decoded at a time."""
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            yield json.loads(line)


def no_pruning(policy: Policy, years: int) -> Policy:
    """``policy`` with ``max_lateness`` long enough that nothing is ever pruned."""
    return replace(policy, max_lateness=(years + 2) * 366 * DAY)


# --------------------------------------------------------------------------- measures


def rss_bytes() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def machine() -> str:
    model = cpu_model()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{model}, {os.cpu_count()} cores ({usable} usable), {platform.system()} "
        f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}; "
        f"load average {load}"
    )


BATCH = 500  # the worker's batch size (services/repeat_detector)


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _timed(run: Callable[[], None]) -> tuple[float, float]:
    """Wall and process-CPU seconds of ``run()`` under the worker's collector settings
    (``asvat.runtime.tune_gc``: a collection, then what is alive frozen). The freeze also
    keeps this benchmark's own inputs (every event decoded up front, which a worker never
    holds) out of the collections the measured code causes."""
    tune_gc()
    started, cpu_started = time.perf_counter(), time.process_time()
    try:
        run()
    finally:
        gc.unfreeze()
    return time.perf_counter() - started, time.process_time() - cpu_started


def throughput(base: list[dict[str, Any]], years: int, repeat: int) -> dict[str, Any]:
    """Each measure ``repeat`` times; the medians (wall and process CPU) are reported."""
    messages = [
        json.dumps(event, separators=(",", ":")).encode()
        for event in copies_of(lambda: base, years)
    ]
    # Delivery order: by reported_at (stable: pairs keep opened before closed).
    order = sorted(
        range(len(messages)), key=lambda i: parse_timestamp(json.loads(messages[i])["reported_at"])
    )
    messages = [messages[i] for i in order]
    count = len(messages)
    batches = [messages[i : i + BATCH] for i in range(0, count, BATCH)]
    events = [IncidentEvent.from_wire(json.loads(m)) for m in messages]
    policy = default_policy()
    figures: dict[str, list[tuple[float, float]]] = {}
    counts: dict[str, int] = {}

    def measure(name: str, run: Callable[[], None]) -> None:
        figures.setdefault(name, []).append(_timed(run))

    def engine_only() -> None:
        engine = DetectionEngine(policy)
        assessments = escalations = 0
        for event in events:
            outcome = engine.apply(event)
            assessments += len(outcome.assessments)
            escalations += len(outcome.escalations)
        counts.update(
            assessments=assessments,
            escalations=escalations,
            retained_end=engine.retained_incidents,
        )

    def detector() -> None:
        detector = Detector(policy)
        for event in events:
            detector.apply(event)

    def decode_and_detect() -> None:
        # What the worker does per batch: decode it (one PROJ call), apply each event.
        detector = Detector(policy)
        for batch in batches:
            for decoded in decode_incidents(batch):
                assert not isinstance(decoded, Exception)
                detector.apply(decoded[1])

    # Decoding is timed with the results dropped, as a worker hands each event on; keeping
    # them all here would add collector work that is no part of it.
    def json_loads() -> None:
        for message in messages:
            json.loads(message)

    def decode_per_event() -> None:  # the path before this benchmark's work: json + from_wire
        for message in messages:
            IncidentEvent.from_wire(json.loads(message))

    def decode_one() -> None:
        for message in messages:
            decode_incident(message)

    def decode_batches() -> None:
        for batch in batches:
            decode_incidents(batch)

    for _ in range(repeat):
        measure("json_loads", json_loads)
        measure("decode_per_event", decode_per_event)
        measure("decode_one", decode_one)
        measure("decode_batch", decode_batches)
        measure("engine", engine_only)
        measure("detector", detector)
        measure("decode_detector", decode_and_detect)
    medians = {
        name: (_median([w for w, _ in runs]), _median([c for _, c in runs]))
        for name, runs in figures.items()
    }
    return {
        "events": count,
        "incidents": len({e.incident_id for e in events}),
        "repeat": repeat,
        "us": {name: (w / count * 1e6, c / count * 1e6) for name, (w, c) in medians.items()},
        "spread": {
            name: (min(w for w, _ in runs) / count * 1e6, max(w for w, _ in runs) / count * 1e6)
            for name, runs in figures.items()
        },
        **counts,
    }


def memory(base_file: Path, incidents_per_year: int, retained: int) -> dict[str, Any]:
    """Runs in a child process (see the module docstring)."""
    years = -(-retained // incidents_per_year)
    engine = DetectionEngine(no_pruning(default_policy(), years))

    def events() -> Iterator[IncidentEvent]:
        """The first ``retained`` incidents, one decoded event alive at a time."""
        started = 0
        for data in copies_of(lambda: read_year(base_file), years):
            if data["sequence"] == 0:
                started += 1
                if started > retained:
                    return
            yield IncidentEvent.from_wire(data)

    gc.collect()
    before = rss_bytes()
    started = time.perf_counter()
    for event in events():
        engine.apply(event)
    build_s = time.perf_counter() - started
    gc.collect()
    after = rss_bytes()
    held = engine.retained_incidents
    return {
        "retained": held,
        "years": years,
        "rss_before": before,
        "rss_after": after,
        "per_incident": (after - before) / held,
        "build_s": build_s,
    }


def memory_in_child(base: list[dict[str, Any]], retained: int) -> dict[str, Any]:
    incidents_per_year = sum(1 for e in base if e["sequence"] == 0)
    with tempfile.TemporaryDirectory(prefix="asvat-bench-") as folder:
        base_file = Path(folder) / "year.ndjson"
        with base_file.open("w", encoding="utf-8") as out:
            for event in base:
                out.write(json.dumps(event, separators=(",", ":")) + "\n")
        child = subprocess.run(
            [
                sys.executable,
                __file__,
                "--memory-child",
                str(base_file),
                str(incidents_per_year),
                str(retained),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
    result: dict[str, Any] = json.loads(child.stdout)
    return result


# --------------------------------------------------------------------------- report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--years", type=int, default=3, help="copies of the year to time")
    parser.add_argument("--retained", type=int, default=1_000_000, help="incidents to hold")
    parser.add_argument("--seed", type=int, default=2022, help="seed of the synthetic parts")
    parser.add_argument(
        "--quick", action="store_true", help="1 year and 100,000 retained incidents"
    )
    parser.add_argument("--skip-memory", action="store_true", help="throughput only")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measure (median)")
    parser.add_argument("--memory-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        path, per_year, count = args.memory_child
        print(json.dumps(memory(Path(path), int(per_year), int(count))))
        return 0
    years = 1 if args.quick else args.years
    retained = 100_000 if args.quick else args.retained

    print(f"machine: {machine()}", flush=True)
    print("building the base year (demo generator + pseudonymisation)...", flush=True)
    base = base_year(args.seed)
    t = throughput(base, years, args.repeat)
    m = None if args.skip_memory else memory_in_child(base, retained)

    us = t["us"]  # name -> (wall µs/event, process-CPU µs/event), medians of the runs
    spread = t["spread"]

    def rate_row(label: str, name: str, target: bool = False) -> tuple[str, str, str, str]:
        wall, cpu = us[name]
        low, high = spread[name]
        value = f"{1e6 / wall:,.0f} events/s ({wall:.1f} µs)"
        ratio = f"{1e6 / wall / TARGET_EVENTS_PER_S:.2f}x target; " if target else ""
        return (
            label,
            value,
            f">= {TARGET_EVENTS_PER_S:,}" if target else "",
            f"{ratio}CPU {1e6 / cpu:,.0f}/s; runs {low:.1f}-{high:.1f} µs",
        )

    def us_row(label: str, name: str) -> tuple[str, str, str, str]:
        wall, cpu = us[name]
        low, high = spread[name]
        return (label, f"{wall:.1f} µs/event", "", f"CPU {cpu:.1f} µs; runs {low:.1f}-{high:.1f}")

    enrich = us["detector"][0] - us["engine"][0]
    rows = [
        rate_row("engine only (DetectionEngine.apply)", "engine", target=True),
        rate_row("detector (Detector.apply)", "detector"),
        (
            "  of which risk, case review, integrity, lifecycle",
            f"{enrich:.1f} µs/event",
            "",
            "detector minus engine",
        ),
        rate_row("decode + detector (per batch of 500)", "decode_detector", target=True),
        us_row("decode, batch (decode_incidents)", "decode_batch"),
        us_row("decode, one (decode_incident)", "decode_one"),
        us_row("decode, before (json.loads + from_wire)", "decode_per_event"),
        us_row("  of which json.loads", "json_loads"),
    ]
    if m is not None:
        rows.append(
            (
                "memory per retained incident (RSS)",
                f"{m['per_incident']:,.0f} B",
                f"<= {TARGET_BYTES_PER_INCIDENT:,} B",
                f"{m['per_incident'] / TARGET_BYTES_PER_INCIDENT:.2f}x target",
            )
        )
    widths = [
        max(len(r[i]) for r in [("measure", "value", "target", "ratio"), *rows]) for i in range(4)
    ]
    print()
    for row in [("measure", "value", "target", "ratio"), tuple("-" * w for w in widths), *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    print()
    print(
        f"throughput workload: {t['events']:,} events, {t['incidents']:,} incidents "
        f"({years} x the Northumbria 2022 year, seed {args.seed}), default policy; "
        f"{t['assessments']:,} assessments and {t['escalations']:,} escalations issued; "
        f"{t['retained_end']:,} incidents retained at the end; medians of {t['repeat']} runs "
        f"each (wall clock; CPU = process CPU time, less sensitive to other load)"
    )
    if m is not None:
        print(
            f"memory workload: {m['retained']:,} retained incidents ({m['years']} x the year), "
            f"default rules, max_lateness raised so nothing is pruned; measured in a fresh "
            f"child process, VmRSS {m['rss_before'] / 2**20:,.0f} MiB -> "
            f"{m['rss_after'] / 2**20:,.0f} MiB; events made lazily by a generator from a "
            f"file (one alive at a time); built in {m['build_s']:.0f} s"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
