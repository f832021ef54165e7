"""The detector: the engine's windows plus risk, case review, integrity and escalations."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from asvat.domain.assessment import Assessment
from asvat.domain.detector import Detector, DetectorOutcome
from asvat.domain.identity import pseudonymise_event
from asvat.domain.incident import IncidentEvent
from asvat.domain.location import Place
from asvat.domain.policy import PolicyError, default_policy, load_policy_text
from asvat.domain.timeutil import parse_timestamp

DAY = 86_400 * 1_000_000
HOUR = 3_600 * 1_000_000
T0 = parse_timestamp("2024-03-01T10:00:00Z")


def event(
    n: int,
    day: float,
    *,
    seq: int = 0,
    code: str = "ASBN",
    closing: str | None = None,
    victim: str | None = "a" * 64,
    x: float = 0.0,
    event_type: str = "opened",
    vulnerability: frozenset[str] = frozenset(),
    description: str | None = None,
) -> IncidentEvent:
    occurred = T0 + int(day * DAY)
    return IncidentEvent(
        event_id=f"E{n}-{seq}",
        incident_id=f"I{n}",
        sequence=seq,
        event_type=event_type,
        occurred_at=occurred,
        reported_at=occurred + HOUR,
        source="101",
        opening_code=code,
        closing_code=closing,
        victim_key=victim,
        place=Place(430_000.0 + x, 560_000.0, None),
        vulnerability=vulnerability,
        description=description,
    )


def issued(outcome: DetectorOutcome, incident_id: str) -> Assessment:
    """The assessment of ``incident_id`` that applying an event issued."""
    [found] = [a for a in outcome.assessments if a.incident_id == incident_id]
    return found


def test_a_repeat_victim_is_raised_at_medium_with_reasons_and_tasking() -> None:
    detector = Detector(default_policy())
    assert detector.apply(event(1, 0, x=0)).escalations == []
    assert detector.apply(event(2, 5, x=1000)).escalations == []
    third = detector.apply(event(3, 10, x=2000))
    assessment = issued(third, "I3")
    assert assessment.risk_level == "medium"
    rule_reasons = {r["rule_id"]: r for r in assessment.reasons if r["factor"] == "rule"}
    assert rule_reasons["victim-28d"]["incident_ids"] == ["I1", "I2", "I3"]
    assert sum(r["weight"] for r in assessment.reasons) == assessment.risk_score
    [raised] = third.escalations
    assert (raised.event, raised.subject_type, raised.level) == ("raised", "victim", "medium")
    assert raised.incident_id == "I3"
    assert raised.tasking is not None and raised.tasking.actions
    assert all(a.due_at is None or a.due_at > raised.at for a in raised.tasking.actions)


def test_rising_risk_upgrades_and_falling_risk_never_downgrades() -> None:
    detector = Detector(default_policy())
    events = [event(n, n, x=n * 1000.0) for n in range(1, 8)]
    issued = [e for ev in events for e in detector.apply(ev).escalations]
    assert [(e.event, e.level) for e in issued] == [("raised", "medium"), ("upgraded", "high")]
    assert issued[0].escalation_id == issued[1].escalation_id
    assert issued[0].event_id != issued[1].event_id
    # cancelling most incidents lowers the assessments but never the escalation
    later = [
        detector.apply(event(n, n, seq=1, x=n * 1000.0, event_type="cancelled"))
        for n in range(1, 7)
    ]
    assert all(outcome.escalations == [] for outcome in later)
    last = detector.assessment("I7")
    assert last is not None and last.risk_level == "standard"


def test_vulnerability_update_reissues_the_incident_with_a_higher_level() -> None:
    detector = Detector(default_policy())
    detector.apply(event(1, 0, x=0))
    detector.apply(event(2, 1, x=1000))
    first = issued(detector.apply(event(3, 2, x=2000)), "I3")
    update = detector.apply(
        event(3, 2, seq=1, x=2000, vulnerability=frozenset({"disability", "mental_health"}))
    )
    reissued = issued(update, "I3")
    assert reissued.risk_score > first.risk_score
    assert [r["value"] for r in reissued.reasons if r["factor"] == "vulnerability"] == [
        "disability",
        "mental_health",
    ]


def test_case_review_threshold_is_met_once_and_flagged_on_the_assessment() -> None:
    detector = Detector(default_policy())
    detector.apply(event(1, 0, x=0))
    detector.apply(event(2, 30, x=1000))
    third = detector.apply(event(3, 60, x=2000))
    assert issued(third, "I3").case_review_threshold_met is True
    [met] = third.case_reviews
    assert met.qualifying_incident_ids == ("I1", "I2", "I3")
    fourth = detector.apply(event(4, 61, x=3000))
    assert issued(fourth, "I4").case_review_threshold_met is True
    assert fourth.case_reviews == []  # its complaints already led to a review


def test_incident_finalised_as_asb_that_opened_as_harassment_is_flagged() -> None:
    detector = Detector(default_policy())
    outcome = detector.apply(event(1, 0, code="HARS", closing="ASBN", victim=None))
    assessment = issued(outcome, "I1")
    reasons = {f["reason"] for f in assessment.integrity_flags}
    assert "opening_code" in reasons and reasons <= {"opening_code", "crime_type"}
    [finding] = outcome.integrity
    assert finding.incident_id == "I1"
    # the same record again: no second finding
    again = detector.apply(event(1, 0, seq=1, code="HARS", closing="ASBN", victim=None))
    assert again.integrity == []
    crime = detector.apply(event(2, 0, code="HARS", closing="HARS", victim=None))
    assert issued(crime, "I2").integrity_flags == () and crime.integrity == []


def test_description_phrase_flags_without_copying_the_description() -> None:
    detector = Detector(default_policy())
    text = "Neighbour smashed the window and keeps harassing Mrs Example"
    outcome = detector.apply(event(1, 0, closing="ASBN", victim=None, description=text))
    flags = issued(outcome, "I1").integrity_flags
    assert {f["reason"] for f in flags} == {"description"}
    assert "Mrs Example" not in repr(flags)


def test_final_enriched_assessments_do_not_depend_on_arrival_order() -> None:
    from asvat.demo import northumbria_incidents

    raw = northumbria_incidents(seed=5, limit=1500, shift_to=datetime(2024, 1, 1, tzinfo=UTC))
    events = [IncidentEvent.from_wire(pseudonymise_event(r, b"k" * 32, "k1")) for r in raw]
    reference = Detector(default_policy())
    for e in events:
        reference.apply(e)
    expected = reference.final_assessments()
    assert any(a.risk_level == "high" for a in expected.values())
    assert any(a.case_review_threshold_met for a in expected.values())
    rng = random.Random(3)
    shuffled = events + rng.sample(events, 100)
    rng.shuffle(shuffled)
    other = Detector(default_policy())
    last: dict[str, object] = {}
    for e in shuffled:
        for a in other.apply(e).assessments:
            last[a.incident_id] = a
    final = other.final_assessments()
    assert final == expected
    assert all(last[incident_id] == a for incident_id, a in final.items())


def test_case_review_longer_than_every_victim_rule_is_refused() -> None:
    policy = load_policy_text(
        """
codes: {ASBN: {class: asb, asb_category: nuisance}}
scope: [asb]
rules: [{id: v, subject: victim, window: 28d, threshold: 3}]
"""
    )
    with pytest.raises(PolicyError) as caught:
        Detector(policy)
    assert caught.value.key == "case_review.window"
