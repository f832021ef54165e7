"""Throughput and latency of the live pipeline on the embedded broker (a benchmark, not a test).

Run ``python bench/pipeline.py [--events 40000] [--replay-events 2000000] [--quick]``. Every
piece is a real process (``bench/pipeline_processes.py``: Tansu, ``asvat ingest``, ``asvat
api``, ``asvat worker``); nothing is mocked. One run prints one table (and the machine line)
so that its ratios compare figures taken under the same load:

* **(a) ceiling** — the incidents topic pre-filled with the ``--events`` first events of the
  Northumbria year (synthetic callers) moved to eight years ago (:func:`first_year`),
  pseudonymised as ingest does; a plain aiokafka consumer reads them and decodes each
  (``json.loads`` + ``IncidentEvent.from_wire``); the median of three reads, each by a new
  consumer.
* **worker alone** — on that pre-filled topic, ``asvat worker`` is started; time from its
  spawn until every incident has an assessment on ``asvat.assessments.v1`` (a cold start:
  process start, group join, rebuild from the topic, then the snapshot it publishes).
* **(b) full path** — as many events of the next year (the demo's callers, times and codes
  made for that year: the stream goes on, it does not repeat) posted to ingest as NDJSON
  batches by several poster processes (an ``ingest`` token), until a consumer in the bench
  has seen an assessment for every incident. Also: when the last 202 came, and the CPU
  seconds each process spent. ``--passes`` passes (3), each with the next year's events:
  the figure is their median. First on the path the issue names (ingest, worker,
  assessments topic; the API not running), then as many passes with the API storing
  everything on the same cores (started between the two, it reads what the first passes
  left; each pass then starts once the API has stored the last, and notes when it did).
  Then a profiled pass with half as many events of the year after while py-spy samples
  ``--profile`` (the worker by default; its top frames are printed below the table).
  Each pass's ratio is to an (a) read just before it (the median of three reads, with the
  pipeline idle), and the passes' figure is the median of those ratios: on a shared
  machine (a) itself moved between 54,000 and 94,000 events/s from one run to the next
  while (b) moved between 8,700 and 10,300, so a ratio to one (a) read at the start of
  the run measured mostly that read.
* **(c) latency** — a steady ``--rate`` events/s for ``--seconds`` s of repeat callers
  (each phone number reports five times within minutes, so the 3rd report raises a victim
  escalation and later ones may upgrade it), one event per request; an SSE client (viewer
  token, its own process) on ``/v1/alerts/stream`` stamps each escalation event; latency =
  its arrival minus the 202 of the event whose ``incident_id`` it names. Split in two: the
  worker's part (202 → the record on ``asvat.escalations.v1``, read by a consumer in the
  bench) and the API's (that record → the SSE client), with the API's own histograms of
  its store and delay over (c) (from its ``/metrics``). ``--latency-only``: (c) alone, on a
  new pipeline with an empty database.
* **(d) replay** — on a fresh broker with a live worker (no ingest, no API: the replay
  bypasses ingest's HTTP), ``--replay-events`` pre-pseudonymised events (the Northumbria
  year repeated, each copy a year later with its own ids and callers, as
  ``bench/engine.py`` does) are written straight onto the incidents topic by a fast
  aiokafka producer in its own process; time from the first write until every incident
  has an assessment.

``--rebuild-only`` instead: a worker started on a topic that already holds
``--replay-events`` events, spawn → ready (a restart of a worker on a national year with no
checkpoint); the checkpoint it then writes; and, killed and restarted with
``--tail-events`` more events on the topic, spawn → ready from that checkpoint.

Load average (1 min) is printed at the start and end of each phase: the machine is shared.
Targets (issue #4): (b)/(a) >= 0.10, (c) p99 <= 250 ms, (d) <= 5 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import http.client
import json
import multiprocessing
import os
import platform
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import phonenumbers
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.append(str(Path(__file__).resolve().parent))  # bench/ (machine.py, engine.py)

from engine import HMAC_KEY, copies_of, year_offset  # noqa: E402
from machine import cpu_model  # noqa: E402

from asvat.demo import northumbria_incidents  # noqa: E402
from asvat.domain.identity import pseudonymise_event  # noqa: E402
from asvat.domain.incident import IncidentEvent  # noqa: E402
from asvat.domain.timeutil import format_timestamp, now_micros, parse_timestamp  # noqa: E402
from asvat.embedded.broker import EmbeddedBroker, ensure_topics  # noqa: E402
from asvat.settings import (  # noqa: E402
    TOPIC_ASSESSMENTS,
    TOPIC_ESCALATIONS,
    TOPIC_INCIDENTS,
    TOPIC_LATE,
)
from bench.pipeline_processes import Pipeline, free_port, wait_for  # noqa: E402

TARGET_RATIO = 0.10
TARGET_P99_MS = 250.0
TARGET_REPLAY_S = 300.0
FULL_REPLAY = 2_000_000
PARTITIONS = 4

Message = tuple[bytes, bytes]  # (key, value)


# --------------------------------------------------------------------------- reporting


def load1() -> float:
    return os.getloadavg()[0]


def machine() -> str:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"{cpu_model()}, {os.cpu_count()} cores ({usable} usable), {platform.system()} "
        f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}"
    )


@dataclass
class Row:
    measure: str
    events: int
    seconds: float
    figure: str
    ratio: str
    target: str
    load: str


class Phase:
    """Times a phase and notes the load average at its start and end."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.load_start = load1()
        self.started = time.monotonic()
        print(f"[{time.strftime('%H:%M:%S')}] {name} (load {self.load_start:.1f})", flush=True)

    def load(self) -> str:
        return f"{self.load_start:.1f} → {load1():.1f}"


def pipeline_cpu(pipeline: Pipeline) -> dict[str, float]:
    """CPU seconds so far of each of the pipeline's processes and its broker."""
    pids = {name: pipeline.pid(name) for name in pipeline.processes}
    broker = pipeline.broker.pid
    if broker is not None:
        pids["broker"] = broker
    return {name: cpu_seconds(pid) for name, pid in pids.items()}


def cpu_split(before: dict[str, float], after: dict[str, float]) -> str:
    """``ingest 3.1, worker-a 9.0, …`` — CPU seconds each process spent between the two."""
    return ", ".join(f"{n} {after[n] - before.get(n, 0.0):.1f}" for n in sorted(after))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- workload


def first_year(passes: int) -> int:
    """The throughput phases' first year, as an offset from the demo's 2022: (a)'s events,
    then a year for each (b) pass without the API, each with it, and the profiled pass, the
    last of them last year. All lie in the past (ingest refuses the future); the passes the
    bench waits for the API to store (the last without it, every one with it) lie within
    the policy's six years of retention (the API deletes older incidents): so at most three
    passes of each."""
    return datetime.now(tz=UTC).year - (2 * passes + 2) - 2022


def raw_events(count: int, prefix: str = "", year: int = 0) -> list[dict[str, Any]]:
    """The first ``count`` raw events of the Northumbria year (synthetic callers), with
    ``prefix`` on their ids. ``year``: that many years from 2022 (earlier when negative),
    with that year's own callers, times and codes (the demo's seed + ``year``), so that a
    later phase continues the stream as the next year would. (Posting the same events again
    under new ids put every caller's reports twice at the same instants: each event then
    re-assessed twice as many incidents, 4.5 times the worker's work per event of a real
    stream.)"""
    events = northumbria_incidents(seed=2022 + year)[:count]
    offset = year_offset(year)
    for event in events:
        event["event_id"] = prefix + event["event_id"]
        event["incident_id"] = prefix + event["incident_id"]
        if offset:
            for name in ("occurred_at", "reported_at"):
                event[name] = format_timestamp(parse_timestamp(event[name]) + offset)
    return events


def encode(event: dict[str, Any]) -> Message:
    value = json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()
    return str(event["incident_id"]).encode(), value


def pseudonymised(events: Iterable[dict[str, Any]]) -> list[Message]:
    """As ingest publishes them (``caller`` replaced by ``victim_key``, ``ingested_at``)."""
    ingested_at = format_timestamp(now_micros())
    out = []
    for event in events:
        published = pseudonymise_event(event, HMAC_KEY, "k1")
        published["ingested_at"] = ingested_at
        out.append(encode(published))
    return out


def replay_messages(count: int) -> list[Message]:
    """``count`` pre-pseudonymised events: the year repeated, each copy a year later, each
    stamped as accepted when it was reported (``ingested_at`` = ``reported_at``), as a
    replay of history is: the worker merges partitions by acceptance time, and one instant
    for all would leave it no order to merge by (a partition read ahead then pushes the
    watermark past ``max_lateness`` for the others)."""
    base = [pseudonymise_event(e, HMAC_KEY, "k1") for e in northumbria_incidents(seed=2022)]
    copies = -(-count // len(base))
    out: list[Message] = []
    for event in copies_of(lambda: base, copies):
        event = dict(event)
        event["ingested_at"] = event["reported_at"]
        out.append(encode(event))
        if len(out) == count:
            break
    return out


def latency_events(count: int, run: str, start_s: float) -> list[dict[str, Any]]:
    """Repeat callers: each phone number reports five times, its reports a few seconds
    apart in the stream, at Northumbria points with the year's codes."""
    base = [e for e in northumbria_incidents(seed=7)[: count * 2] if e.get("caller")][:count]
    rng = random.Random(f"bench-pipeline-latency-{run}")
    callers = -(-count // 5)
    phones: list[str] = []
    while len(phones) < callers:
        phone = f"+44 7{rng.choice('12345789')}{rng.randrange(10**8):08d}"
        if phonenumbers.is_valid_number(phonenumbers.parse(phone, "GB")):
            phones.append(phone)
    # Interleave 20 callers at a time: caller c's reports are events c*5 .. c*5+4 of a block.
    order: list[int] = []
    block = 20
    for first in range(0, callers, block):
        group = list(range(first, min(callers, first + block)))
        for _ in range(5):
            rng.shuffle(group)
            order.extend(group)
    events = []
    for number, caller in enumerate(order[:count]):
        event = dict(base[number % len(base)])
        occurred = start_s - 3600 + number * 0.5
        event.update(
            event_id=f"L{run}-{number:06d}-0",
            incident_id=f"L{run}-{number:06d}",
            sequence=0,
            event_type="opened",
            occurred_at=format_timestamp(int(occurred * 1e6)),
            reported_at=format_timestamp(int((occurred + 60) * 1e6)),
            caller={"phone": phones[caller], "name": f"Bench Caller {caller}"},
            vulnerability=[],
        )
        event.pop("closing_code", None)
        events.append(event)
    return events


# --------------------------------------------------------------------------- Kafka helpers


def servers(pipeline: Pipeline) -> str:
    return pipeline.broker.bootstrap


async def produce(bootstrap: str, messages: list[Message]) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks=1,
        linger_ms=20,
        max_batch_size=512 * 1024,
        max_request_size=8 * 1024 * 1024,
        enable_idempotence=False,
    )
    await producer.start()
    try:
        futures = []
        for key, value in messages:
            futures.append(await producer.send(TOPIC_INCIDENTS, value, key=key))
            if len(futures) >= 20_000:
                await asyncio.gather(*futures)
                futures = []
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def _produce_in_child(bootstrap: str, messages: list[Message], done: Any) -> None:
    asyncio.run(produce(bootstrap, messages))
    done.value = time.time()


async def ceiling(bootstrap: str, count: int) -> float:
    """Seconds for a plain consumer to read and decode ``count`` incident events."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_bytes=16 * 1024 * 1024,
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(TOPIC_INCIDENTS, p) for p in range(PARTITIONS)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        seen = 0
        started = time.perf_counter()
        while seen < count:
            batches = await consumer.getmany(timeout_ms=500, max_records=2000)
            for messages in batches.values():
                for message in messages:
                    IncidentEvent.from_wire(json.loads(message.value))
                    seen += 1
        return time.perf_counter() - started
    finally:
        await consumer.stop()


class AssessmentCounter:
    """Counts distinct incident ids (the record key) on the assessments topic, and on the
    late topic (an event the worker set aside is also done with), in a thread of its own
    with its own event loop."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.wanted: set[bytes] = set()
        self.seen: set[bytes] = set()
        self.late: set[bytes] = set()  # incidents with an event set aside (late, rejected)
        self.first_at = 0.0
        self.done_at = 0.0
        self.done = threading.Event()
        self._lock = threading.Lock()
        self._stop = False
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()

    def expect(self, keys: Iterable[bytes]) -> None:
        with self._lock:
            self.wanted = set(keys)
            self.seen = set()
            self.late = set()
            self.first_at = self.done_at = 0.0
            self.done.clear()

    def wait(self, timeout: float) -> float:
        if not self.done.wait(timeout):
            raise RuntimeError(
                f"only {len(self.seen)} of {len(self.wanted)} incidents assessed after {timeout} s"
            )
        return self.done_at

    def stop(self) -> None:
        self._stop = True
        self._thread.join(10)

    async def _run(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=8 * 1024 * 1024,
            fetch_max_bytes=32 * 1024 * 1024,
        )
        await consumer.start()
        try:
            topics = (TOPIC_ASSESSMENTS, TOPIC_LATE)
            while not all(consumer.partitions_for_topic(t) for t in topics):
                await consumer.topics()
                await asyncio.sleep(0.2)
            partitions = [
                TopicPartition(topic, p)
                for topic in topics
                for p in consumer.partitions_for_topic(topic) or ()
            ]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            while not self._stop:
                batches = await consumer.getmany(timeout_ms=100, max_records=20_000)
                now = time.time()
                with self._lock:
                    wanted, seen = self.wanted, self.seen
                    for messages in batches.values():
                        for message in messages:
                            if message.key in wanted:
                                seen.add(message.key)
                                if message.topic == TOPIC_LATE:
                                    self.late.add(message.key)
                    if seen and not self.first_at:
                        self.first_at = now
                    if wanted and not self.done.is_set() and len(seen) >= len(wanted):
                        self.done_at = now
                        self.done.set()
        finally:
            await consumer.stop()


class TopicStamper:
    """Notes when each escalation of incidents with ``prefix`` reaches the escalations topic
    (splits (c)'s latency into the worker's part and the API's)."""

    def __init__(self, bootstrap: str, prefix: str) -> None:
        self.bootstrap = bootstrap
        self.prefix = prefix
        self.arrivals: list[tuple[str, float]] = []
        self._stop = False
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop = True
        self._thread.join(10)

    async def _run(self) -> None:
        # The embedded broker answers a waiting fetch only when the wait ends: with
        # aiokafka's 500 ms default this clock would add up to 500 ms per record. 20 ms, as
        # the worker and the API wait.
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False,
            auto_offset_reset="earliest", fetch_max_wait_ms=20,
        )
        await consumer.start()
        try:
            while not consumer.partitions_for_topic(TOPIC_ESCALATIONS):
                await consumer.topics()
                await asyncio.sleep(0.2)
            partitions = [
                TopicPartition(TOPIC_ESCALATIONS, p)
                for p in consumer.partitions_for_topic(TOPIC_ESCALATIONS) or ()
            ]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            while not self._stop:
                batches = await consumer.getmany(timeout_ms=100, max_records=5000)
                now = time.time()
                for messages in batches.values():
                    for message in messages:
                        incident = str(json.loads(message.value).get("incident_id"))
                        if incident.startswith(self.prefix):
                            self.arrivals.append((incident, now))
        finally:
            await consumer.stop()


# --------------------------------------------------------------------------- HTTP posting


def post(conn: http.client.HTTPConnection, token: str, body: bytes) -> int:
    conn.request(
        "POST",
        "/v1/incidents",
        body=body,
        headers={"Content-Type": "application/x-ndjson", "Authorization": f"Bearer {token}"},
    )
    response = conn.getresponse()
    response.read()
    return response.status


def post_until_accepted(port: int, token: str, body: bytes, conn: list[Any]) -> float:
    """Post ``body`` (re-sending on 503 or a dropped connection); the time of its 202."""
    for _ in range(100):
        try:
            if not conn:
                conn.append(http.client.HTTPConnection("127.0.0.1", port, timeout=60))
            status = post(conn[0], token, body)
        except (OSError, http.client.HTTPException):
            conn.clear()
            time.sleep(0.2)
            continue
        if status == 202:
            return time.time()
        if status != 503:
            raise RuntimeError(f"ingest answered {status}")
        time.sleep(0.5)
    raise RuntimeError("ingest refused a batch 100 times")


def _poster(port: int, token: str, bodies: list[bytes], go: Any, last: Any) -> None:
    conn: list[Any] = []
    go.wait()
    accepted = 0.0
    for body in bodies:
        accepted = post_until_accepted(port, token, body, conn)
    last.value = accepted


def ndjson(events: list[dict[str, Any]], size: int) -> list[bytes]:
    return [
        "".join(json.dumps(e) + "\n" for e in events[i : i + size]).encode()
        for i in range(0, len(events), size)
    ]


# --------------------------------------------------------------------------- SSE client


def _sse_client(port: int, token: str, out_path: str, ready: Any, stop: Any) -> None:
    """Writes ``arrival<TAB>data`` per escalation event to ``out_path``."""
    import httpx

    with open(out_path, "w", encoding="utf-8") as out, httpx.Client(timeout=None) as client:
        headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
        url = f"http://127.0.0.1:{port}/v1/alerts/stream"
        with client.stream("GET", url, headers=headers) as response:
            response.raise_for_status()
            ready.set()
            for line in response.iter_lines():
                if line.startswith("data:"):
                    out.write(f"{time.time():.6f}\t{line[5:].strip()}\n")
                    out.flush()
                if stop.is_set():
                    break


# --------------------------------------------------------------------------- profiling


def top_frames(raw: Path, limit: int = 12) -> list[str]:
    """Top frames of a py-spy ``--format raw`` (collapsed stacks) file, by own samples and
    by samples that include them."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if not f.startswith("process ")]
        frames = [f for f in frames if not f.startswith("thread ")] or frames
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return ["(no samples)"]

    def short(frame: str) -> str:
        return frame.replace(str(ROOT) + "/", "").replace(sys.prefix + "/", "")[:110]

    lines = [f"{total} samples; own time:"]
    lines += [f"  {n / total:6.1%}  {short(f)}" for f, n in own.most_common(limit)]
    lines.append("including callees (frames under 70 %: ASVAT's code, json, logging):")
    keep = ("asvat/", "services/", "json/", "logging/", "phonenumbers/")
    chosen = [
        (f, n)
        for f, n in inclusive.most_common()
        if any(k in f for k in keep) and n < 0.7 * total
    ]
    lines += [f"  {n / total:6.1%}  {short(f)}" for f, n in chosen[:limit]]
    return lines


class Profiler:
    def __init__(self, pid: int, out: Path) -> None:
        self.out = out
        self.process: subprocess.Popen[bytes] | None = None
        py_spy = Path(sys.executable).parent / "py-spy"
        if not py_spy.exists():
            print("py-spy is not installed (make bench-pipeline installs it)", flush=True)
            return
        self.process = subprocess.Popen(
            [str(py_spy), "record", "--pid", str(pid), "--rate", "100", "--nonblocking", "--gil",
             "--format", "raw", "--output", str(out), "--duration", "3600"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def finish(self) -> list[str]:
        if self.process is None:
            return ["(not profiled)"]
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        return top_frames(self.out) if self.out.exists() else ["(py-spy wrote nothing)"]


# --------------------------------------------------------------------------- the run


#: ASVAT_* settings for every process the benchmark starts (``--checkpoint-seconds``).
EXTRA_ENV: dict[str, str] = {}


def start_pipeline(data_dir: Path, names: Iterable[str]) -> Pipeline:
    ports = {name: free_port() for name in ("broker", "api", "ingest", *names)}
    data_dir.mkdir(parents=True, exist_ok=True)
    broker = EmbeddedBroker(ports["broker"], log_path=data_dir / "broker.log")
    broker.start()
    pipeline = Pipeline(data_dir, ports, broker, extra_env=dict(EXTRA_ENV))
    ensure_topics(broker.bootstrap, PARTITIONS)
    return pipeline


def prepare_api(pipeline: Pipeline) -> None:
    """The API's database migrated, and the tokens the bench posts and reads with."""
    pipeline.cli("db", "upgrade")
    pipeline.ingest_token = pipeline.cli("token", "create", "--role", "ingest").split()[-1]
    pipeline.api_token = pipeline.cli("token", "create", "--role", "viewer").split()[-1]


def wait_counter(counter: AssessmentCounter, timeout: float, pipeline: Pipeline) -> float:
    try:
        return counter.wait(timeout)
    except RuntimeError as exc:
        tail = pipeline.log_tail("worker-a") if "worker-a" in pipeline.processes else ""
        raise RuntimeError(f"{exc}\n{tail}") from None


def throughput_phases(args: argparse.Namespace, work: Path, rows: list[Row]) -> list[str]:
    """(a), worker alone, (b), the profiled (b) and (c), on one pipeline."""
    pipeline = start_pipeline(work / "main", ["worker-a"])
    counter: AssessmentCounter | None = None
    profile: list[str] = []
    try:
        prepare_api(pipeline)
        bootstrap = servers(pipeline)
        n = args.events

        # (a) the ceiling, on the pre-filled topic.
        first = first_year(args.passes)
        base = raw_events(n, year=first)
        prefilled = pseudonymised(base)
        asyncio.run(produce(bootstrap, prefilled))
        prefilled_incidents = {key for key, _ in prefilled}
        phase = Phase("(a) plain consumer: read + decode")

        def read_ceiling() -> tuple[float, str]:
            """(a) now: events/s, the median of three reads (each a fraction of a second,
            by a new consumer), and the reads' range."""
            reads = sorted(asyncio.run(ceiling(bootstrap, n)) for _ in range(3))
            return n / reads[1], f"{n / reads[2]:,.0f} – {n / reads[0]:,.0f}"

        ceiling_rate, spread = read_ceiling()
        rows.append(Row("(a) ceiling: aiokafka consumer, json.loads + from_wire", n,
                        n / ceiling_rate,
                        f"{ceiling_rate:,.0f} events/s (median of 3 reads; {spread})",
                        "1", "—", phase.load()))

        # The worker alone: a cold start on the pre-filled topic.
        counter = AssessmentCounter(bootstrap)
        counter.expect(prefilled_incidents)
        phase = Phase("worker alone: cold start on the pre-filled topic")
        spawned = time.time()
        pipeline.start("worker-a")
        done = wait_counter(counter, args.timeout, pipeline)
        cpu = cpu_seconds(pipeline.pid("worker-a"))
        seconds = done - spawned
        rate = n / seconds
        rows.append(Row(
            "worker alone: spawn → all assessed (start, group join, rebuild, snapshot)", n,
            seconds, f"{rate:,.0f} events/s ({n / cpu:,.0f} per worker CPU-s, {cpu:.1f} s "
            f"incl. start-up); first assessment at {counter.first_at - spawned:.1f} s",
            f"{rate / ceiling_rate:.3f}", "—", phase.load()))
        pipeline.wait_ready("worker-a")

        # (b) the full path through ingest: first as the issue names it (ingest, worker,
        # assessments topic), then with the API storing everything on the same cores.
        pipeline.start("ingest")
        pipeline.wait_ready("ingest")

        def full_path(
            prefix: str, events: list[dict[str, Any]], profiled: bool, label: str
        ) -> tuple[float, float, int]:
            """One pass: its events/s, its ratio to (a) read just before it, its incidents."""
            assert counter is not None
            nonlocal profile
            beside, _ = read_ceiling()  # the pipeline is idle: nothing else is running
            counter.expect(str(e["incident_id"]).encode() for e in events)
            bodies = ndjson(events, args.batch)
            context = multiprocessing.get_context("fork")
            go = context.Event()
            lasts = [context.Value("d", 0.0) for _ in range(args.posters)]
            posters = [
                context.Process(
                    target=_poster,
                    args=(pipeline.ports["ingest"], pipeline.ingest_token,
                          bodies[i :: args.posters], go, lasts[i]),
                    daemon=True,
                )
                for i in range(args.posters)
            ]
            for process in posters:
                process.start()
            phase = Phase(label)
            profiler = (
                Profiler(pipeline.pid(args.profile), work / f"py-spy-{prefix}.txt")
                if profiled
                else None
            )
            cpu_before = pipeline_cpu(pipeline)
            started = time.time()
            go.set()
            done = wait_counter(counter, args.timeout, pipeline)
            cpu_after = pipeline_cpu(pipeline)
            cpu = cpu_after["worker-a"] - cpu_before["worker-a"]
            split = cpu_split(cpu_before, cpu_after)
            if profiler is not None:
                profile = profiler.finish()
            for process in posters:
                process.join(60)
            last_202 = max(v.value for v in lasts)
            count = len(events)
            seconds = done - started
            rate = count / seconds
            if "api" in pipeline.processes:
                stored = wait_stored(pipeline, prefix, len(counter.wanted), args.timeout)
                api_note = f"API stored all at {stored - started:.1f} s"
            else:
                api_note = "API not running"
            note = (f"{rate:,.0f} events/s (last 202 at {last_202 - started:.1f} s; worker "
                    f"CPU {cpu:.1f} s = {count / cpu:,.0f} events per CPU-s; {api_note}; "
                    f"CPU s until all assessed: {split})")
            note += f"; (a) just before: {beside:,.0f} events/s"
            if profiled:
                note += f"; py-spy sampling {args.profile}"
            rows.append(Row(
                f"{label}: {args.posters} posters × NDJSON {args.batch} → all assessed",
                count, seconds, note, f"{rate / beside:.3f}", "—", phase.load()))
            return rate, rate / beside, len(counter.wanted)

        def passes(kind: str, label: str, year: int) -> tuple[str, int]:
            """``--passes`` passes of the next years' events and their median's row;
            the last pass's prefix and incidents."""
            rates, ratios = [], []
            for k in range(1, args.passes + 1):
                prefix = f"{kind}{k}-"
                rate, ratio, incidents = full_path(
                    prefix, raw_events(n, prefix, year=year + k), False, f"{label}, pass {k}"
                )
                rates.append(rate)
                ratios.append(ratio)
            median = sorted(rates)[len(rates) // 2]
            rows.append(Row(
                f"{label}: median of {len(rates)} passes", n * len(rates), 0.0,
                f"{median:,.0f} events/s (passes: {', '.join(f'{r:,.0f}' for r in rates)}); "
                f"ratio: the median of the passes' ratios "
                f"({', '.join(f'{r:.3f}' for r in ratios)}), each to (a) read just before it",
                f"{sorted(ratios)[len(ratios) // 2]:.3f}", f"≥ {TARGET_RATIO:.2f}", "—"))
            return prefix, incidents

        # Passes vary by a tenth or more from one to the next on a shared 2-core machine:
        # each figure is the median of --passes passes.
        last, incidents = passes("N", "(b) path: ingest → worker → assessments topic", first)
        # The API is not on that path, but in a deployment on one machine it stores every
        # assessment on the same cores, and it stores fewer events a second per core than
        # the path carries: while it is behind, it takes its share of the CPU. It starts
        # now, reads everything so far, and each pass starts once it has stored the last.
        pipeline.start("api")
        pipeline.wait_ready("api")
        wait_stored(pipeline, last, incidents, args.timeout)
        passes("B", "(b) the same, with the API storing all on the same cores",
               first + args.passes)
        year = first + 2 * args.passes + 1
        full_path("P-", raw_events(max(1, n // 2), "P-", year=year), True, "(b) profiled pass")

        # (c) latency to an SSE client.
        rows.extend(latency(args, pipeline, work))
    finally:
        if counter is not None:
            counter.stop()
        pipeline.stop_all()
    return profile


def latency_alone(args: argparse.Namespace, work: Path, rows: list[Row]) -> None:
    """(c) alone, on a new pipeline whose database holds nothing else (``--latency-only``:
    lower than after the (b) passes, whose stored year the API's queries then read)."""
    pipeline = start_pipeline(work / "latency", ["worker-a"])
    try:
        prepare_api(pipeline)
        for name in ("worker-a", "ingest", "api"):
            pipeline.start(name)
        for name in ("worker-a", "ingest", "api"):
            pipeline.wait_ready(name)
        rows.extend(latency(args, pipeline, work))
    finally:
        pipeline.stop_all()


def wait_stored(pipeline: Pipeline, prefix: str, count: int, timeout: float) -> float:
    """When the API's database held an assessment of ``count`` incidents with ``prefix``."""

    def stored() -> bool:
        db = sqlite3.connect(pipeline.data_dir / "asvat.db", timeout=30)
        try:
            row = db.execute(
                "SELECT COUNT(*) FROM assessments WHERE incident_id LIKE ?", (prefix + "%",)
            ).fetchone()
        finally:
            db.close()
        return bool(row[0] >= count)

    wait_for(stored, timeout, f"the API to store {count} assessments")
    return time.time()


def latency(args: argparse.Namespace, pipeline: Pipeline, work: Path) -> list[Row]:
    count = int(args.rate * args.seconds)
    run = str(int(time.time()))
    events = latency_events(count, run, time.time())
    bodies = [json.dumps(e).encode() + b"\n" for e in events]
    context = multiprocessing.get_context("fork")
    ready, stop = context.Event(), context.Event()
    out_path = work / "sse.tsv"
    client = context.Process(
        target=_sse_client,
        args=(pipeline.ports["api"], pipeline.api_token, str(out_path), ready, stop),
        daemon=True,
    )
    client.start()
    stamper = TopicStamper(servers(pipeline), f"L{run}-")
    if not ready.wait(30):
        raise RuntimeError("the SSE client did not connect")
    api_before = api_buckets(pipeline.ports["api"], pipeline.api_token)  # (b)'s backlog
    collectors = {  # process → its port and token for /metrics
        "worker": (pipeline.ports["worker-a"], None),
        "ingest": (pipeline.ports["ingest"], pipeline.ingest_token),
        "API": (pipeline.ports["api"], pipeline.api_token),
    }
    gc_before = {name: gc_buckets(scrape(*where)) for name, where in collectors.items()}
    accepted: dict[str, float] = {}
    lock = threading.Lock()
    next_index = [0]
    phase = Phase(f"(c) latency: {args.rate:g} events/s for {args.seconds:g} s")
    start = time.time() + 0.5

    def post_scheduled() -> None:
        conn: list[Any] = []
        while True:
            with lock:
                i = next_index[0]
                next_index[0] += 1
            if i >= count:
                return
            delay = start + i / args.rate - time.time()
            if delay > 0:
                time.sleep(delay)
            at = post_until_accepted(pipeline.ports["ingest"], pipeline.ingest_token,
                                     bodies[i], conn)
            with lock:
                accepted[str(events[i]["incident_id"])] = at

    threads = [threading.Thread(target=post_scheduled, daemon=True) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    posting_s = time.time() - start
    time.sleep(args.drain)
    api_timings = api_histograms(pipeline.ports["api"], pipeline.api_token, api_before)
    collections_during = "; ".join(
        f"{name} {gc_pauses(gc_before[name], gc_buckets(scrape(*where)))}"
        for name, where in collectors.items()
    )
    stop.set()
    client.terminate()
    client.join(10)
    stamper.stop()
    on_topic = sorted(
        (at - accepted[incident]) * 1000
        for incident, at in stamper.arrivals
        if incident in accepted
    )
    latencies: list[float] = []
    kinds: collections.Counter[str] = collections.Counter()
    unmatched = 0
    at_client: dict[str, float] = {}  # each incident's first event at the client
    for line in out_path.read_text().splitlines():
        arrival, _, data = line.partition("\t")
        item = json.loads(data)
        incident = str((item.get("escalation") or {}).get("incident_id"))
        at_client.setdefault(incident, float(arrival))
        if incident in accepted:
            latencies.append((float(arrival) - accepted[incident]) * 1000)
            kinds[f"{item.get('kind')}:{(item.get('escalation') or {}).get('level')}"] += 1
        else:
            unmatched += 1
    latencies.sort()
    if not latencies:
        figure = f"no escalation arrived ({unmatched} unmatched)"
        p99 = float("nan")
    else:
        p99 = percentile(latencies, 0.99)
        mix = ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))
        figure = (
            f"{spread(latencies)}, max {latencies[-1]:.0f} ms "
            f"over {len(latencies)} escalation events ({mix}; {unmatched} not from this "
            f"stream); {count} events posted in {posting_s:.1f} s"
        )
    sse = Row(f"(c) latency 202 → SSE client, {args.rate:g} events/s repeat callers", count,
              posting_s, figure, f"{p99 / TARGET_P99_MS:.2f} of target",
              f"p99 ≤ {TARGET_P99_MS:.0f} ms", phase.load())
    pauses = Row("(c) garbage-collector pauses while it ran (asvat_process_gc_pause_seconds)",
                 count, posting_s, collections_during, "—", "—", phase.load())
    if not on_topic:
        return [sse, pauses]
    split = f"{spread(on_topic)} over {len(on_topic)} escalation records"
    part = Row("(c) of which 202 → record on asvat.escalations.v1 (worker's part)", count,
               posting_s, split, "—", "—", phase.load())
    # The API's part: an incident's first escalation record on the topic → its first event
    # at the SSE client (consume, store, notify, read the feed, send).
    on_topic_at: dict[str, float] = {}
    for incident, at in stamper.arrivals:
        on_topic_at.setdefault(incident, at)
    api_part = sorted(
        (at_client[i] - on_topic_at[i]) * 1000 for i in at_client if i in on_topic_at
    )
    if not api_part:
        return [sse, part, pauses]
    api_split = (
        f"{spread(api_part)}, max {api_part[-1]:.0f} ms over {len(api_part)} incidents' first "
        f"escalation; the API's own histograms: {api_timings}"
    )
    api_row = Row("(c) of which record on the topic → SSE client (the API's part)", count,
                  posting_s, api_split, "—", "—", phase.load())
    return [sse, part, api_row, pauses]


#: The API's consumer histograms (c) reports: label → (bucket sample, its topic label).
API_HISTOGRAMS: dict[str, tuple[str, str | None]] = {
    "store a batch": ("asvat_api_batch_store_seconds_bucket", None),
    "escalation record → stored": ("asvat_api_message_delay_seconds_bucket", TOPIC_ESCALATIONS),
}


def scrape(port: int, token: str | None = None) -> str:
    """The /metrics text of the process serving ``port``."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(response.read().decode())


def gc_buckets(text: str) -> dict[str, dict[float, float]]:
    """``asvat_process_gc_pause_seconds`` cumulative bucket counts by generation, from the
    /metrics text."""
    found: dict[str, dict[float, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "asvat_process_gc_pause_seconds_bucket":
                bounds = found.setdefault(sample.labels["generation"], {})
                bounds[float(sample.labels["le"])] = sample.value
    return found


def buckets_since(
    earlier: dict[float, float], now: dict[float, float]
) -> tuple[list[tuple[float, float]], float]:
    """A histogram's cumulative buckets (bound → count) between two readings, by bound,
    and the number of observations between them."""
    buckets = sorted((bound, count - earlier.get(bound, 0.0)) for bound, count in now.items())
    return buckets, buckets[-1][1] if buckets else 0.0


def gc_pauses(before: dict[str, dict[float, float]], after: dict[str, dict[float, float]]) -> str:
    """The collections between two :func:`gc_buckets` readings: per generation, how many
    and the bucket bound the longest fell under (so "≤")."""
    parts = []
    for generation, now in sorted(after.items()):
        buckets, total = buckets_since(before.get(generation, {}), now)
        if not total:
            continue
        longest = next(bound for bound, count in buckets if count >= total)
        parts.append(f"gen {generation}: {total:.0f}, longest ≤ {longest * 1000:g} ms")
    return "; ".join(parts) or "none"


def api_buckets(port: int, token: str) -> dict[str, dict[float, float]]:
    """The cumulative bucket counts of :data:`API_HISTOGRAMS` on the API's /metrics now."""
    text = scrape(port, token)
    found: dict[str, dict[float, float]] = {label: {} for label in API_HISTOGRAMS}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            for label, (name, topic) in API_HISTOGRAMS.items():
                if sample.name == name and sample.labels.get("topic") == topic:
                    found[label][float(sample.labels["le"])] = sample.value
    return found


def api_histograms(port: int, token: str, before: dict[str, dict[float, float]]) -> str:
    """The API's consumer timings since ``before`` (bucket bounds, so "≤"): batch store
    time, and escalation messages' delay from their Kafka timestamp to stored."""
    parts = []
    for label, now in api_buckets(port, token).items():
        buckets, total = buckets_since(before.get(label, {}), now)
        if not total:
            continue
        quantiles = []
        for q in (0.5, 0.99):
            bound = next(b for b, count in buckets if count >= q * total)
            quantiles.append(f"p{round(q * 100)} ≤ {bound * 1000:.0f} ms")
        parts.append(f"{label} {', '.join(quantiles)} ({total:.0f})")
    return "; ".join(parts) or "none"


def spread(sorted_ms: list[float]) -> str:
    """``p50 …, p95 …, p99 … ms`` of sorted milliseconds."""
    return ", ".join(f"p{round(q * 100)} {percentile(sorted_ms, q):.0f} ms"
                     for q in (0.50, 0.95, 0.99))


def percentile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, max(0, round(q * len(values)) - 1))]


def replay(args: argparse.Namespace, work: Path, rows: list[Row]) -> None:
    n = args.replay_events
    print(f"[{time.strftime('%H:%M:%S')}] making {n:,} replay events", flush=True)
    messages = replay_messages(n)
    incidents = {key for key, _ in messages}
    pipeline = start_pipeline(work / "replay", ["worker-a"])
    counter: AssessmentCounter | None = None
    try:
        bootstrap = servers(pipeline)
        pipeline.start("worker-a")
        pipeline.wait_ready("worker-a")
        counter = AssessmentCounter(bootstrap)
        counter.expect(incidents)
        context = multiprocessing.get_context("fork")
        produced = context.Value("d", 0.0)
        producer = context.Process(target=_produce_in_child, args=(bootstrap, messages, produced))
        phase = Phase(f"(d) replay of {n:,} events")
        worker_pid = pipeline.pid("worker-a")
        cpu_before = cpu_seconds(worker_pid)
        started = time.time()
        producer.start()
        del messages
        done = wait_counter(counter, args.timeout_replay, pipeline)
        cpu = cpu_seconds(worker_pid) - cpu_before
        producer.join(60)
        seconds = done - started
        rss = _rss_mib(worker_pid)
        # The target is for 2,000,000 events; a smaller N is held to its share of it.
        target_s = TARGET_REPLAY_S * n / FULL_REPLAY
        projected = ""
        if n != FULL_REPLAY:
            projected = (f"; {FULL_REPLAY:,} at this rate: {FULL_REPLAY / n * seconds / 60:.0f} "
                         "min (extrapolated, not measured)")
        rows.append(Row(
            "(d) replay: pre-pseudonymised events written onto the incidents topic by an "
            "aiokafka producer (own process), live worker → all assessed", n, seconds,
            f"{seconds / 60:.1f} min = {n / seconds:,.0f} events/s (producer done at "
            f"{produced.value - started:.0f} s; worker CPU {cpu:.0f} s; worker RSS {rss:,} MiB"
            f"; {len(incidents):,} incidents, {len(counter.late):,} of them with an event set "
            f"aside as late){projected}",
            f"{target_s / seconds:.2f} (target / time)",
            f"≤ 5 min per {FULL_REPLAY:,}" + (f" ({target_s:.0f} s pro rata)" if projected else ""),
            phase.load()))
    finally:
        if counter is not None:
            counter.stop()
        pipeline.stop_all()


def rebuild(args: argparse.Namespace, work: Path, rows: list[Row]) -> None:
    """A worker started on a topic that already holds ``--replay-events`` events (a restart
    after both workers stopped, with no checkpoint): spawn → ready (``/readyz``: read it
    all, published its snapshot). Then the checkpoint it writes once caught up, and a
    restart from it: the worker killed (SIGKILL), ``--tail-events`` more events written
    while it is down, spawn → ready again. Last, a rollout's restart: the worker stopped
    with SIGTERM (it writes a final checkpoint), then spawn → ready. ``--rebuild-only``."""
    n, tail = args.replay_events, args.tail_events
    print(f"[{time.strftime('%H:%M:%S')}] making {n + tail:,} events for the rebuild", flush=True)
    messages = replay_messages(n + tail)
    later = messages[n:]
    del messages[n:]
    pipeline = start_pipeline(work / "rebuild", ["worker-a"])
    try:
        asyncio.run(produce(servers(pipeline), messages))
        del messages
        phase = Phase(f"worker rebuilding from {n:,} events")
        seconds, cpu, rss, state = _start_until_ready(pipeline, args.timeout_replay)
        rows.append(Row(
            "worker restart without a checkpoint: spawn → ready on a topic already holding "
            "the events (start, group join, read every partition, snapshot published)", n,
            seconds,
            f"{seconds / 60:.1f} min = {n / seconds:,.0f} events/s (worker CPU {cpu:.0f} s; "
            f"RSS {rss:,} MiB; {state.get('retained_incidents', 0):,} incidents "
            "retained)", "—", "—", phase.load()))

        phase = Phase("the checkpoint written once caught up")
        written = wait_for(
            lambda: pipeline.readyz("worker-a").get("checkpoint", {}).get("last_written"),
            args.timeout_replay, "the worker's first checkpoint")
        rows.append(Row(
            "checkpoint: state encoded and written by a forked child (the worker goes on)", n,
            float(written["seconds"]),
            f"{written['size'] / 2**20:,.0f} MiB for {written['retained_incidents']:,} "
            f"incidents; the writer's own memory (copied pages and the encoded state) "
            f"{(written.get('private_bytes') or 0) / 2**20:,.0f} MiB", "—", "—", phase.load()))

        pipeline.kill("worker-a")
        asyncio.run(produce(servers(pipeline), later))
        del later
        phase = Phase(f"worker restarting from its checkpoint, {tail:,} events after it")
        seconds, cpu, rss, state = _start_until_ready(pipeline, args.timeout_replay)
        restored = state.get("checkpoint", {}).get("restored")
        assert restored is not None, "the worker did not start from its checkpoint"
        rows.append(Row(
            f"worker restart from its checkpoint (killed; {tail:,} events written meanwhile): "
            "spawn → ready (load, group join, read the rest, snapshot published)", n + tail,
            seconds,
            f"{seconds:.1f} s (worker CPU {cpu:.0f} s; RSS {rss:,} MiB; "
            f"{state.get('retained_incidents', 0):,} incidents retained)", "—", "—",
            phase.load()))

        phase = Phase("a rollout: SIGTERM (final checkpoint), then a restart")
        stopping = time.time()
        pipeline.stop("worker-a", timeout=args.timeout_replay)
        stop_s = time.time() - stopping
        seconds, cpu, rss, state = _start_until_ready(pipeline, args.timeout_replay)
        restored = state.get("checkpoint", {}).get("restored") or {}
        covered = sum(int(o) for o in (restored.get("offsets") or {}).values())
        rows.append(Row(
            "a rollout's restart: SIGTERM → exited (batch in hand, final checkpoint, leave), "
            "then spawn → ready from the final checkpoint", n + tail, stop_s + seconds,
            f"stopped in {stop_s:.1f} s, ready {seconds:.1f} s after spawn (worker CPU "
            f"{cpu:.0f} s; RSS {rss:,} MiB); the checkpoint covered {covered:,} of "
            f"{n + tail:,} events", "—", "—", phase.load()))
    finally:
        pipeline.stop_all()


def _start_until_ready(
    pipeline: Pipeline, timeout: float
) -> tuple[float, float, int, dict[str, Any]]:
    """Start worker-a and wait for its ``/readyz``: seconds from spawn, its CPU seconds and
    resident MiB then, and what ``/readyz`` said."""
    spawned = time.time()
    pipeline.start("worker-a")
    pipeline.wait_ready("worker-a", timeout=timeout)
    seconds = time.time() - spawned
    pid = pipeline.pid("worker-a")
    return seconds, cpu_seconds(pid), _rss_mib(pid), pipeline.readyz("worker-a")


def _rss_mib(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024
    return 0


def print_table(rows: list[Row]) -> None:
    print("| measure | events | s | figure | ratio to (a) | target | load 1-min start → end |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r.measure} | {r.events:,} | {r.seconds:.1f} | {r.figure} | {r.ratio} | "
              f"{r.target} | {r.load} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--events", type=int, default=40_000, help="events for (a) and (b)")
    parser.add_argument("--replay-events", type=int, default=2_000_000)
    parser.add_argument("--checkpoint-seconds", type=float, default=None,
                        help="the workers' ASVAT_WORKER_CHECKPOINT_SECONDS (default: theirs)")
    parser.add_argument("--tail-events", type=int, default=20_000,
                        help="--rebuild-only: events written while the worker is down")
    parser.add_argument("--posters", type=int, default=4, help="posting processes in (b)")
    parser.add_argument("--passes", type=int, default=3, choices=range(1, 4),
                        help="(b) passes (odd: a median)")
    parser.add_argument("--batch", type=int, default=200, help="events per NDJSON request")
    parser.add_argument("--rate", type=float, default=100.0, help="events/s in (c)")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of (c)")
    parser.add_argument("--drain", type=float, default=10.0, help="wait after (c)'s posts")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--timeout-replay", type=float, default=3600.0)
    parser.add_argument("--profile", default="worker-a", choices=("worker-a", "ingest", "api"),
                        help="the process py-spy samples in the profiled (b) pass")
    parser.add_argument("--skip-replay", action="store_true")
    parser.add_argument("--replay-only", action="store_true", help="only (d)")
    parser.add_argument("--rebuild-only", action="store_true",
                        help="only a worker's restart on a topic holding --replay-events")
    parser.add_argument("--latency-only", action="store_true",
                        help="only (c), on a pipeline with an empty database")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 2,000 events, 20,000 replayed, 15 s of (c)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.replay_events, args.seconds, args.drain = 2000, 20_000, 15.0, 5.0
    if args.checkpoint_seconds is not None:
        EXTRA_ENV["ASVAT_WORKER_CHECKPOINT_SECONDS"] = f"{args.checkpoint_seconds:g}"

    # The pipeline's processes run in sessions of their own, so a bench killed by SIGTERM
    # or a closed terminal would leave them loading the machine: exit through the
    # ``finally`` blocks that stop them instead.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _exit_on_signal)
    work = Path(tempfile.mkdtemp(prefix="asvat-bench-pipeline-"))
    print(f"{machine()}; work directory {work}", flush=True)
    load_start = load1()
    rows: list[Row] = []
    profile: list[str] = []
    try:
        if args.rebuild_only:
            rebuild(args, work, rows)
        elif args.latency_only:
            latency_alone(args, work, rows)
        elif not args.replay_only:
            profile = throughput_phases(args, work, rows)
        if not (args.skip_replay or args.latency_only or args.rebuild_only):
            replay(args, work, rows)
    finally:
        print_rows(rows, profile, load_start, args.profile)
    if not args.keep:
        subprocess.run(["rm", "-rf", str(work)], check=False)
    return 0


def _exit_on_signal(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def print_rows(rows: list[Row], profile: list[str], load_start: float, profiled: str) -> None:
    print()
    print(f"Machine: {machine()}; load average (1 min) {load_start:.1f} at start, "
          f"{load1():.1f} at end; {datetime.now(tz=UTC):%Y-%m-%d %H:%M} UTC")
    print()
    print_table(rows)
    print()
    print(f"py-spy, {profiled} during the profiled (b) pass:")
    print("\n".join(profile or ["(not reached)"]))


if __name__ == "__main__":
    sys.exit(main())
