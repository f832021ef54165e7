"""Detection engine behaviour that the property tests do not cover: escalations, late
events, pruning, restore, re-issue on out-of-order arrival."""

from __future__ import annotations

from asvat.domain.engine import DetectionEngine
from asvat.domain.incident import IncidentEvent
from asvat.domain.location import Place
from asvat.domain.policy import default_policy, load_policy_text
from asvat.domain.timeutil import parse_timestamp

DAY = 86_400 * 1_000_000
T0 = parse_timestamp("2024-03-01T10:00:00Z")


def event(
    n: int,
    day: float,
    *,
    seq: int = 0,
    code: str = "ASBN",
    victim: str | None = "victim-a",
    x: float = 0.0,
    uprn: str | None = None,
    event_type: str = "opened",
    report_delay_days: float = 0.0,
) -> IncidentEvent:
    occurred = T0 + int(day * DAY)
    return IncidentEvent(
        event_id=f"E{n}-{seq}",
        incident_id=f"I{n}",
        sequence=seq,
        event_type=event_type,
        occurred_at=occurred,
        reported_at=occurred + int(report_delay_days * DAY),
        source="101",
        opening_code=code,
        closing_code=None,
        victim_key=victim,
        place=Place(430_000.0 + x, 560_000.0, uprn),
    )


def test_third_incident_in_28_days_meets_the_rule_and_raises_one_escalation() -> None:
    engine = DetectionEngine(default_policy())
    first = engine.apply(event(1, 0, x=0))
    second = engine.apply(event(2, 10, x=1000))
    third = engine.apply(event(3, 20, x=2000))
    assert [a.rules_met for a in first.assessments] == [()]
    assert [a.rules_met for a in second.assessments] == [()]
    assert third.assessments[0].rules_met == ("case-review", "victim-28d")
    assert third.assessments[0].contributing["victim-28d"] == ("I1", "I2", "I3")
    assert {(e.subject_type, e.rule_id) for e in third.escalations} == {
        ("victim", "victim-28d"),
        ("victim", "case-review"),
    }
    fourth = engine.apply(event(4, 21, x=3000))
    assert fourth.assessments[0].rules_met == ("case-review", "victim-28d")
    assert fourth.escalations == []  # raised once per subject and rule


def test_out_of_order_arrival_reissues_the_later_incident() -> None:
    engine = DetectionEngine(default_policy())
    engine.apply(event(3, 20, x=2000))
    engine.apply(event(2, 10, x=1000))
    late_arrival = engine.apply(event(1, 0, x=0))
    reissued = {a.incident_id: a for a in late_arrival.assessments}
    assert reissued["I3"].rules_met == ("case-review", "victim-28d")
    assert reissued["I1"].rule_counts["victim-28d"] == 1
    assert [e.incident_id for e in late_arrival.escalations] == ["I3", "I3"]


def test_duplicate_and_superseded_events_change_nothing() -> None:
    engine = DetectionEngine(default_policy())
    engine.apply(event(1, 0, seq=2))
    assert engine.apply(event(1, 0, seq=2)).duplicate
    older = engine.apply(event(1, 5, seq=1))
    assert older.superseded and older.assessments == []
    assessment = engine.assessment("I1")
    assert assessment is not None and assessment.occurred_at == T0


def test_reclassification_out_of_scope_reissues_neighbours() -> None:
    engine = DetectionEngine(default_policy())
    for n, day in ((1, 0), (2, 1), (3, 2)):
        engine.apply(event(n, day, x=n * 1000))
    outcome = engine.apply(event(1, 0, seq=1, code="NFA", x=1000))
    changed = {a.incident_id: a for a in outcome.assessments}
    assert changed["I1"].in_scope is False and changed["I1"].classification == "other"
    assert changed["I3"].rules_met == ()
    assert "I1" not in engine.final_assessments()


def test_location_rule_counts_radius_and_uprn() -> None:
    engine = DetectionEngine(default_policy())
    engine.apply(event(1, 0, victim=None, x=0))
    engine.apply(event(2, 1, victim=None, x=99.9))
    engine.apply(event(3, 2, victim=None, x=5000, uprn="100"))
    engine.apply(event(4, 3, victim=None, x=-50, uprn="100"))  # same UPRN as I3, far away
    outcome = engine.apply(event(5, 4, victim=None, x=50))
    assessment = outcome.assessments[-1]
    assert assessment.incident_id == "I5"
    assert assessment.rule_counts["location-7d-100m"] == 4  # I1, I2, I4 (radius) and itself
    assert assessment.contributing["location-7d-100m"] == ("I1", "I2", "I4", "I5")
    assert engine.assessment("I4").rule_counts["location-7d-100m"] == 3  # type: ignore[union-attr]
    escalation = outcome.escalations[0]
    assert (escalation.subject_type, escalation.subject_key) == ("location", "bng:430050:560000")


def test_case_review_counts_only_incidents_reported_within_a_month() -> None:
    engine = DetectionEngine(default_policy())
    engine.apply(event(1, 0, x=0, report_delay_days=40))
    engine.apply(event(2, 50, x=1000))
    outcome = engine.apply(event(3, 100, x=2000))
    assert outcome.assessments[-1].rule_counts["case-review"] == 2
    engine.apply(event(4, 101, x=3000, report_delay_days=31))
    assessment = engine.assessment("I4")
    assert assessment is not None and assessment.rule_counts["case-review"] == 3
    assert "case-review" in assessment.rules_met


def test_events_beyond_max_lateness_are_not_applied_and_say_why() -> None:
    policy = load_policy_text(
        """
codes: {ASBN: {class: asb, asb_category: nuisance}}
scope: [asb]
max_lateness: 10d
rules: [{id: v, subject: victim, window: 3d, threshold: 2}]
"""
    )
    engine = DetectionEngine(policy)
    engine.apply(event(1, 30))
    outcome = engine.apply(event(2, 19.9))
    assert outcome.not_applied is not None and outcome.not_applied.kind == "late"
    assert "max_lateness" in outcome.not_applied.reason
    assert engine.apply(event(3, 20)).not_applied is None


def test_unknown_code_is_rejected_with_the_code_named() -> None:
    engine = DetectionEngine(default_policy())
    outcome = engine.apply(event(1, 0, code="XYZ"))
    assert outcome.not_applied is not None and outcome.not_applied.kind == "rejected"
    assert "'XYZ'" in outcome.not_applied.reason


def test_old_incidents_are_pruned_so_memory_is_bounded() -> None:
    policy = load_policy_text(
        """
codes: {ASBN: {class: asb, asb_category: nuisance}}
scope: [asb]
max_lateness: 2d
rules: [{id: v, subject: victim, window: 3d, threshold: 2}]
"""
    )
    engine = DetectionEngine(policy)
    for n in range(100):
        engine.apply(event(n, n, victim=f"v{n % 3}"))
    # retention = 3d window + 2d lateness: only the last ~6 days of incidents remain
    assert engine.retained_incidents <= 7
    assert engine.assessment("I99") is not None and engine.assessment("I0") is None


def test_restore_rebuilds_state_without_reissuing() -> None:
    events = [event(n, n * 2, x=n * 10.0) for n in range(6)]
    live = DetectionEngine(default_policy())
    for e in events:
        live.apply(e)
    restored = DetectionEngine(default_policy())
    restored.restore(live.current_events())
    assert restored.final_assessments() == live.final_assessments()
    # applying an already-applied event after a restore issues nothing
    again = restored.apply(events[-1])
    assert again.duplicate and again.assessments == [] and again.escalations == []
    # and a new event issues exactly what the never-stopped engine issues
    new = event(7, 11, x=70.0)
    assert restored.apply(new).assessments == live.apply(new).assessments
