"""The ASB Case Review threshold (the "Community Trigger", ASB, Crime and Policing Act 2014
s.104).

The policy's ``case_review`` section sets it: by default three qualifying complaints in six
months, each reported within one month of the behaviour. A complaint qualifies when its
class is one of ``classes`` and it was reported at most ``max_report_delay`` after the
behaviour occurred. At an incident that occurred at *t*, the threshold is met when the
qualifying complaints with occurrence time in (*t* − window, *t*] number at least
``complaints`` — counted per victim (``count_by: victim``), or, for the variant in which
different people reporting separate incidents about one place count
(``count_by: location_distinct_reporters``), as the number of different reporters among
the complaints about that place. Anonymous reports have no reporter to tell apart and do
not count in that variant.

The caller chooses the complaints of the subject: a victim's incidents, or the incidents at
a place (within ``radius_m`` or at the same UPRN). One incident counts once however many
times it is passed (by incident id); one incident reported to several agencies under
different ids cannot be recognised here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from asvat.domain.assessment import content_id
from asvat.domain.incident import IncidentEvent
from asvat.domain.policy import CaseReviewPolicy
from asvat.domain.timeutil import DayIndex, format_timestamp


@dataclass(frozen=True, slots=True)
class Complaint:
    """One incident as the case review sees it. ``reporter_key`` is the victim key."""

    incident_id: str
    occurred_at: int
    reported_at: int
    reporter_key: str | None
    classification: str

    @classmethod
    def from_event(cls, event: IncidentEvent, classification: str) -> Complaint:
        """From an incident's current record and its class (``CodeClass.cls``)."""
        return cls(
            incident_id=event.incident_id,
            occurred_at=event.occurred_at,
            reported_at=event.reported_at,
            reporter_key=event.victim_key,
            classification="cancelled" if event.cancelled else classification,
        )


@dataclass(frozen=True, slots=True)
class CaseReviewResult:
    """Whether the threshold is met at one incident, and on which complaints.

    ``count`` is the number of qualifying complaints (``victim``) or of different reporters
    (``location_distinct_reporters``); ``qualifying_incident_ids`` are the complaints
    counted (sorted). ``reported_late`` lists complaints in the window that were not counted
    because they were reported more than ``max_report_delay`` after the behaviour.
    """

    met: bool
    count: int
    threshold: int
    qualifying_incident_ids: tuple[str, ...]
    reported_late: tuple[str, ...] = ()


def evaluate_case_review(
    policy: CaseReviewPolicy,
    complaints: Iterable[Complaint],
    *,
    at: int,
    exclude: Iterable[str] = (),
) -> CaseReviewResult:
    """The threshold at occurrence time ``at`` over ``complaints`` (the subject's incidents).

    ``exclude``: incident ids not to count (for example those already counted towards an
    earlier case review).
    """
    start = at - policy.window
    skip = frozenset(exclude)
    seen: set[str] = set()
    qualifying: list[Complaint] = []
    late: list[str] = []
    for complaint in complaints:
        if complaint.incident_id in seen or complaint.incident_id in skip:
            continue
        seen.add(complaint.incident_id)
        if not start < complaint.occurred_at <= at:
            continue
        if complaint.classification not in policy.classes:
            continue
        delay = complaint.reported_at - complaint.occurred_at
        if policy.max_report_delay is not None and delay > policy.max_report_delay:
            late.append(complaint.incident_id)
            continue
        qualifying.append(complaint)
    if policy.count_by == "location_distinct_reporters":
        qualifying = [c for c in qualifying if c.reporter_key is not None]
        count = len({c.reporter_key for c in qualifying})
    else:
        count = len(qualifying)
    return CaseReviewResult(
        met=count >= policy.complaints,
        count=count,
        threshold=policy.complaints,
        qualifying_incident_ids=tuple(sorted(c.incident_id for c in qualifying)),
        reported_late=tuple(sorted(late)),
    )


@dataclass(frozen=True, slots=True)
class CaseReviewThresholdMet:
    """The ``case_review.threshold_met`` event: a subject met the threshold on a new set of
    complaints."""

    subject_type: str
    subject_key: str
    count_by: str
    incident_id: str
    occurred_at: int
    count: int
    threshold: int
    qualifying_incident_ids: tuple[str, ...]

    @property
    def event_id(self) -> str:
        """Deterministic: the subject and the complaints that met the threshold."""
        return content_id(
            "case_review.threshold_met",
            self.subject_type,
            self.subject_key,
            *self.qualifying_incident_ids,
        )

    def content(self) -> dict[str, Any]:
        return {
            "event": "case_review.threshold_met",
            "event_id": self.event_id,
            "subject_type": self.subject_type,
            "subject_key": self.subject_key,
            "count_by": self.count_by,
            "incident_id": self.incident_id,
            "occurred_at": format_timestamp(self.occurred_at),
            "count": self.count,
            "threshold": self.threshold,
            "qualifying_incident_ids": list(self.qualifying_incident_ids),
        }


class CaseReviewTracker:
    """Says when to emit ``case_review.threshold_met``: once per set of complaints.

    A complaint counts towards one case review only: after an event, the complaints it
    counted are set aside, so re-assessing the same incidents raises nothing more, and a
    victim who goes on to make three new qualifying complaints triggers a new event.
    """

    def __init__(self, policy: CaseReviewPolicy) -> None:
        self.policy = policy
        self.subject_type = "victim" if policy.count_by == "victim" else "location"
        self._counted: dict[str, dict[str, int]] = {}
        # The subjects by the day of each complaint counted (for forget_before).
        self._counted_days: DayIndex[str] = DayIndex()

    def export_state(self) -> dict[str, Any]:
        """The complaints already counted, per subject (for a checkpoint)."""
        return {"counted": self._counted, "counted_days": self._counted_days.export_state()}

    def import_state(self, state: dict[str, Any]) -> None:
        self._counted = state["counted"]
        self._counted_days.import_state(state["counted_days"])

    def observe(
        self,
        subject_key: str,
        complaints: Iterable[Complaint],
        *,
        incident_id: str,
        at: int,
    ) -> tuple[CaseReviewResult, CaseReviewThresholdMet | None]:
        """Evaluate at incident ``incident_id`` (occurred at ``at``).

        Returns the result for the assessment (``case_review_threshold_met``), which counts
        every qualifying complaint and so depends only on the data, and the event to emit,
        if the complaints not yet counted towards a case review meet the threshold.
        """
        listed = list(complaints)
        result = evaluate_case_review(self.policy, listed, at=at)
        if not result.met:
            return result, None
        counted = self._counted.setdefault(subject_key, {})
        fresh = evaluate_case_review(self.policy, listed, at=at, exclude=counted)
        if not fresh.met:
            return result, None
        times = {c.incident_id: c.occurred_at for c in listed}
        for counted_id in fresh.qualifying_incident_ids:
            counted[counted_id] = times[counted_id]
            self._counted_days.add(times[counted_id], subject_key)
        return result, CaseReviewThresholdMet(
            subject_type=self.subject_type,
            subject_key=subject_key,
            count_by=self.policy.count_by,
            incident_id=incident_id,
            occurred_at=at,
            count=fresh.count,
            threshold=fresh.threshold,
            qualifying_incident_ids=fresh.qualifying_incident_ids,
        )

    def counted(self, subject_key: str) -> frozenset[str]:
        """The incident ids of ``subject_key`` already counted towards a case review."""
        return frozenset(self._counted.get(subject_key, ()))

    @property
    def subjects_counted(self) -> int:
        """Subjects with complaints already counted towards a case review."""
        return len(self._counted)

    def forget_before(self, horizon: int) -> None:
        """Drop counted complaints that occurred before ``horizon`` (they are out of every
        window still to be evaluated). Reads only the subjects with complaints on the days
        passed (some of ``horizon``'s own day may stay until the next call)."""
        counted = self._counted
        for subject_key in dict.fromkeys(self._counted_days.pop_before(horizon)):
            found = counted.get(subject_key)
            if found is None:
                continue
            kept = {i: t for i, t in found.items() if t >= horizon}
            if kept:
                counted[subject_key] = kept
            else:
                del counted[subject_key]
