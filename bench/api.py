"""API latency under load: the escalation list and area statistics on PostgreSQL.

Run ``python bench/api.py [--escalations 100000] [--assessments 200000] [--rate 200]
[--seconds 10] [--keep | --reuse DATABASE]``. It

1. makes a PostgreSQL database of its own (``asvat_bench_<random>``) on 127.0.0.1:5432
   (trust authentication, as the tests use), migrates it, and loads the escalations and
   assessments through the API's own write path (``services/api/service.py``: places,
   area counts and the alert feed included), from the real Northumbria 2022 points spread
   over a year, with levels, subjects and statuses mixed;
2. starts the API (uvicorn, 2 worker processes, no Kafka consumer) in separate processes;
3. from another process, sends each kind of request at a fixed rate (open loop: each
   request leaves at its scheduled time, whether or not the earlier ones are answered, and
   its latency counts from that time, so a slow server cannot hide its queue) and prints
   one table of p50, p99 and max latency per kind, with the machine. Target: p99 <= 50 ms.

Meanwhile a writer stores ``--live`` new escalations a second (and five assessments with
each), as the consumer would: the API reuses a page or a statistics answer only until the
data under it changes, so the measured latencies include the answers made afresh.

The database is dropped at the end unless ``--keep`` (then ``--reuse`` measures it again
without loading). A database of its own, not a schema in ``test``: the tests share
``test``, and with it the advisory locks the API takes there (migrations, the alert feed's
appends), so their writers would queue with the benchmark's; and nothing of the benchmark
may outlive the drop (the writer is stopped and the server ended first).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import multiprocessing
import os
import platform
import random
import socket
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# bench/machine.py: found as ``machine`` when run as a script from bench/, and also when
# uvicorn imports this module as ``bench.api`` from the repository root (the server).
sys.path.append(str(Path(__file__).resolve().parent))

from machine import cpu_model  # noqa: E402

PG = "postgresql://postgres@127.0.0.1:5432/test"
TARGET_P99_MS = 50.0
LEVELS = ("standard", "medium", "high")


def machine() -> str:
    model = cpu_model()
    memory = ""
    try:
        with open("/proc/meminfo", encoding="utf-8") as meminfo:
            kib = int(meminfo.readline().split()[1])
            memory = f", {kib / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return (
        f"{model}, {os.cpu_count()} cores{memory}, {platform.system()} {platform.machine()}, "
        f"{platform.python_implementation()} {platform.python_version()}"
    )


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


# -- data -------------------------------------------------------------------------------


def load(url: str, escalations: int, assessments: int) -> str:
    """Migrate and fill the database; returns an admin token."""
    from sqlalchemy import update

    from asvat.demo import _records
    from asvat.domain.location import wgs84_to_bng
    from services.api import migrate, service, tokens
    from services.api.db import make_engine, make_writer_factory
    from services.api.models import Escalation

    engine = make_engine(url)
    migrate.upgrade(engine)
    writer = make_writer_factory(engine)
    rng = random.Random(2022)
    points = [wgs84_to_bng(r.lat, r.lon) for r in _records()]
    end = datetime(2026, 11, 1, tzinfo=UTC)
    classes = ("asb",) * 6 + ("crime", "crime", "non_crime", "other", "cancelled")
    started = time.monotonic()
    batch = 5000
    for first in range(0, assessments, batch):
        payloads = []
        for n in range(first, min(first + batch, assessments)):
            e, no = points[n % len(points)]
            cls = rng.choice(classes)
            met = ["victim-28d"] if rng.random() < 0.1 else []
            payloads.append(
                {
                    "schema": "asvat.assessment.v1",
                    "assessment_id": sha(f"a{n}"),
                    "incident_id": f"B-{n:07d}",
                    "in_scope": cls not in ("other", "cancelled"),
                    "classification": cls,
                    "asb_category": "nuisance" if cls == "asb" else None,
                    "occurred_at": iso(end - timedelta(seconds=rng.randrange(365 * 86400))),
                    "victim_key": sha(f"v{rng.randrange(assessments // 3 + 1)}"),
                    "location_key": f"bng:{int(e)}:{int(no)}",
                    "rules_met": met,
                    "rule_counts": {},
                    "contributing": {},
                    "assessed_at": iso(end),
                }
            )
        with writer.begin() as session:
            service.upsert_assessments(session=session, payloads=payloads)
        print(f"\r  assessments {first + len(payloads):,}", end="", flush=True)
    print(f" ({time.monotonic() - started:.0f} s)")
    started = time.monotonic()
    for first in range(0, escalations, batch):
        payloads = []
        for n in range(first, min(first + batch, escalations)):
            victim = rng.random() < 0.6
            incident = f"B-{rng.randrange(assessments):07d}"
            e, no = points[rng.randrange(len(points))]
            raised = end - timedelta(seconds=rng.randrange(365 * 86400))
            payloads.append(
                {
                    "schema": "asvat.escalation.v1",
                    "event_id": sha(f"ev{n}"),
                    "escalation_id": sha(f"e{n}"),
                    "event": "raised",
                    "subject_type": "victim" if victim else "location",
                    "subject_key": sha(f"s{n}") if victim else f"bng:{int(e)}:{int(no)}",
                    "episode": 1,
                    "level": rng.choice(LEVELS),
                    "previous_level": None,
                    "incident_id": incident,
                    "occurred_at": iso(raised - timedelta(minutes=5)),
                    "risk_score": rng.randrange(5, 40),
                    "reasons": [
                        {"factor": "rule", "weight": 10, "detail": "met rule victim-28d"},
                        {"factor": "vulnerability", "weight": 4, "detail": "isolation"},
                    ],
                    "tasking": None,
                    "at": iso(raised),
                    "raised_at": iso(raised),
                }
            )
        with writer.begin() as session:
            service.record_escalations(session=session, payloads=payloads)
        print(f"\r  escalations {first + len(payloads):,}", end="", flush=True)
    print(f" ({time.monotonic() - started:.0f} s)")
    with writer.begin() as session:
        # Some handled already, as in a working control room.
        session.execute(
            update(Escalation).where(Escalation.escalation_id < "4").values(status="acknowledged")
        )
        _, token = tokens.create(session=session, role="admin", name="bench")
    with engine.connect() as connection:
        connection.exec_driver_sql("ANALYZE")
    engine.dispose()
    return token


def bench_token(url: str) -> str:
    """A fresh admin token in a database loaded before."""
    from services.api import tokens
    from services.api.db import make_engine, make_writer_factory

    engine = make_engine(url)
    with make_writer_factory(engine).begin() as session:
        _, token = tokens.create(session=session, role="admin", name="bench")
    engine.dispose()
    return token


# -- server -----------------------------------------------------------------------------


def server_app() -> Any:
    """The API without its Kafka consumer (uvicorn factory, settings from ASVAT_*)."""
    from asvat.settings import load_settings
    from services.api.app import create_app

    return create_app(load_settings(), start_consumer=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(url: str, port: int, workers: int) -> subprocess.Popen[bytes]:
    env = dict(os.environ, ASVAT_DATABASE_URL=url, ASVAT_KAFKA_BOOTSTRAP="127.0.0.1:9")
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "bench.api:server_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        cwd=ROOT,
        env=env,
    )


def wait_ready(base: str, token: str, timeout: float = 60.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/v1/me", headers={"Authorization": f"Bearer {token}"}).is_success:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit("the API did not start")


# -- load -------------------------------------------------------------------------------


def drive(base: str, token: str, paths: list[str], rate: float, seconds: float) -> list[float]:
    """Open loop: request i leaves at start + i / rate; latencies in ms from that time.

    A small HTTP/1.1 client on asyncio streams (keep-alive connections, requests written
    as prepared bytes): a full client library would cost more CPU than the server it
    measures on a two-core machine.
    """
    host, port = base.removeprefix("http://").split(":")
    requests = [
        (
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
            "Accept: */*\r\n\r\n"
        ).encode()
        for path in paths
    ]

    async def exchange(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
    ) -> int:
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        if length:
            await reader.readexactly(length)
        return status

    async def run() -> list[float]:
        pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
        for _ in range(64):
            pool.put_nowait(await asyncio.open_connection(host, int(port)))
        latencies: list[float] = []
        failures: list[int] = []

        async def one(i: int, start: float) -> None:
            due = start + i / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            conn = await pool.get()
            status = await exchange(*conn, requests[i % len(requests)])
            latencies.append((time.perf_counter() - due) * 1000)
            pool.put_nowait(conn)
            if status != 200:
                failures.append(status)

        # One second at the same rate first, not measured: connections, caches, the
        # planner's statistics and the server's threads all warm.
        start = time.perf_counter() + 0.1
        await asyncio.gather(*(one(i, start) for i in range(int(rate))))
        latencies.clear()
        count = int(rate * seconds)
        start = time.perf_counter() + 0.2
        await asyncio.gather(*(one(i, start) for i in range(count)))
        while not pool.empty():
            pool.get_nowait()[1].close()
        if failures:
            raise RuntimeError(f"{len(failures)} requests failed, e.g. HTTP {failures[0]}")
        return latencies

    return asyncio.run(run())


def _drive_in_process(args: tuple[str, str, list[str], float, float], out: Any) -> None:
    try:
        out.send(("ok", drive(*args)))
    except BaseException as exc:  # reported by the parent
        out.send(("error", f"{type(exc).__name__}: {exc}"))


def measure(base: str, token: str, paths: list[str], rate: float, seconds: float) -> list[float]:
    """:func:`drive` in a separate process (the load must not share the server's CPU time
    accounting or the caller's event loop)."""
    receive, send = multiprocessing.Pipe(duplex=False)
    process = multiprocessing.Process(
        target=_drive_in_process, args=((base, token, paths, rate, seconds), send)
    )
    process.start()
    if not receive.poll(seconds + 120):
        process.kill()
        raise SystemExit("the load generator did not finish")
    status, result = receive.recv()
    process.join()
    if status != "ok":
        raise SystemExit(f"the load generator failed: {result}")
    latencies: list[float] = result
    return latencies


def live_writer(url: str, per_second: float, stop: Any) -> None:
    """New escalations and assessments at ``per_second`` until ``stop`` is set."""
    from asvat.demo import _records
    from asvat.domain.location import wgs84_to_bng
    from services.api import service
    from services.api.db import make_engine, make_writer_factory

    if per_second <= 0:
        return
    engine = make_engine(url)
    writer = make_writer_factory(engine)
    points = [wgs84_to_bng(r.lat, r.lon) for r in _records()[:2000]]
    n = 0
    while not stop.wait(1.0 / per_second):
        n += 1
        now = datetime.now(tz=UTC)
        e, no = points[n % len(points)]
        key = f"bng:{int(e)}:{int(no)}"
        assessments: list[dict[str, Any]] = [
            {
                "schema": "asvat.assessment.v1",
                "assessment_id": sha(f"live-a{n}-{i}"),
                "incident_id": f"LIVE-{n}-{i}",
                "in_scope": True,
                "classification": "asb",
                "asb_category": "nuisance",
                "occurred_at": iso(now - timedelta(days=i)),
                "victim_key": None,
                "location_key": key,
                "rules_met": [],
                "rule_counts": {},
                "contributing": {},
                "assessed_at": iso(now),
            }
            for i in range(5)
        ]
        escalation = {
            "schema": "asvat.escalation.v1",
            "event_id": sha(f"live-ev{n}"),
            "escalation_id": sha(f"live-e{n}"),
            "event": "raised",
            "subject_type": "location",
            "subject_key": key,
            "episode": 1,
            "level": LEVELS[n % 3],
            "previous_level": None,
            "incident_id": f"LIVE-{n}-0",
            "occurred_at": iso(now),
            "risk_score": 20,
            "reasons": [{"factor": "rule", "weight": 10, "detail": "met"}],
            "tasking": None,
            "at": iso(now),
            "raised_at": iso(now),
        }
        with writer.begin() as session:
            service.lock_feed(session)
            service.upsert_assessments(session=session, payloads=assessments)
            service.record_escalations(session=session, payloads=[escalation])
    engine.dispose()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--escalations", type=int, default=100_000)
    parser.add_argument("--assessments", type=int, default=200_000)
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="per kind of request")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument(
        "--reuse", metavar="DATABASE", help="measure a database kept by --keep (no loading)"
    )
    parser.add_argument(
        "--live", type=float, default=1.0, help="new escalations a second while measuring"
    )
    args = parser.parse_args(argv)

    import psycopg

    database = args.reuse or f"asvat_bench_{uuid.uuid4().hex[:8]}"
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}"
    try:
        admin = psycopg.connect(PG, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        raise SystemExit(
            f"PostgreSQL is not reachable at {PG} ({exc}). Start it with: "
            "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
        ) from None
    server: subprocess.Popen[bytes] | None = None
    writer: threading.Thread | None = None
    stop = threading.Event()
    try:
        version = admin.execute("SHOW server_version").fetchone()
        load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"machine: {machine()}; PostgreSQL {version[0] if version else '?'}", flush=True)
        if args.reuse:
            print(f"measuring database {database} as loaded before", flush=True)
            token = bench_token(url)
        else:
            admin.execute(f'CREATE DATABASE "{database}"')
            print(f"loading into database {database}:", flush=True)
            token = load(url, args.escalations, args.assessments)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        server = start_server(url, port, args.workers)
        wait_ready(base, token)
        newcastle = "E08000021"
        kinds = {
            "escalation list, newest 100 (default)": ["/v1/escalations"],
            "escalation list, filtered (level, status, district), 50": [
                f"/v1/escalations?level=high&status=open&district={newcastle}&limit=50"
            ],
            "escalation list, page 2 by cursor": [],
            "area statistics, districts x months, 12 months": [
                "/v1/areas/statistics?level=district&period=month&from=2025-11-01&to=2026-10-31"
            ],
            "area statistics, wards x months, 12 months": [
                "/v1/areas/statistics?level=ward&period=month&from=2025-11-01&to=2026-10-31"
            ],
            "area statistics, districts x weeks, CSV": [
                "/v1/areas/statistics?level=district&period=week&from=2025-11-01&to=2026-10-31&format=csv"
            ],
        }
        import httpx

        writer = threading.Thread(target=live_writer, args=(url, args.live, stop), daemon=True)
        writer.start()
        first = httpx.get(
            f"{base}/v1/escalations", headers={"Authorization": f"Bearer {token}"}
        ).json()
        kinds["escalation list, page 2 by cursor"] = [
            f"/v1/escalations?cursor={first['next_cursor']}"
        ]
        with psycopg.connect(url.replace("+psycopg", ""), connect_timeout=3) as counting:
            escalations, assessments = (
                int(counting.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # type: ignore[index]
                for table in ("escalations", "assessments")
            )
        rows = []
        for name, paths in kinds.items():
            latencies = measure(base, token, paths, args.rate, args.seconds)
            p50, p99 = percentile(latencies, 0.50), percentile(latencies, 0.99)
            rows.append(
                [
                    name,
                    f"{len(latencies):,}",
                    f"{p50:.1f}",
                    f"{p99:.1f}",
                    f"{max(latencies):.1f}",
                    "yes" if p99 <= TARGET_P99_MS else "NO",
                ]
            )
            print(f"  {name}: p50 {p50:.1f} ms, p99 {p99:.1f} ms", flush=True)
        header = ["request", "requests", "p50 ms", "p99 ms", "max ms", f"p99<={TARGET_P99_MS:g}"]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        print()
        print(
            f"API latency at {args.rate:g} requests/s (open loop, {args.seconds:g} s per kind), "
            f"{escalations:,} escalations and {assessments:,} assessments in "
            f"PostgreSQL, {args.workers} uvicorn workers, {args.live:g} new escalations/s "
            "written meanwhile"
        )
        load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())
        print(
            f"machine: {machine()}; load average (1, 5, 15 min) before the run: {load_before}, "
            f"after: {load_after}"
        )
        for row in [header, ["-" * w for w in widths], *rows]:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
        return 0 if all(r[-1] == "yes" for r in rows) else 1
    finally:
        # Everything that uses the database ends before it is dropped (a writer left
        # running after a failure used to die with 'relation "assessments" does not
        # exist', hiding the failure printed above it).
        stop.set()
        if writer is not None:
            writer.join(30)
        if server is not None:
            server.terminate()
            server.wait(30)
        if not (args.keep or args.reuse):
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        elif not args.reuse:
            print(f"kept database {database} (measure again with --reuse {database})")
        admin.close()


if __name__ == "__main__":
    sys.exit(main())
