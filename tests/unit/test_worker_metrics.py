"""The worker's scrape-time metrics: consumer lag, event-time lag and the last commit.

faust's consumer and monitor are stood in for by small fakes with the attributes the
metrics read (``assignment()``, ``highwater()``, the offsets committed); the same code runs
against a real worker in tests/integration/test_deployed.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from asvat.domain.detector import Detector
from asvat.domain.incident import IncidentEvent
from asvat.domain.location import Place
from asvat.domain.policy import default_policy
from asvat.settings import TOPIC_INCIDENTS
from services.repeat_detector.metrics import NO_LEVEL, WorkerMetrics, _CommitSensor, level_of


@dataclass(frozen=True)
class TP:
    topic: str
    partition: int


@dataclass
class FakeConsumer:
    highwaters: dict[TP, int | None]
    _committed_offset: dict[TP, int | None] = field(default_factory=dict)

    def assignment(self) -> set[TP]:
        return set(self.highwaters)

    def highwater(self, tp: TP) -> int | None:
        return self.highwaters[tp]


@dataclass
class FakeMonitor:
    tp_committed_offsets: dict[TP, int] = field(default_factory=dict)


@dataclass
class FakeApp:
    _consumer: FakeConsumer
    monitor: FakeMonitor = field(default_factory=FakeMonitor)
    sensors: set[Any] = field(default_factory=set)


def samples(metrics: WorkerMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_consumer_lag_is_highwater_minus_committed_per_assigned_incidents_partition() -> None:
    p0, p1, p2 = (TP(TOPIC_INCIDENTS, n) for n in range(3))
    changelog = TP("asvat-repeat-detector-incident-records-changelog", 0)
    consumer = FakeConsumer(
        {p0: 120, p1: 40, p2: None, changelog: 999},
        _committed_offset={p1: 10},  # committed before this worker started
    )
    app = FakeApp(consumer)
    app.monitor.tp_committed_offsets[p0] = 100  # committed by this worker
    metrics = WorkerMetrics(rules=["victim-28d"])
    metrics.observe(app, lambda: None)  # type: ignore[arg-type]
    found = samples(metrics)
    lag = "asvat_worker_consumer_lag_messages"
    assert found[(lag, (("partition", "0"),))] == 20
    assert found[(lag, (("partition", "1"),))] == 30
    assert (lag, (("partition", "2"),)) not in found  # nothing fetched there yet
    assert not any(key[0] == lag and ("partition", "3") in key[1] for key in found)


def test_event_time_lag_is_wall_clock_minus_the_newest_occurrence_applied() -> None:
    metrics = WorkerMetrics()
    metrics.observe(FakeApp(FakeConsumer({})), lambda: int((time.time() - 3600) * 1e6))  # type: ignore[arg-type]
    found = samples(metrics)
    assert 3599 <= found[("asvat_worker_event_time_lag_seconds", ())] <= 3610
    newest = found[("asvat_worker_newest_occurred_timestamp_seconds", ())]
    assert abs(newest - (time.time() - 3600)) < 10


def test_state_entries_are_read_from_the_detector_at_scrape_time() -> None:
    metrics = WorkerMetrics()
    detector = Detector(default_policy())
    metrics.observe(FakeApp(FakeConsumer({})), lambda: None, dict, detector.state_counts)  # type: ignore[arg-type]
    entries = "asvat_worker_state_entries"
    assert samples(metrics)[(entries, (("part", "incidents"),))] == 0
    detector.apply(
        IncidentEvent(
            event_id="E1", incident_id="I1", sequence=0, event_type="closed",
            occurred_at=1_700_000_000_000_000, reported_at=1_700_000_000_000_000,
            source="101", opening_code="HARS", closing_code="ASBN", victim_key=None,
            place=Place(430_000.0, 560_000.0, None),
        )
    )
    found = samples(metrics)
    assert found[(entries, (("part", "incidents"),))] == 1
    assert found[(entries, (("part", "integrity_findings"),))] == 1
    assert found[(entries, (("part", "escalation_episodes"),))] == 0


def test_before_any_event_there_is_no_event_time_lag_and_no_consumer() -> None:
    metrics = WorkerMetrics(rules=["victim-28d", "case-review"])
    found = samples(metrics)
    assert ("asvat_worker_event_time_lag_seconds", ()) not in found
    # Labelled counters exist at 0 from the start, so rate() works before the first event.
    assert found[("asvat_worker_events_processed_total", (("result", "applied"),))] == 0
    key = (("level", NO_LEVEL), ("rule", "case-review"))
    assert found[("asvat_worker_escalations_raised_total", key)] == 0
    assert found[("asvat_worker_late_events_total", (("kind", "unreadable"),))] == 0


def test_last_commit_moves_only_when_a_commit_advances_an_offset() -> None:
    app = FakeApp(FakeConsumer({}))
    metrics = WorkerMetrics()
    sensor = _CommitSensor(app, metrics)  # type: ignore[arg-type]
    sensor.on_commit_completed(None, None)  # nothing committed yet
    assert metrics.last_commit._value.get() == 0
    app.monitor.tp_committed_offsets[TP(TOPIC_INCIDENTS, 0)] = 5
    before = time.time()
    sensor.on_commit_completed(None, None)
    stamped = metrics.last_commit._value.get()
    assert stamped >= before
    sensor.on_commit_completed(None, None)  # the periodic commit with nothing new
    assert metrics.last_commit._value.get() == stamped


def test_level_is_read_from_the_item_or_none() -> None:
    @dataclass
    class WithLevel:
        level: str | None

    @dataclass
    class WithRiskLevel:
        risk_level: str

    assert level_of(WithRiskLevel("medium")) == "medium"
    assert level_of(WithLevel("high")) == "high"
    assert level_of(WithLevel(None)) == NO_LEVEL
    assert level_of(object()) == NO_LEVEL
