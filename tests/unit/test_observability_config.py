"""Prometheus configuration, alert rules and Grafana dashboards: checked by promtool, and
every metric they name is one the services' code declares.

The same names are checked against what the running services actually serve in
``tests/integration/test_deployed.py``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from exposed_metrics import (
    GRAFANA_DIR,
    PROMETHEUS_DIR,
    declared_names,
    names_in_promql,
    promtool,
)
from prometheus_client import generate_latest

from asvat.domain.policy import default_policy

DASHBOARDS = sorted((GRAFANA_DIR / "dashboards").glob("*.json"))
DATASOURCE_UID = "asvat-prometheus"
REQUIRED_ALERTS = {
    "AsvatWorkerStalled",
    "AsvatConsumerLagHigh",
    "AsvatDeadLetterRateHigh",
    "AsvatHighRiskEscalationUnacknowledged",
    "AsvatReviewOverdue",
}


@pytest.fixture(scope="module")
def declared() -> set[str]:
    return declared_names()


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text(encoding="utf-8"))
    return [rule for group in doc["groups"] for rule in group["rules"]]


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))  # collapsed rows hold their panels
    return found


# ---------------------------------------------------------------- Prometheus


def test_promtool_accepts_the_configuration_and_its_rule_files(tmp_path: Path) -> None:
    promtool("check", "config", "--syntax-only", "prometheus.yml", cwd=PROMETHEUS_DIR)
    # The full check also opens the files the configuration names: the rule file, and the
    # API token file compose mounts (present here as an empty file of the same name).
    config = (PROMETHEUS_DIR / "prometheus.yml").read_text(encoding="utf-8")
    token_files = re.findall(r"credentials_file: (\S+)", config)
    assert token_files == ["/run/secrets/prometheus_api_token"]
    for name in token_files:
        config = config.replace(name, str(tmp_path / Path(name).name))
        (tmp_path / Path(name).name).write_text("")
    (tmp_path / "prometheus.yml").write_text(config, encoding="utf-8")
    (tmp_path / "alerts.yml").write_text((PROMETHEUS_DIR / "alerts.yml").read_text())
    output = promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    assert "SUCCESS: 1 rule files found" in output


def test_promtool_accepts_the_alert_rules() -> None:
    output = promtool("check", "rules", "alerts.yml", cwd=PROMETHEUS_DIR)
    assert f"SUCCESS: {len(alert_rules())} rules found" in output


def test_promtool_unit_tests_of_every_alert_pass() -> None:
    output = promtool("test", "rules", "alerts_test.yml", cwd=PROMETHEUS_DIR)
    assert "SUCCESS" in output
    tests = yaml.safe_load((PROMETHEUS_DIR / "alerts_test.yml").read_text(encoding="utf-8"))
    tested = {
        case["alertname"]
        for test in tests["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")  # a test that sees the alert fire, not only stay quiet
    }
    assert tested == {rule["alert"] for rule in alert_rules()}


def test_the_required_alerts_exist_and_each_names_its_runbook_section() -> None:
    rules = {rule["alert"]: rule for rule in alert_rules()}
    assert set(rules) >= REQUIRED_ALERTS
    runbook = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    anchors = {_anchor(line) for line in runbook.splitlines() if line.startswith("#")}
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        page, _, anchor = rule["annotations"]["runbook"].partition("#")
        assert page == "docs/operations.md" and anchor in anchors, f"{name}: {anchor}"


def _anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = heading.lstrip("#").strip().lower()
    return re.sub(r"[^a-z0-9 _-]", "", text).replace(" ", "-")


def test_the_scrape_configuration_covers_the_three_services_on_their_ports() -> None:
    doc = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text(encoding="utf-8"))
    targets = {
        job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]]
        for job in doc["scrape_configs"]
    }
    assert targets["asvat-ingest"] == ["ingest:8001"]
    assert targets["asvat-worker"] == ["worker:8002"]
    assert targets["asvat-api"] == ["api:8000"]
    assert doc["rule_files"] == ["alerts.yml"]


def test_alert_expressions_name_only_declared_metrics(declared: set[str]) -> None:
    for rule in alert_rules():
        unknown = names_in_promql(rule["expr"]) - declared
        assert not unknown, f"{rule['alert']} names metrics no service declares: {unknown}"


# ---------------------------------------------------------------- exposition


def test_promtool_finds_no_problem_in_each_services_metrics() -> None:
    """Names, units, suffixes and help texts pass promtool's lint, with samples in every
    metric (the running services are checked too, in test_deployed.py)."""
    from services.api.metrics import ApiMetrics
    from services.ingest.app import IngestMetrics
    from services.repeat_detector.metrics import WorkerMetrics

    ingest = IngestMetrics()
    ingest.received.inc(3)
    ingest.accepted.inc(2)
    ingest.rejected.labels(reason="invalid_record").inc()
    ingest.publish_seconds.observe(0.02)
    worker = WorkerMetrics(rules=[rule.id for rule in default_policy().rules])
    worker.events.labels("applied").inc()
    worker.assessments.labels("none", "victim-28d").inc()
    worker.escalations.labels("high", "victim-28d").inc()
    worker.batch_seconds.observe(0.01)
    api = ApiMetrics()
    api.requests.labels(route="/v1/escalations", method="GET", status="200").inc()
    api.request_seconds.labels(route="/v1/escalations", status="200").observe(0.003)
    for registry in (ingest.registry, worker.registry, api.registry):
        promtool("check", "metrics", stdin=generate_latest(registry).decode())


def test_metric_names_follow_the_conventions(declared: set[str]) -> None:
    units = ("_seconds", "_messages", "_connections", "_incidents", "_clients")
    for name in declared:
        # asvat_process_: what every service says of its own process (the job tells which).
        assert name.startswith(
            ("asvat_ingest_", "asvat_worker_", "asvat_api_", "asvat_process_")
        ), name
        assert not re.search(r"_(ms|milliseconds|minutes|hours|bytes_total_total)$", name), name
    # Every latency is a histogram, in seconds.
    for latency in ("asvat_ingest_publish", "asvat_api_request", "asvat_worker_batch"):
        assert f"{latency}_seconds_bucket" in declared
    # Gauges that measure something say what in their name.
    for gauge in (
        "asvat_worker_consumer_lag_messages",
        "asvat_worker_event_time_lag_seconds",
        "asvat_worker_last_commit_timestamp_seconds",
        "asvat_api_db_pool_connections",
        "asvat_api_oldest_unacknowledged_high_risk_escalation_age_seconds",
    ):
        assert gauge in declared and gauge.endswith(units), gauge


# ---------------------------------------------------------------- Grafana


def test_grafana_provisions_the_prometheus_datasource_and_the_dashboards_folder() -> None:
    provisioning = GRAFANA_DIR / "provisioning"
    sources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    (source,) = sources["datasources"]
    assert (source["type"], source["uid"]) == ("prometheus", DATASOURCE_UID)
    assert source["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((provisioning / "dashboards" / "asvat.yml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards/asvat"


def test_there_are_an_operations_and_a_control_room_dashboard() -> None:
    titles = {json.loads(path.read_text())["uid"] for path in DASHBOARDS}
    assert titles == {"asvat-operations", "asvat-control-room"}


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_is_valid_and_queries_only_declared_metrics(
    path: Path, declared: set[str]
) -> None:
    dashboard = json.loads(path.read_text(encoding="utf-8"))
    assert dashboard["title"] and dashboard["uid"] and dashboard["schemaVersion"] >= 36
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    queried = 0
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == DATASOURCE_UID, panel["title"]
        assert panel["targets"], f"{panel['title']}: no query"
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for target in panel["targets"]:
            names = names_in_promql(target["expr"])
            # Every query reads a metric of ours, or Prometheus' own `up` of our targets.
            assert names or re.search(r'\bup\{job=~"asvat-', target["expr"]), panel["title"]
            unknown = names - declared
            assert not unknown, f"{path.name}: {panel['title']}: unknown metrics {unknown}"
            queried += 1
    assert queried >= 8
    for variable in dashboard["templating"]["list"]:
        assert names_in_promql(variable["definition"]) <= declared


def test_control_room_shows_escalations_by_level_and_area_ageing_and_reviews() -> None:
    dashboard = json.loads((GRAFANA_DIR / "dashboards" / "control-room.json").read_text())
    exprs = " ".join(t["expr"] for p in panels(dashboard) for t in p.get("targets", []))
    assert "sum by (level)" in exprs and "sum by (area, level)" in exprs
    for name in (
        "asvat_api_oldest_unacknowledged_high_risk_escalation_age_seconds",
        "asvat_api_oldest_open_escalation_age_seconds",
        "asvat_api_reviews_due",
        "asvat_api_reviews_overdue",
    ):
        assert name in exprs
