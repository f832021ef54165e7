"""A live detector's memory stays bounded: what it keeps beside the engine's windows (integrity
findings issued, case-review events and counted complaints, closes) is forgotten with the
incidents it concerns, and forgetting changes nothing it issues."""

from __future__ import annotations

from asvat.domain.detector import Detector, DetectorOutcome
from asvat.domain.incident import IncidentEvent
from asvat.domain.policy import default_policy
from tests.unit.test_detector import DAY, HOUR, event

EVERY = 7  # days between groups of incidents


def stream(days: int) -> list[IncidentEvent]:
    """Every ``EVERY`` days: an incident finalised as ASB that opened as harassment (an
    integrity finding), and a victim of their own with three complaints in three days (a
    case review and an escalation); each group far from the others."""
    events = []
    for group, day in enumerate(range(0, days, EVERY)):
        x = 5_000.0 * (group % 40)
        events.append(event(4 * group, day, code="HARS", closing="ASBN", victim=None, x=x))
        victim = f"{group:064x}"
        for n in range(1, 4):
            events.append(event(4 * group + n, day + n, victim=victim, x=x + 1_000.0 + n))
    return sorted(events, key=lambda e: (e.occurred_at, e.incident_id))


def run(detector: Detector, events: list[IncidentEvent]) -> list[tuple[object, ...]]:
    """Apply ``events``, closing every escalation an hour after it is raised; what was
    issued, comparable between detectors."""
    issued: list[tuple[object, ...]] = []
    for incident in events:
        outcome = detector.apply(incident)
        closes = [e for e in outcome.escalations if e.event == "raised"]
        for raised in closes:
            closed = detector.close(
                raised.escalation_id, raised.subject_type, raised.subject_key,
                at=incident.occurred_at + HOUR,
            )
            issued.append(("close", raised.escalation_id, _summary(closed)))
        issued.append((incident.incident_id, _summary(outcome)))
    return issued


def _summary(outcome: DetectorOutcome) -> tuple[object, ...]:
    return (
        tuple(a.content() for a in outcome.assessments),
        tuple(e.content() for e in outcome.escalations),
        tuple(c.content() for c in outcome.case_reviews),
        tuple(f.content() for f in outcome.integrity),
    )


def test_state_beside_the_windows_is_forgotten_with_its_incidents() -> None:
    policy = default_policy()
    retention_days = (policy.longest_window + policy.max_lateness) // DAY
    days = 3 * retention_days
    detector = Detector(policy)
    run(detector, stream(days))
    groups = days // EVERY
    # Only the groups within the retention (plus a day's pruning step) are remembered.
    within = retention_days // EVERY + 2
    counts = detector.state_counts()
    assert groups >= 2 * within  # most groups are past the retention
    assert 0 < counts["integrity_findings"] <= within
    assert 0 < counts["case_review_events"] <= within
    assert 0 < counts["case_review_subjects"] <= within
    assert 0 < counts["closed_subjects"] <= within
    # Episode numbers are kept for every subject ever escalated: ids must never repeat.
    assert counts["escalation_episodes"] >= groups
    assert detector.engine.forgotten_before is not None
    snapshot = detector.snapshot(lambda _: True, lambda _: True)
    assert snapshot.case_reviews
    assert all(c.occurred_at >= detector.engine.forgotten_before for c in snapshot.case_reviews)


def test_forgetting_changes_nothing_the_detector_issues() -> None:
    policy = default_policy()
    days = 2 * (policy.longest_window + policy.max_lateness) // DAY
    events = stream(days)
    forgetting = run(Detector(policy), events)
    remembering_detector = Detector(policy, forget=False)
    remembering = run(remembering_detector, events)
    assert forgetting == remembering
    # and the comparison is not vacuous: both issued findings, case reviews and closes
    assert any(item[0] == "close" for item in forgetting)
    assert remembering_detector.state_counts()["integrity_findings"] == days // EVERY + 1
