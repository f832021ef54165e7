"""The ASB Case Review threshold: three qualifying complaints in six months, each reported
within one month; the distinct-reporters variant; one event per set of complaints."""

from __future__ import annotations

from dataclasses import replace

import pytest

from asvat.domain.case_review import (
    CaseReviewTracker,
    Complaint,
    evaluate_case_review,
)
from asvat.domain.incident import IncidentEvent
from asvat.domain.policy import CaseReviewPolicy, default_policy
from asvat.domain.timeutil import parse_timestamp

DAY = 86_400_000_000
T0 = parse_timestamp("2024-01-01T12:00:00Z")
POLICY = default_policy().case_review  # 3 in 183d, each reported within 31d
LOCATION = replace(POLICY, count_by="location_distinct_reporters")


def complaint(
    n: int,
    day: float,
    *,
    delay_days: float = 0.0,
    reporter: str | None = "v1",
    cls: str = "asb",
    delay_micros: int = 0,
) -> Complaint:
    occurred = T0 + int(day * DAY)
    return Complaint(
        incident_id=f"I{n}",
        occurred_at=occurred,
        reported_at=occurred + int(delay_days * DAY) + delay_micros,
        reporter_key=reporter,
        classification=cls,
    )


def at(day: float) -> int:
    return T0 + int(day * DAY)


# The one-month reporting rule: each row is the third complaint's report delay.
@pytest.mark.parametrize(
    ("delay_days", "delay_micros", "met", "late"),
    [
        (0, 0, True, ()),
        (1, 0, True, ()),
        (30, 0, True, ()),
        (31, 0, True, ()),  # exactly one month (31 days): still counts
        (31, 1, False, ("I3",)),  # one microsecond more: reported late
        (45, 0, False, ("I3",)),
        (200, 0, False, ("I3",)),
    ],
)
def test_each_complaint_must_be_reported_within_one_month(
    delay_days: float, delay_micros: int, met: bool, late: tuple[str, ...]
) -> None:
    complaints = [
        complaint(1, 0),
        complaint(2, 10),
        complaint(3, 20, delay_days=delay_days, delay_micros=delay_micros),
    ]
    result = evaluate_case_review(POLICY, complaints, at=at(20))
    assert result.met is met
    assert result.reported_late == late
    assert result.count == (3 if met else 2)
    assert result.threshold == 3


def test_no_report_delay_limit_when_the_policy_has_none() -> None:
    policy = replace(POLICY, max_report_delay=None)
    complaints = [complaint(1, 0, delay_days=100), complaint(2, 1), complaint(3, 2)]
    assert evaluate_case_review(policy, complaints, at=at(2)).met


# The six-month window: (t − 183d, t], on occurrence time.
@pytest.mark.parametrize(
    ("first_day", "met"),
    [
        (-1, True),
        (-182, True),
        (-182.999, True),
        (-183, False),  # exactly 183 days before: outside the window
        (-200, False),
    ],
)
def test_window_is_six_months_of_occurrence_time(first_day: float, met: bool) -> None:
    complaints = [complaint(1, first_day), complaint(2, -0.5), complaint(3, 0)]
    assert evaluate_case_review(POLICY, complaints, at=at(0)).met is met


def test_later_incidents_are_not_counted_at_an_earlier_one() -> None:
    complaints = [complaint(1, 0), complaint(2, 1), complaint(3, 2)]
    assert not evaluate_case_review(POLICY, complaints, at=at(1)).met
    result = evaluate_case_review(POLICY, complaints, at=at(2))
    assert result.met and result.qualifying_incident_ids == ("I1", "I2", "I3")


@pytest.mark.parametrize(
    ("classes", "met"),
    [
        (("asb", "asb", "asb"), True),
        (("asb", "crime", "non_crime"), True),
        (("asb", "asb", "other"), False),
        (("asb", "asb", "cancelled"), False),
    ],
)
def test_only_the_policy_classes_count(classes: tuple[str, str, str], met: bool) -> None:
    complaints = [complaint(n + 1, n, cls=cls) for n, cls in enumerate(classes)]
    assert evaluate_case_review(POLICY, complaints, at=at(2)).met is met


def test_one_incident_counts_once() -> None:
    twice = complaint(1, 0)
    assert not evaluate_case_review(POLICY, [twice, twice, complaint(2, 1)], at=at(1)).met


# Three Rivers: different people reporting separate incidents about the same place.
@pytest.mark.parametrize(
    ("reporters", "met", "count"),
    [
        (("a", "b", "c"), True, 3),
        (("a", "a", "a"), False, 1),
        (("a", "b", "a", "b"), False, 2),
        (("a", "b", None, None), False, 2),  # anonymous reports are not people told apart
        (("a", "b", "b", "c"), True, 3),
    ],
)
def test_location_variant_counts_distinct_reporters(
    reporters: tuple[str | None, ...], met: bool, count: int
) -> None:
    complaints = [complaint(n + 1, n, reporter=r) for n, r in enumerate(reporters)]
    result = evaluate_case_review(LOCATION, complaints, at=at(len(reporters)))
    assert (result.met, result.count) == (met, count)
    expected = tuple(sorted(f"I{n + 1}" for n, r in enumerate(reporters) if r is not None))
    assert result.qualifying_incident_ids == expected


def test_location_variant_applies_the_one_month_rule_too() -> None:
    complaints = [
        complaint(1, 0, reporter="a"),
        complaint(2, 1, reporter="b"),
        complaint(3, 2, reporter="c", delay_days=40),
    ]
    result = evaluate_case_review(LOCATION, complaints, at=at(2))
    assert not result.met and result.reported_late == ("I3",)


def test_tracker_emits_once_per_set_of_complaints() -> None:
    tracker = CaseReviewTracker(POLICY)
    history: list[Complaint] = []
    emitted = []
    for n, day in enumerate([0, 5, 10, 12, 20, 30, 31], start=1):
        history.append(complaint(n, day))
        result, event = tracker.observe("v1", history, incident_id=f"I{n}", at=at(day))
        assert result.met is (n >= 3)  # the assessment flag counts every complaint
        if event is not None:
            emitted.append(event)
    # I1-I3 make one case review; I4-I6 a second; I7 alone makes none.
    assert [e.qualifying_incident_ids for e in emitted] == [("I1", "I2", "I3"), ("I4", "I5", "I6")]
    first = emitted[0]
    assert first.subject_type == "victim" and first.incident_id == "I3"
    assert first.content()["event"] == "case_review.threshold_met"
    assert first.content()["qualifying_incident_ids"] == ["I1", "I2", "I3"]
    assert tracker.counted("v1") == {f"I{n}" for n in range(1, 7)}
    # Re-assessing the same incidents emits nothing more.
    assert tracker.observe("v1", history, incident_id="I3", at=at(10))[1] is None


def test_event_ids_are_deterministic() -> None:
    history = [complaint(1, 0), complaint(2, 1), complaint(3, 2)]
    one = CaseReviewTracker(POLICY).observe("v1", history, incident_id="I3", at=at(2))[1]
    two = CaseReviewTracker(POLICY).observe("v1", history[::-1], incident_id="I3", at=at(2))[1]
    other = CaseReviewTracker(POLICY).observe("v2", history, incident_id="I3", at=at(2))[1]
    assert one is not None and two is not None and other is not None
    assert one.event_id == two.event_id != other.event_id
    assert len(one.event_id) == 64


def test_tracker_forgets_counted_complaints_before_a_horizon() -> None:
    tracker = CaseReviewTracker(POLICY)
    history = [complaint(1, 0), complaint(2, 1), complaint(3, 2)]
    tracker.observe("v1", history, incident_id="I3", at=at(2))
    tracker.forget_before(at(1))
    assert tracker.counted("v1") == {"I2", "I3"}
    tracker.forget_before(at(10))
    assert tracker.counted("v1") == frozenset()


def test_location_tracker_names_the_location_subject() -> None:
    tracker = CaseReviewTracker(LOCATION)
    history = [complaint(n, n, reporter=r) for n, r in enumerate("abc", start=1)]
    _, event = tracker.observe("uprn:1", history, incident_id="I3", at=at(3))
    assert event is not None and event.subject_type == "location"
    assert event.count_by == "location_distinct_reporters"


def test_complaint_from_an_incident_event() -> None:
    event = IncidentEvent(
        event_id="E1",
        incident_id="I1",
        sequence=0,
        event_type="cancelled",
        occurred_at=at(0),
        reported_at=at(1),
        source="101",
        opening_code="ASBN",
        closing_code=None,
        victim_key="v1",
        place=None,
    )
    made = Complaint.from_event(event, "asb")
    assert made == Complaint("I1", at(0), at(1), "v1", "cancelled")
    assert isinstance(POLICY, CaseReviewPolicy)
