"""Escalations per subject: raised, upgraded, never downgraded, closed by a person; tasking
with deadlines; reviews announced due and overdue once each."""

from __future__ import annotations

import json

import pytest

from asvat.domain.assessment import Assessment
from asvat.domain.escalation_lifecycle import (
    EscalationLifecycle,
    escalation_subjects,
    tasking_for,
)
from asvat.domain.policy import default_policy
from asvat.domain.risk import Reason, RiskAssessment
from asvat.domain.timeutil import parse_duration, parse_timestamp

POLICY = default_policy()
TASKING = POLICY.tasking
T0 = parse_timestamp("2024-03-01T10:00:00Z")
HOUR = parse_duration("1h")
DAY = parse_duration("1d")
REASON = Reason("rule", 6, "rule victim-28d met", rule_id="victim-28d", count=3, threshold=3)


def risk(level: str, score: int = 10) -> RiskAssessment:
    return RiskAssessment(level, score, (REASON,))


def observe(
    lifecycle: EscalationLifecycle,
    level: str,
    n: int,
    *,
    day: float = 0.0,
    subject: tuple[str, str] = ("victim", "v1"),
) -> list[str]:
    """Observe incident I<n> at T0 + day; return "event:level" for each event."""
    when = T0 + int(day * DAY)
    events = lifecycle.observe(
        subject[0], subject[1], risk(level), incident_id=f"I{n}", occurred_at=when, at=when
    )
    return [f"{e.event}:{e.level}" for e in events]


# A sequence of levels observed for one subject, and the events each gives.
@pytest.mark.parametrize(
    ("levels", "expected"),
    [
        (["standard", "standard"], [[], []]),
        (["standard", "medium"], [[], ["raised:medium"]]),
        (["medium", "medium"], [["raised:medium"], []]),
        (["medium", "high"], [["raised:medium"], ["upgraded:high"]]),
        (["high"], [["raised:high"]]),
        (["high", "medium", "standard", "high"], [["raised:high"], [], [], []]),
        (
            ["medium", "standard", "medium", "high", "medium", "high"],
            [["raised:medium"], [], [], ["upgraded:high"], [], []],
        ),
    ],
)
def test_raised_upgraded_never_downgraded(levels: list[str], expected: list[list[str]]) -> None:
    lifecycle = EscalationLifecycle(TASKING)
    got = [observe(lifecycle, level, n, day=n) for n, level in enumerate(levels, start=1)]
    assert got == expected
    current = lifecycle.current("victim", "v1")
    top = max(levels, key=["standard", "medium", "high"].index)
    assert (current.level if current else "standard") == top


def test_subjects_are_independent() -> None:
    lifecycle = EscalationLifecycle(TASKING)
    assert observe(lifecycle, "medium", 1, subject=("victim", "v1")) == ["raised:medium"]
    assert observe(lifecycle, "medium", 2, subject=("victim", "v2")) == ["raised:medium"]
    assert observe(lifecycle, "high", 3, subject=("location", "v1")) == ["raised:high"]
    assert [e.subject_key for e in lifecycle.open_escalations()] == ["v1", "v1", "v2"]


def test_event_content_ids_reasons_and_tasking() -> None:
    lifecycle = EscalationLifecycle(TASKING)
    (raised,) = lifecycle.observe(
        "victim", "v1", risk("medium", 12), incident_id="I1", occurred_at=T0, at=T0 + HOUR
    )
    (upgraded,) = lifecycle.observe(
        "victim", "v1", risk("high", 22), incident_id="I2", occurred_at=T0, at=T0 + 2 * HOUR
    )
    assert raised.escalation_id == upgraded.escalation_id  # one escalation, two events
    assert raised.event_id != upgraded.event_id
    assert upgraded.previous_level == "medium"
    content = raised.content()
    assert content["event"] == "raised" and content["level"] == "medium"
    assert content["risk_score"] == 12 and content["incident_id"] == "I1"
    assert content["reasons"] == [REASON.content()]
    assert content["tasking"]["actions"][0] == {
        "id": "call_back",
        "description": "Call the victim back",
        "due_at": "2024-03-02T11:00:00Z",  # 24 h after it was raised
    }
    assert content["tasking"]["reviews"][0] == {
        "rank": "sergeant",
        "every": "28d",
        "first_due_at": "2024-03-29T11:00:00Z",
    }
    json.dumps(content)  # JSON-ready
    # The same history in a fresh lifecycle gives the same ids.
    again = EscalationLifecycle(TASKING)
    (raised2,) = again.observe(
        "victim", "v1", risk("medium", 12), incident_id="I1", occurred_at=T0, at=T0 + HOUR
    )
    assert (raised2.escalation_id, raised2.event_id) == (raised.escalation_id, raised.event_id)


# The default tasking for each level and subject type: actions, deadlines after `at`.
@pytest.mark.parametrize(
    ("level", "subject_type", "actions", "reviews"),
    [
        (
            "medium",
            "victim",
            [("call_back", "24h"), ("vulnerability_assessment", None)],
            [("sergeant", "28d"), ("inspector", "56d")],
        ),
        (
            "medium",
            "location",
            [("problem_solving_plan", None)],
            [("sergeant", "28d"), ("inspector", "56d")],
        ),
        (
            "high",
            "victim",
            [("visit", "4h"), ("single_point_of_contact", None), ("case_conference", None)],
            [("sergeant", "14d"), ("inspector", "28d"), ("chief_inspector", "56d")],
        ),
        (
            "high",
            "location",
            [
                ("single_point_of_contact", None),
                ("case_conference", None),
                ("problem_solving_plan", None),
            ],
            [("sergeant", "14d"), ("inspector", "28d"), ("chief_inspector", "56d")],
        ),
    ],
)
def test_default_tasking(
    level: str,
    subject_type: str,
    actions: list[tuple[str, str | None]],
    reviews: list[tuple[str, str]],
) -> None:
    tasking = tasking_for(TASKING, level, subject_type, T0)
    assert [(a.id, a.due_at) for a in tasking.actions] == [
        (name, None if within is None else T0 + parse_duration(within)) for name, within in actions
    ]
    assert [(r.rank, r.first_due_at) for r in tasking.reviews] == [
        (rank, T0 + parse_duration(every)) for rank, every in reviews
    ]


def test_upgrade_carries_the_higher_levels_tasking_from_the_upgrade() -> None:
    lifecycle = EscalationLifecycle(TASKING)
    observe(lifecycle, "medium", 1)
    upgraded = lifecycle.observe(
        "victim", "v1", risk("high"), incident_id="I2", occurred_at=T0, at=T0 + 3 * DAY
    )[0]
    assert upgraded.tasking is not None
    assert upgraded.tasking.actions[0].id == "visit"
    assert upgraded.tasking.actions[0].due_at == T0 + 3 * DAY + 4 * HOUR
    current = lifecycle.current("victim", "v1")
    assert current is not None
    assert current.reviews_due_at == (
        ("sergeant", T0 + 17 * DAY),
        ("inspector", T0 + 31 * DAY),
        ("chief_inspector", T0 + 59 * DAY),
    )


def test_closed_by_a_person_and_raised_again_only_by_a_later_incident() -> None:
    lifecycle = EscalationLifecycle(TASKING)
    first = lifecycle.observe(
        "victim", "v1", risk("high"), incident_id="I1", occurred_at=T0, at=T0
    )[0]
    closed = lifecycle.close("victim", "v1", at=T0 + 10 * DAY)
    assert closed is not None and closed.event == "closed"
    assert closed.escalation_id == first.escalation_id
    assert lifecycle.close("victim", "v1", at=T0 + 11 * DAY) is None
    assert lifecycle.current("victim", "v1") is None
    # Re-assessing an incident from before the close does not re-open it.
    assert observe(lifecycle, "high", 1, day=0) == []
    assert observe(lifecycle, "high", 2, day=9) == []
    # A new incident after the close raises a new escalation (episode 2), with a new id.
    again = lifecycle.observe(
        "victim",
        "v1",
        risk("medium"),
        incident_id="I3",
        occurred_at=T0 + 12 * DAY,
        at=T0 + 12 * DAY,
    )[0]
    assert again.event == "raised" and again.episode == 2
    assert again.escalation_id != first.escalation_id


def test_reviews_come_due_then_overdue_once_each() -> None:
    lifecycle = EscalationLifecycle(TASKING)  # review_notice 3d
    observe(lifecycle, "medium", 1)  # sergeant due T0+28d, inspector T0+56d

    def due(day: float) -> list[tuple[str, str, float]]:
        return [
            (e.event, e.rank, (e.due_at - T0) / DAY)
            for e in lifecycle.reviews_due(T0 + int(day * DAY))
        ]

    assert due(24.9) == []
    assert due(25) == [("review.due", "sergeant", 28)]
    assert due(26) == []  # announced once
    assert due(28) == []  # due, not yet overdue
    assert due(28.01) == [("review.overdue", "sergeant", 28)]
    assert due(30) == []
    # Skipping past the notice straight into overdue gives both, due first.
    assert due(57) == [("review.due", "inspector", 56), ("review.overdue", "inspector", 56)]
    # A recorded review schedules the next one `every` after it.
    assert lifecycle.record_review("victim", "v1", "sergeant", at=T0 + 30 * DAY) == T0 + 58 * DAY
    assert due(55) == [("review.due", "sergeant", 58)]
    assert due(58.5) == [("review.overdue", "sergeant", 58)]


def test_review_events_have_deterministic_distinct_ids() -> None:
    lifecycle = EscalationLifecycle(TASKING)
    observe(lifecycle, "high", 1)
    events = lifecycle.reviews_due(T0 + 100 * DAY)
    assert [(e.event, e.rank) for e in events] == [
        ("review.due", "sergeant"),
        ("review.overdue", "sergeant"),
        ("review.due", "inspector"),
        ("review.overdue", "inspector"),
        ("review.due", "chief_inspector"),
        ("review.overdue", "chief_inspector"),
    ]
    assert len({e.event_id for e in events}) == 6
    assert len({e.review_id for e in events}) == 3
    other = EscalationLifecycle(TASKING)
    observe(other, "high", 1)
    assert [e.event_id for e in other.reviews_due(T0 + 100 * DAY)] == [e.event_id for e in events]
    assert events[0].content()["due_at"] == "2024-03-15T10:00:00Z"


def test_no_reviews_after_close_and_unknown_reviews_refused() -> None:
    lifecycle = EscalationLifecycle(TASKING)
    observe(lifecycle, "medium", 1)
    with pytest.raises(KeyError, match="chief_inspector"):
        lifecycle.record_review("victim", "v1", "chief_inspector", at=T0)
    lifecycle.close("victim", "v1", at=T0 + DAY)
    assert lifecycle.reviews_due(T0 + 100 * DAY) == []
    with pytest.raises(KeyError, match="no open escalation"):
        lifecycle.record_review("victim", "v1", "sergeant", at=T0)


def test_snapshot_and_restore_continue_exactly() -> None:
    lifecycle = EscalationLifecycle(TASKING)
    observe(lifecycle, "medium", 1, subject=("victim", "v1"))
    observe(lifecycle, "high", 2, subject=("location", "uprn:1"))
    lifecycle.close("location", "uprn:1", at=T0 + DAY)
    observe(lifecycle, "high", 3, day=2, subject=("location", "uprn:1"))
    lifecycle.reviews_due(T0 + 26 * DAY)
    data = json.loads(json.dumps(lifecycle.snapshot()))
    restored = EscalationLifecycle.restore(TASKING, data)
    assert restored.snapshot() == lifecycle.snapshot()
    later = T0 + 90 * DAY
    assert [e.event_id for e in restored.reviews_due(later)] == [
        e.event_id for e in lifecycle.reviews_due(later)
    ]
    assert observe(restored, "high", 4, day=3) == ["upgraded:high"]


def test_escalation_subjects_of_an_assessment() -> None:
    def assessment(victim: str | None, location: str | None, met: tuple[str, ...]) -> Assessment:
        return Assessment(
            "I1", True, "asb", "nuisance", T0, victim, location, met, {}, {r: ("I1",) for r in met}
        )

    assert escalation_subjects(POLICY, assessment("v1", "uprn:1", ())) == [("victim", "v1")]
    assert escalation_subjects(POLICY, assessment("v1", "uprn:1", ("location-7d-100m",))) == [
        ("victim", "v1"),
        ("location", "uprn:1"),
    ]
    assert escalation_subjects(POLICY, assessment(None, "uprn:1", ("location-7d-100m",))) == [
        ("location", "uprn:1")
    ]
    assert escalation_subjects(POLICY, assessment(None, None, ())) == []
