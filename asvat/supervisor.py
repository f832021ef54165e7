"""``asvat up``: the whole system on one machine.

Starts the embedded Tansu broker (unless ``ASVAT_KAFKA_BOOTSTRAP`` names a Kafka), creates
the topics, migrates the API database and makes the tokens this run needs (an ``admin``
token for the dashboard, printed in the banner, and an ``ingest`` token for the demo feed;
both revoked when it stops), then runs the worker, ingest and API as child processes.
Prints the URLs and, as they arrive, each new escalation. Ctrl-C or SIGTERM stops
everything in reverse order and waits for each process, so no orphan is left and every
port is free again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any

from asvat.embedded.broker import (
    EmbeddedBroker,
    PortInUseError,
    ensure_all_topics,
    ensure_port_free,
    wait_for_broker,
)
from asvat.settings import Settings

STOP_TIMEOUT_S = 15.0


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]


class Supervisor:
    def __init__(
        self, settings: Settings, *, policy_path: Path | None, out: IO[str] = sys.stdout
    ) -> None:
        self.settings = settings
        self.policy_path = policy_path
        self.out = out
        self.data = settings.data_path
        self.logs = self.data / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.broker: EmbeddedBroker | None = None
        self.children: list[Child] = []
        self.stopping = threading.Event()
        self.signalled: list[int] = []  # appended to by the signal handler, nothing else
        self.tokens: dict[str, str] = {}  # role -> token made for this run
        self._token_ids: list[str] = []
        self.restarts = 0  # of the embedded broker

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def check_ports(self) -> None:
        s = self.settings
        if not s.kafka_bootstrap:
            ensure_port_free("127.0.0.1", s.embedded_broker_port, "embedded Kafka broker")
        ensure_port_free(s.worker_host, s.worker_port, "worker HTTP")
        ensure_port_free(s.ingest_host, s.ingest_port, "ingest HTTP")
        ensure_port_free(s.api_host, s.api_port, "API HTTP")

    def child_env(self, bootstrap: str) -> dict[str, str]:
        env = dict(os.environ)
        env["ASVAT_KAFKA_BOOTSTRAP"] = bootstrap
        env["ASVAT_DATA_DIR"] = str(self.data)
        if self.policy_path is not None:
            env["ASVAT_POLICY"] = str(Path(self.policy_path).resolve())
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def spawn(self, name: str, bootstrap: str) -> Child:
        log_path = self.logs / f"{name}.log"
        log_file = log_path.open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "asvat", name],
            env=self.child_env(bootstrap),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches us; we stop the children in order
        )
        child = Child(name, process, log_path, log_file)
        self.children.append(child)
        return child

    def start(self) -> str:
        self.check_ports()
        if self.settings.kafka_bootstrap:
            bootstrap = self.settings.kafka_bootstrap
            self.say(f"Kafka: using {bootstrap} (ASVAT_KAFKA_BOOTSTRAP)")
            wait_for_broker(bootstrap, timeout=60)
        else:
            self.broker = EmbeddedBroker(
                self.settings.embedded_broker_port, log_path=self.logs / "broker.log"
            )
            self.broker.start()
            bootstrap = self.broker.bootstrap
            self.say(f"Kafka: embedded Tansu broker on {bootstrap} (memory only)")
        ensure_all_topics(bootstrap, self.settings.topic_partitions)
        self.prepare_database()
        for name in ("worker", "ingest", "api"):
            self.spawn(name, bootstrap)
        return bootstrap

    def prepare_database(self) -> None:
        """Migrate the API database (ingest checks tokens in it from its first request) and
        make this run's tokens."""
        from services.api import migrate, tokens
        from services.api.db import make_engine, make_writer_factory

        engine = make_engine(self.settings.resolved_database_url)
        try:
            migrate.upgrade(engine)
            with make_writer_factory(engine).begin() as session:
                for role, name in (("admin", "asvat up dashboard"), ("ingest", "asvat up feed")):
                    row, token = tokens.create(
                        session=session, role=role, name=name, created_by="asvat up"
                    )
                    self.tokens[role] = token
                    self._token_ids.append(row.token_id)
        finally:
            engine.dispose()

    def revoke_tokens(self) -> None:
        if not self._token_ids:
            return
        from services.api import tokens
        from services.api.db import make_engine, make_writer_factory

        engine = make_engine(self.settings.resolved_database_url)
        try:
            with make_writer_factory(engine).begin() as session:
                for token_id in self._token_ids:
                    tokens.revoke(session=session, which=token_id, revoked_by="asvat up")
        except Exception as exc:  # stopping goes on; the tokens can be revoked by hand
            self.say(f"could not revoke this run's tokens ({exc}); see `asvat token list`")
        finally:
            engine.dispose()

    def wait_ready(self, timeout: float = 120.0) -> bool:
        s = self.settings
        urls = {
            "api": f"http://{s.api_host}:{s.api_port}/readyz",
            "ingest": f"http://{s.ingest_host}:{s.ingest_port}/readyz",
            "worker": f"http://{s.worker_host}:{s.worker_port}/readyz",
        }
        pending = dict(urls)
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline and not self.signalled:
            self.check_children()
            for name, url in list(pending.items()):
                if _http_ok(url):
                    del pending[name]
                    self.say(f"  {name} ready")
            time.sleep(0.5)
        return not pending

    def check_broker(self) -> None:
        """Restart the embedded broker if it died. It comes back empty (memory only): ingest
        republishes its durable event log to it and the workers read it again."""
        broker = self.broker
        if broker is None or broker.running or self.stopping.is_set():
            return
        self.restarts += 1
        self.say(
            f"the embedded Kafka broker exited; restarting it on {broker.bootstrap} "
            "(empty: ingest republishes its durable event log)"
        )
        broker.start()
        ensure_all_topics(broker.bootstrap, self.settings.topic_partitions)

    def check_children(self) -> None:
        self.check_broker()
        for child in self.children:
            code = child.process.poll()
            if code is not None and not self.stopping.is_set():
                tail = _tail(child.log_path, 15)
                raise ChildExited(
                    f"{child.name} exited with code {code}; last lines of {child.log_path}:\n{tail}"
                )

    def stop(self) -> None:
        self.stopping.set()
        for child in reversed(self.children):
            if child.process.poll() is None:
                os.killpg(child.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for child in reversed(self.children):
            remaining = max(0.1, deadline - time.monotonic())
            try:
                child.process.wait(remaining)
            except subprocess.TimeoutExpired:
                os.killpg(child.process.pid, signal.SIGKILL)
                child.process.wait()
            child.log_file.close()
        if self.broker is not None:
            self.broker.stop()
        self.revoke_tokens()


class ChildExited(RuntimeError):
    pass


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def escalation_line(item: Mapping[str, Any]) -> str:
    """One console line for an escalation as the API lists it: level, subject, incident
    and why: the repeat rules met, or, when none was (a single incident whose risk alone
    reached the level), the score and the factors that made it."""
    subject = str(item["subject_key"])
    if item["subject_type"] == "victim":
        subject = subject[:16]  # a pseudonym; the prefix is enough to tell them apart
    reasons = [r for r in item.get("reasons") or () if isinstance(r, Mapping)]
    rules = sorted({str(r["rule_id"]) for r in reasons if r.get("rule_id")})
    if rules:
        why = f"rules met: {', '.join(rules)}"
    else:
        factors = ", ".join(_factor(r) for r in reasons)
        score = item.get("risk_score")
        why = f"no repeat rule met; risk score {score if score is not None else '?'}"
        why += f" from {factors}" if factors else ""
    return (
        f"ESCALATION {item.get('level') or '?'}: {item['subject_type']} {subject} "
        f"incident {item['incident_id']} ({why})"
    )


def _factor(reason: Mapping[str, Any]) -> str:
    """``asb_category personal +6``, ``vulnerability disability +4``: a factor, its value
    (when it has one), its weight."""
    words = [str(reason.get("factor") or "?")]
    if reason.get("value") not in (None, ""):
        words.append(str(reason["value"]))
    if reason.get("weight") is not None:
        words.append(f"+{reason['weight']}")
    return " ".join(words)


def _watch_escalations(api: str, token: str, out: IO[str], stop: threading.Event) -> None:
    """Print each new escalation the API knows about (a console view of the live feed)."""
    seen: set[str] = set()
    request = urllib.request.Request(
        f"{api}/v1/escalations?limit=100", headers={"Authorization": f"Bearer {token}"}
    )
    while not stop.wait(1.0):
        try:
            with urllib.request.urlopen(request, timeout=2.0) as response:
                items = json.loads(response.read())["items"]
        except (urllib.error.URLError, OSError, ValueError, KeyError):
            continue
        for item in reversed(items):
            seen_as = f"{item['escalation_id']}:{item.get('level')}"
            if seen_as in seen:
                continue
            seen.add(seen_as)
            print(escalation_line(item), file=out, flush=True)


def run_up(settings: Settings, *, policy_path: Path | None, demo: bool, demo_rate: float) -> int:
    supervisor = Supervisor(settings, policy_path=policy_path)
    stop_requested = threading.Event()  # tells the watcher and demo threads to stop

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # Only a plain append here. Event.set() takes the lock that the interrupted main
        # thread may be holding inside Event.wait(): a Ctrl-C then deadlocked asvat up.
        supervisor.signalled.append(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    code = 0
    threads: list[threading.Thread] = []
    started = time.monotonic()
    try:
        supervisor.start()
        if not supervisor.wait_ready() and not supervisor.signalled:
            supervisor.say(
                "asvat up: services did not become ready in time; see logs in "
                + str(supervisor.logs)
            )
            return 1
        s = settings
        api = f"http://{s.api_host}:{s.api_port}"
        ingest = f"http://{s.ingest_host}:{s.ingest_port}"
        supervisor.say(
            f"\nASVAT is up ({time.monotonic() - started:.1f} s).\n"
            f"  API:     {api}/v1/escalations  (docs {api}/docs)\n"
            f"  Ingest:  {ingest}/v1/incidents\n"
            f"  Dashboard: {api}/dashboard/\n"
            f"  Token (admin, for the dashboard and API; revoked when this stops):\n"
            f"    {supervisor.tokens['admin']}\n"
            f"  Worker:  http://{s.worker_host}:{s.worker_port}/readyz\n"
            f"  Metrics: {api}/metrics {ingest}/metrics http://{s.worker_host}:{s.worker_port}/metrics\n"
            f"  Data:    {supervisor.data}  (logs in {supervisor.logs})\n"
            "Press Ctrl-C to stop.\n"
        )
        watcher = threading.Thread(
            target=_watch_escalations,
            args=(api, supervisor.tokens["admin"], supervisor.out, stop_requested),
            daemon=True,
        )
        watcher.start()
        threads.append(watcher)
        if demo:
            feeder = supervisor.tokens["ingest"]
            threads.append(_start_demo(ingest, feeder, demo_rate, stop_requested, supervisor))
        while not supervisor.signalled:
            supervisor.check_children()
            time.sleep(0.5)
    except PortInUseError as exc:
        print(f"asvat up: {exc}", file=sys.stderr)
        code = 1
    except ChildExited as exc:
        print(f"asvat up: {exc}", file=sys.stderr)
        code = 1
    finally:
        stop_requested.set()
        supervisor.say("stopping...")
        supervisor.stop()
        for thread in threads:
            thread.join(timeout=5)
        supervisor.say("stopped.")
    return code


def _start_demo(
    ingest: str, token: str, rate: float, stop: threading.Event, supervisor: Supervisor
) -> threading.Thread:
    from asvat.demo import demo_burst, feed, northumbria_incidents
    from asvat.domain.timeutil import now_micros

    def run() -> None:
        from datetime import UTC, datetime

        now = datetime.fromtimestamp(now_micros() / 1e6, tz=UTC)
        burst = demo_burst(seed=2022)
        year = northumbria_incidents(seed=2022, shift_to=now)
        supervisor.say(
            f"demo: feeding {len(burst)} scripted incidents, then {len(year)} real Northumbria "
            f"2022 ASB records (synthetic callers, time-shifted to end now) at {rate:g}/s"
        )
        feed(ingest, burst + year, rate_per_s=rate, stop=stop, log=supervisor.say, token=token)

    thread = threading.Thread(target=run, name="demo-feed", daemon=True)
    thread.start()
    return thread
