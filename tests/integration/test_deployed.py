"""The services as docker-compose.yml deploys them, and a real Prometheus server scraping them.

No Docker engine runs here, so the compose file is read as compose reads it
(``compose_file.py``) and each service runs as a process with that service's own
environment and command. What has to differ from a container is rewritten, and only that:
the broker address ``kafka:9092`` becomes an embedded broker started for this module, the
database host ``postgres`` becomes the local PostgreSQL (database ``test``, a schema of its
own, trust authentication), ``/data`` a temporary directory, ``0.0.0.0`` loopback, each port
a free one, and the two consumer groups are made unique. Everything else — production
mode, the HMAC key from ``.env``, the psycopg driver, the log level, the partitions — is the
file's. The one-shot ``topics`` service creates the topics first, as in compose.

Then ``/usr/bin/prometheus`` (Debian package ``prometheus``) runs with
``deploy/prometheus/prometheus.yml`` (targets pointed at those ports, intervals 1 s) and
``alerts.yml``, and the metrics are read back through its HTTP API.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
import yaml
from compose_file import environment, load_compose
from conftest import free_port
from exposed_metrics import (
    GRAFANA_DIR,
    PROMETHEUS_DIR,
    declared_names,
    names_in_promql,
    promtool,
    sample_names,
    tool,
)
from psycopg import sql
from sqlalchemy.engine import make_url

from asvat.embedded.broker import EmbeddedBroker

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
SERVICES = ("ingest", "worker", "api")
PORT_VARIABLE = {
    "ingest": "ASVAT_INGEST_PORT",
    "worker": "ASVAT_WORKER_PORT",
    "api": "ASVAT_API_PORT",
}
JOB = {"ingest": "asvat-ingest", "worker": "asvat-worker", "api": "asvat-api"}
#: Upper bounds of every wait in this module.
READY_TIMEOUT_S = 90.0
SCRAPE_TIMEOUT_S = 30.0
#: Terminal control sequences faust's console spinner writes to stdout.
_CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|[\x00-\x08\x0b-\x1f]")

T = TypeVar("T")


def wait_for(what: str, timeout: float, probe: Callable[[], T | None]) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.25)


def get(url: str, timeout: float = 3.0, token: str | None = None) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=timeout
        ) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


@dataclass
class Deployed:
    ports: dict[str, int]
    processes: dict[str, subprocess.Popen[bytes]]
    logs: dict[str, Path]
    env: dict[str, dict[str, str]]
    bootstrap: str
    hmac_key: str
    #: Bearer tokens made with `asvat token create`, by role (viewer, ingest).
    tokens: dict[str, str] = field(default_factory=dict)
    scraped: dict[str, str] = field(default_factory=dict)

    def url(self, service: str, path: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}{path}"

    def metrics(self, service: str) -> str:
        # The API's /metrics needs a viewer token, as Prometheus has in compose.
        token = self.tokens["viewer"] if service == "api" else None
        status, body = get(self.url(service, "/metrics"), token=token)
        assert status == 200, f"{service} /metrics answered {status}"
        text = body.decode()
        self.scraped[service] = text
        return text


def local_database_url(compose_url: str, schema: str) -> str:
    """The compose file's database URL, pointed at the local PostgreSQL."""
    url = make_url(compose_url)
    assert url.drivername == "postgresql+psycopg", url.drivername
    assert (url.host, url.port, url.database) == ("postgres", 5432, "asvat")
    local = url.set(host="127.0.0.1", username="postgres", password=None, database="test")
    local = local.update_query_dict({"options": f"-csearch_path={schema}"})
    return local.render_as_string(hide_password=False)


def service_env(
    name: str, compose_env: dict[str, str], *, bootstrap: str, data: Path, port: int, db: str
) -> dict[str, str]:
    env = dict(compose_env)
    assert env.pop("ASVAT_KAFKA_BOOTSTRAP") == "kafka:9092"
    env["ASVAT_KAFKA_BOOTSTRAP"] = bootstrap
    assert env["ASVAT_DATA_DIR"] == "/data"
    env["ASVAT_DATA_DIR"] = str(data)
    for variable, value in list(env.items()):
        if variable.endswith("_HOST") and value == "0.0.0.0":
            env[variable] = "127.0.0.1"
    if name in PORT_VARIABLE:
        env[PORT_VARIABLE[name]] = str(port)
    for variable in ("ASVAT_DATABASE_URL", "ASVAT_EVENT_LOG_URL"):
        if variable in env:
            env[variable] = local_database_url(env[variable], db)
    # Unique groups: nothing else on this broker, but a re-run must not inherit offsets.
    suffix = uuid.uuid4().hex[:8]
    env["ASVAT_CONSUMER_GROUP"] = f"asvat-repeat-detector-{suffix}"
    env["ASVAT_API_CONSUMER_GROUP"] = f"asvat-api-{suffix}"
    base = {k: v for k, v in os.environ.items() if not k.startswith("ASVAT_")}
    return {**base, **env, "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    root = tmp_path_factory.mktemp("deployed")
    dotenv = {
        "ASVAT_HMAC_KEY": secrets.token_hex(32),
        "POSTGRES_PASSWORD": secrets.token_hex(16),
        "GRAFANA_ADMIN_PASSWORD": secrets.token_hex(16),
    }
    services = load_compose(dotenv)["services"]
    schema = f"asvat_deployed_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN}: {exc}", pytrace=False)
    admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    broker = EmbeddedBroker(free_port(), log_path=root / "broker.log")
    broker.start()
    processes: dict[str, subprocess.Popen[bytes]] = {}
    ports = {name: free_port() for name in SERVICES}
    try:
        envs = {
            name: service_env(
                name,
                environment(services[name]),
                bootstrap=broker.bootstrap,
                data=root / name,
                port=ports.get(name, 0),
                db=schema,
            )
            for name in ("topics", *SERVICES)
        }
        topics = subprocess.run(
            [sys.executable, "-m", "asvat", *services["topics"]["command"]],
            env=envs["topics"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert topics.returncode == 0, topics.stderr
        logs = {name: root / f"{name}.log" for name in SERVICES}
        for name in SERVICES:
            with logs[name].open("wb") as sink:
                processes[name] = subprocess.Popen(
                    [sys.executable, "-m", "asvat", *services[name]["command"]],
                    env=envs[name],
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        system = Deployed(ports, processes, logs, envs, broker.bootstrap, dotenv["ASVAT_HMAC_KEY"])
        for name in SERVICES:

            def ready(name: str = name) -> bool:
                code = processes[name].poll()
                assert code is None, f"{name} exited {code}:\n{logs[name].read_text()[-3000:]}"
                return get(system.url(name, "/readyz"))[0] == 200

            wait_for(f"{name} /readyz", READY_TIMEOUT_S, ready)
        for role in ("viewer", "ingest"):
            made = subprocess.run(
                [sys.executable, "-m", "asvat", "token", "create", "--role", role],
                env=envs["api"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert made.returncode == 0, made.stderr
            system.tokens[role] = made.stdout.split()[-1]
        yield system
    finally:
        for process in processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes.values():
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        broker.stop()
        admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
        admin.close()


@dataclass
class Prometheus:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def query(self, promql: str) -> list[dict[str, Any]]:
        status, body = get(f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
        assert status == 200, body[:500]
        answer = json.loads(body)
        assert answer["status"] == "success", answer
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result


@pytest.fixture(scope="module")
def prometheus(
    deployed: Deployed, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    """The real Prometheus server on the shipped configuration, scraping the services."""
    root = tmp_path_factory.mktemp("prometheus")
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text(encoding="utf-8"))
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    config["rule_files"] = [str(PROMETHEUS_DIR / name) for name in config["rule_files"]]
    port = free_port()
    token_file = root / "prometheus_api_token"
    token_file.write_text(deployed.tokens["viewer"])
    for job in config["scrape_configs"]:
        service = next((s for s, j in JOB.items() if j == job["job_name"]), None)
        target = f"127.0.0.1:{deployed.ports[service] if service else port}"
        for static in job["static_configs"]:
            static["targets"] = [target]
        if "authorization" in job:  # compose mounts the token at /run/secrets/…
            assert job["authorization"]["credentials_file"] == "/run/secrets/prometheus_api_token"
            job["authorization"]["credentials_file"] = str(token_file)
    path = root / "prometheus.yml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    promtool("check", "config", str(path))
    log = root / "prometheus.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [
                tool("prometheus"),
                f"--config.file={path}",
                f"--storage.tsdb.path={root / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Prometheus(f"http://127.0.0.1:{port}", process, log)
    try:

        def ready() -> bool:
            assert process.poll() is None, f"prometheus exited:\n{log.read_text()[-3000:]}"
            return get(f"{server.url}/-/ready")[0] == 200

        wait_for("Prometheus to be ready", SCRAPE_TIMEOUT_S, ready)
        yield server
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def incident(n: int, phone: str = "07412 345678") -> dict[str, Any]:
    """A valid raw event; ``n`` (0 to 27) is also its day in October 2026."""
    return {
        "event_id": f"DEPLOYED-{n}-0",
        "incident_id": f"DEPLOYED-{n}",
        "sequence": 0,
        "event_type": "opened",
        "occurred_at": f"2026-10-{n + 1:02d}T21:15:00Z",
        "reported_at": f"2026-10-{n + 1:02d}T21:20:00Z",
        "source": "101",
        "opening_code": "ASBP",
        "closing_code": None,
        "caller": {"phone": phone},
        "location": {"lat": 54.9783, "lon": -1.6178 + n * 0.01},
    }


def post_incidents(deployed: Deployed, events: list[dict[str, Any]]) -> None:
    request = urllib.request.Request(
        deployed.url("ingest", "/v1/incidents"),
        data=json.dumps(events).encode(),
        headers={
            "Content-Type": "application/json",
            "Authorization": f"Bearer {deployed.tokens['ingest']}",
        },
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            assert response.status == 202
    except urllib.error.HTTPError as error:
        raise AssertionError(f"ingest answered {error.code}: {error.read()[:2000]!r}") from None


# ---------------------------------------------------------------- the services


def test_services_start_ready_with_the_compose_environment(deployed: Deployed) -> None:
    assert deployed.env["ingest"]["ASVAT_ENV"] == "production"  # so the key is required
    assert deployed.env["ingest"]["ASVAT_HMAC_KEY"] == deployed.hmac_key
    assert deployed.env["api"]["ASVAT_DATABASE_URL"].startswith("postgresql+psycopg://")
    status, body = get(deployed.url("api", "/readyz"))
    assert status == 200 and json.loads(body)["checks"] == {"database": "ok", "broker": "ok"}
    for name in SERVICES:
        assert get(deployed.url(name, "/healthz"))[0] == 200


def test_promtool_accepts_what_each_running_service_serves(deployed: Deployed) -> None:
    for name in SERVICES:
        promtool("check", "metrics", stdin=deployed.metrics(name))


def test_running_services_expose_only_declared_metrics_and_the_required_ones(
    deployed: Deployed,
) -> None:
    declared = declared_names()
    served = {name: sample_names(deployed.metrics(name)) for name in SERVICES}
    for name, names in served.items():
        ours = {n for n in names if n.startswith("asvat_")}
        assert ours <= declared, f"{name} serves undeclared {ours - declared}"
        assert ours, name
    required = {
        "ingest": {
            "asvat_ingest_records_received_total",
            "asvat_ingest_records_accepted_total",
            "asvat_ingest_records_rejected_total",
            "asvat_ingest_dead_letters_total",
            "asvat_process_gc_pause_seconds_count",
        },
        "worker": {
            "asvat_worker_events_processed_total",
            "asvat_worker_late_events_total",
            "asvat_worker_retained_incidents",
            "asvat_worker_last_commit_timestamp_seconds",
            "asvat_process_gc_pause_seconds_count",
        },
        "api": {
            "asvat_api_live_alert_clients",
            "asvat_api_db_pool_connections",
            "asvat_api_unacknowledged_high_risk_escalations",
            "asvat_api_oldest_unacknowledged_high_risk_escalation_age_seconds",
            "asvat_api_reviews_overdue",
            "asvat_api_database_stats_up",
            "asvat_process_gc_pause_seconds_count",
        },
    }
    for name, names in required.items():
        assert names <= served[name], f"{name} lacks {names - served[name]}"


def test_dashboards_and_alerts_query_metrics_the_services_expose(deployed: Deployed) -> None:
    exposed = declared_names()
    for name in SERVICES:
        exposed |= sample_names(deployed.metrics(name))
    queries: list[tuple[str, str]] = []
    for path in sorted((GRAFANA_DIR / "dashboards").glob("*.json")):
        dashboard = json.loads(path.read_text(encoding="utf-8"))
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                queries.append((f"{path.name}: {panel['title']}", target["expr"]))
    alerts = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text(encoding="utf-8"))
    for group in alerts["groups"]:
        for rule in group["rules"]:
            queries.append((rule["alert"], rule["expr"]))
    assert len(queries) > 20
    for where, expr in queries:
        unknown = names_in_promql(expr) - exposed
        assert not unknown, f"{where}: {unknown} is exposed by no service"


def test_every_log_line_is_json_with_the_service_name(deployed: Deployed) -> None:
    post_incidents(deployed, [incident(20, phone="0191 498 0123")])
    wait_for(
        "the ingest log line naming the event",
        10,
        lambda: "DEPLOYED-20-0" in deployed.logs["ingest"].read_text(),
    )
    for name in SERVICES:
        lines = [
            _CONTROL.sub("", line)
            for line in deployed.logs[name].read_text(encoding="utf-8").splitlines()
        ]
        records = []
        for line in filter(str.strip, lines):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise AssertionError(f"{name} wrote a line that is not JSON: {line!r}") from None
        assert records, name
        assert {r["service"] for r in records} == {name}
    accepted = [
        json.loads(_CONTROL.sub("", line))
        for line in deployed.logs["ingest"].read_text().splitlines()
        if "DEPLOYED-20-0" in line
    ]
    assert accepted[0]["event_id"] == "DEPLOYED-20-0"
    assert accepted[0]["incident_id"] == "DEPLOYED-20"
    for name in SERVICES:
        text = deployed.logs[name].read_text()
        for raw in ("7412", "498 0123", "4980123"):
            assert raw not in text, f"raw phone {raw} in the {name} log"


# ---------------------------------------------------------------- Prometheus


def test_prometheus_scrapes_all_three_services(prometheus: Prometheus) -> None:
    def all_up() -> dict[str, str] | None:
        found = {r["metric"]["job"]: r["value"][1] for r in prometheus.query('up{job=~"asvat-.*"}')}
        return found if found == {job: "1" for job in JOB.values()} else None

    wait_for("every asvat target up in Prometheus", SCRAPE_TIMEOUT_S, all_up)


def test_metrics_read_back_through_prometheus_follow_real_traffic(
    deployed: Deployed, prometheus: Prometheus
) -> None:
    def accepted() -> float:
        result = prometheus.query("sum(asvat_ingest_records_accepted_total)")
        return float(result[0]["value"][1]) if result else 0.0

    before = accepted()
    post_incidents(deployed, [incident(n) for n in range(3)])

    def grown() -> float | None:
        value = accepted()
        return value if value >= before + 3 else None

    assert wait_for("Prometheus to see 3 more accepted records", SCRAPE_TIMEOUT_S, grown) == (
        before + 3
    )

    def applied() -> bool:
        result = prometheus.query('sum(asvat_worker_events_processed_total{result="applied"})')
        return bool(result) and float(result[0]["value"][1]) >= 3

    wait_for("the worker's applied events in Prometheus", SCRAPE_TIMEOUT_S, applied)

    def escalated() -> bool:
        result = prometheus.query('sum(asvat_worker_escalations_raised_total{rule="victim-28d"})')
        return bool(result) and float(result[0]["value"][1]) >= 1

    # Three reports from one caller within 28 days: the victim rule is met.
    wait_for("the victim-28d escalation counted in Prometheus", SCRAPE_TIMEOUT_S, escalated)
    lag = prometheus.query("max(asvat_worker_event_time_lag_seconds)")
    assert lag and float(lag[0]["value"][1]) > 0
    consumed = prometheus.query(
        'sum(asvat_api_messages_consumed_total{topic="asvat.escalations.v1"})'
    )
    assert consumed is not None


def test_prometheus_evaluates_every_alert_rule_without_error(prometheus: Prometheus) -> None:
    def evaluated() -> list[dict[str, Any]] | None:
        status, body = get(f"{prometheus.url}/api/v1/rules")
        if status != 200:
            return None
        rules = [r for g in json.loads(body)["data"]["groups"] for r in g["rules"]]
        done = all(
            r.get("lastEvaluation", "").startswith("2")
            and not r["lastEvaluation"].startswith("0001")
            for r in rules
        )
        return rules if rules and done else None

    rules = wait_for("every rule evaluated once", SCRAPE_TIMEOUT_S, evaluated)
    assert {r["name"] for r in rules} >= {
        "AsvatWorkerStalled",
        "AsvatConsumerLagHigh",
        "AsvatDeadLetterRateHigh",
        "AsvatHighRiskEscalationUnacknowledged",
        "AsvatReviewOverdue",
    }
    for rule in rules:
        assert rule["health"] == "ok", f"{rule['name']}: {rule.get('lastError')}"
    firing = [r["name"] for r in rules if r["state"] == "firing"]
    assert firing == [], f"a healthy system fires {firing}"
