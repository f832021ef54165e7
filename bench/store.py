"""The API's write path in-process: CPU per stored message of the worker's real output.

Run ``python bench/store.py [--years 2] [--batch 500] [--repeat 3] [--postgresql]``.

The API stores every assessment and escalation the worker publishes. In a deployment on
one machine it shares the cores with ingest and the worker, so its CPU per message decides
how much of the machine the live path keeps (``bench/pipeline.py``'s (b) "with the API").
This benchmark isolates that cost:

1. the demo's Northumbria year (synthetic callers) is run through the detector for
   ``--years`` consecutive years, each with its own ids and callers (as ``bench/pipeline.py``
   posts them); every assessment and escalation it issues becomes the JSON payload the
   worker would publish, decoded as the API's consumer decodes it;
2. the messages are stored by ``services.api.consumer.store_batch`` in batches of
   ``--batch`` in the order the worker issued them, into a fresh, migrated database: SQLite
   in a temporary directory by default; with ``--postgresql``, a database of its own on
   127.0.0.1:5432 (``asvat_bench_<random>``, trust authentication as the tests use),
   created for each run and dropped after it (not a schema of the tests' ``test``
   database, whose advisory locks the tests share);
3. it prints, per run, process CPU time and wall time per message, and the same for the
   assessments alone (a second fresh database, the escalations left out): the difference
   is what the escalations cost, per escalation. ``--repeat`` runs of each, taken in
   turns (the machine is shared); the medians, and the median of the turns' differences.

Process CPU includes SQLite's own work (it runs in this process) but not PostgreSQL's.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.append(str(Path(__file__).resolve().parent))

from machine import cpu_model  # noqa: E402
from pipeline import pseudonymised, raw_events  # noqa: E402

from asvat.contracts import decode_incidents, dumps_json, loads_json  # noqa: E402
from asvat.domain.detector import Detector  # noqa: E402
from asvat.domain.policy import default_policy  # noqa: E402
from asvat.settings import TOPIC_ASSESSMENTS, TOPIC_ESCALATIONS  # noqa: E402
from services.api.consumer import Message, store_batch  # noqa: E402
from services.api.db import make_engine, make_writer_factory  # noqa: E402
from services.api.migrate import upgrade  # noqa: E402
from services.repeat_detector.messages import (  # noqa: E402
    assessment_message,
    escalation_message,
)

EVENTS_PER_YEAR = 40_000
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def worker_output(years: int) -> list[Message]:
    """What the worker publishes on the two topics the API reads, in the order issued."""
    detector = Detector(default_policy())
    messages: list[Message] = []
    now = time.time_ns() // 1000
    for year in range(years):
        events = raw_events(EVENTS_PER_YEAR, f"S{year}-", year)
        raws = [value for _key, value in pseudonymised(events)]
        for item in decode_incidents(raws):
            if isinstance(item, Exception):
                raise item
            outcome = detector.apply(item[1])
            for assessment in outcome.assessments:
                payload = assessment_message(assessment, now)
                messages.append(_message(TOPIC_ASSESSMENTS, len(messages), payload))
            for escalation in outcome.escalations:
                payload = escalation_message(escalation, now)
                messages.append(_message(TOPIC_ESCALATIONS, len(messages), payload))
    return messages


def _message(topic: str, offset: int, payload: dict[str, object]) -> Message:
    # Through JSON, as the consumer gets it: fresh objects, strings where the wire has them.
    return Message(topic, 0, offset, loads_json(dumps_json(payload)))


@dataclass(frozen=True)
class Run:
    messages: int
    cpu_s: float
    wall_s: float


def store_all(postgresql: bool, messages: Sequence[Message], batch: int) -> Run:
    """Store ``messages`` into a fresh database in batches; CPU and wall time taken."""
    with tempfile.TemporaryDirectory(prefix="asvat-bench-store-") as work, _database(
        postgresql, work
    ) as url:
        engine = make_engine(url)
        try:
            upgrade(engine)
            factory = make_writer_factory(engine)
            gc.collect()
            cpu, wall = time.process_time(), time.perf_counter()
            for start in range(0, len(messages), batch):
                rejected = store_batch(factory, messages[start:start + batch])
                if rejected:
                    raise RuntimeError(f"messages set aside: {rejected[:3]}")
            return Run(len(messages), time.process_time() - cpu, time.perf_counter() - wall)
        finally:
            engine.dispose()


@contextlib.contextmanager
def _database(postgresql: bool, work: str) -> Iterator[str]:
    """The URL of an empty database: SQLite in ``work``, or a PostgreSQL database made
    for the run and dropped after it."""
    if not postgresql:
        yield f"sqlite:///{work}/api.db"
        return
    import psycopg

    name = f"asvat_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def median_run(runs: list[Run]) -> Run:
    return sorted(runs, key=lambda r: r.cpu_s)[len(runs) // 2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--years", type=int, default=2, help="years of the demo stream")
    parser.add_argument("--batch", type=int, default=500, help="messages per transaction")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measure")
    parser.add_argument("--postgresql", action="store_true",
                        help="PostgreSQL on 127.0.0.1:5432 instead of SQLite")
    args = parser.parse_args(argv)

    print(f"{cpu_model()}, {os.cpu_count()} cores, CPython {platform.python_version()}; "
          f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
    messages = worker_output(args.years)
    assessments = [m for m in messages if m.topic == TOPIC_ASSESSMENTS]
    escalations = len(messages) - len(assessments)
    print(f"{len(messages):,} messages: {len(assessments):,} assessments, "
          f"{escalations:,} escalations ({args.years} years of the demo stream)", flush=True)

    # Taken in turns, so that a change in the machine's speed during the benchmark (it is
    # shared) falls on both measures alike, and each escalation's cost is the difference
    # of two runs taken one after the other.
    full_runs: list[Run] = []
    alone_runs: list[Run] = []
    for _ in range(args.repeat):
        full_runs.append(store_all(args.postgresql, messages, args.batch))
        alone_runs.append(store_all(args.postgresql, assessments, args.batch))
    full, alone = median_run(full_runs), median_run(alone_runs)
    differences = sorted(
        (f.cpu_s - a.cpu_s) / escalations * 1e6 for f, a in zip(full_runs, alone_runs, strict=True)
    ) if escalations else [0.0]
    per_escalation = differences[len(differences) // 2]
    database = "PostgreSQL" if args.postgresql else "SQLite"

    def row(label: str, run: Run, runs: list[Run]) -> str:
        spread = ", ".join(f"{r.cpu_s / r.messages * 1e6:.0f}" for r in runs)
        return (f"| {label} | {run.messages:,} | {run.cpu_s / run.messages * 1e6:.0f} µs "
                f"(runs {spread}) | {run.wall_s / run.messages * 1e6:.0f} µs |")

    print()
    print(f"| {database}, batches of {args.batch} | messages | CPU per message "
          "| wall per message |")
    print("|---|---|---|---|")
    print(row("worker output (assessments and escalations)", full, full_runs))
    print(row("assessments alone", alone, alone_runs))
    print(f"| escalations: the difference, per escalation | {escalations:,} | "
          f"{per_escalation:.0f} µs (pairs {', '.join(f'{d:.0f}' for d in differences)}) "
          "| — |")
    print(f"\nmedian of {args.repeat} runs by CPU time; "
          f"{statistics.fmean(r.cpu_s for r in full_runs):.1f} CPU-s per full run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
