"""The detector: repeat windows, then what a force does with them.

:class:`Detector` wraps the :class:`~asvat.domain.engine.DetectionEngine` (which keeps the
event-time windows and says which rules each incident meets) and adds, for every
assessment the engine issues:

* its risk level, score and reasons (``asvat.domain.risk``, the policy's ``risk``);
* whether the ASB case review threshold is met (``asvat.domain.case_review``);
* its crime-data-integrity flags (``asvat.domain.integrity``);

and from those, the escalation lifecycle of each subject (raised when its risk first
reaches medium or high, upgraded when it rises, never downgraded automatically), the
``case_review.threshold_met`` events and the integrity findings.

Everything an assessment carries is a function of the current records alone, so the
final assessments do not depend on arrival order. Escalation, case-review and integrity
*events* are issued when first observed, so which incident raised an escalation may depend
on order; their ids are deterministic and consumers are idempotent on them.

Time: ``at`` (when an escalation is raised, from which its deadlines count) is passed in;
by default it is the triggering incident's ``reported_at``, so a replay gives the same
output every run; the live worker passes the wall clock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace

from asvat.domain.assessment import Assessment, NotApplied
from asvat.domain.case_review import (
    CaseReviewThresholdMet,
    CaseReviewTracker,
    Complaint,
    evaluate_case_review,
)
from asvat.domain.engine import DetectionEngine
from asvat.domain.escalation_lifecycle import (
    EscalationEvent,
    EscalationLifecycle,
    ReviewEvent,
    escalation_subjects,
)
from asvat.domain.incident import IncidentEvent
from asvat.domain.integrity import IntegrityFinding, IntegrityFlag, check_integrity
from asvat.domain.policy import Policy, PolicyError
from asvat.domain.risk import RiskAssessment, score_assessment


def _check_case_review_fits_rules(policy: Policy) -> None:
    """The case review reads the engine's windows, so a rule of the same subject must reach
    at least as far (else an out-of-order event would not re-evaluate it, and the incidents
    it needs could already be pruned)."""
    config = policy.case_review
    if config.count_by == "victim":
        rules, subject = policy.victim_rules, "victim"
    else:
        rules, subject = policy.location_rules, "location"
    longest = max((rule.window for rule in rules), default=0)
    if config.window > longest:
        raise PolicyError(
            "case_review.window",
            f"at most the longest {subject} rule's window (add a {subject} rule with a window "
            "of at least the case review's, e.g. the default policy's case-review rule)",
            origin=policy.origin,
        )
    if subject == "location":
        widest = max((rule.radius_m or 0.0 for rule in rules), default=0.0)
        if config.radius_m > widest:
            raise PolicyError(
                "case_review.radius_m",
                "at most the widest location rule's radius_m",
                config.radius_m,
                origin=policy.origin,
            )


@dataclass(slots=True)
class DetectorOutcome:
    """What applying one event changed."""

    assessments: list[Assessment] = field(default_factory=list)
    escalations: list[EscalationEvent] = field(default_factory=list)
    case_reviews: list[CaseReviewThresholdMet] = field(default_factory=list)
    integrity: list[IntegrityFinding] = field(default_factory=list)
    not_applied: NotApplied | None = None
    duplicate: bool = False
    superseded: bool = False


class Detector:
    """The engine plus risk, case review, integrity and the escalation lifecycle."""

    def __init__(self, policy: Policy, *, forget: bool = True) -> None:
        """``forget``: see :class:`~asvat.domain.engine.DetectionEngine`."""
        _check_case_review_fits_rules(policy)
        self.policy = policy
        self.engine = DetectionEngine(policy, forget=forget)
        self.lifecycle = EscalationLifecycle(policy.tasking)
        self.case_reviews = CaseReviewTracker(policy.case_review)
        self._findings: dict[str, str] = {}  # incident_id -> finding_id last issued
        self._forget = forget
        # subject_key -> case-review events issued for it (re-published by snapshots)
        self._case_reviews_issued: dict[str, list[CaseReviewThresholdMet]] = {}

    @property
    def retained_incidents(self) -> int:
        return self.engine.retained_incidents

    @property
    def watermark(self) -> int | None:
        return self.engine.watermark

    def apply(self, event: IncidentEvent, *, at: int | None = None) -> DetectorOutcome:
        """Apply one event. ``at``: when escalations raised now are raised (default: the
        event's ``reported_at``)."""
        base = self.engine.apply(event)
        outcome = DetectorOutcome(
            not_applied=base.not_applied, duplicate=base.duplicate, superseded=base.superseded
        )
        when = event.reported_at if at is None else at
        for assessment in base.assessments:
            enriched = self._enrich(assessment, observe=True)
            outcome.assessments.append(enriched.assessment)
            self._observe(enriched, when, outcome)
        return outcome

    def final_assessments(self) -> dict[str, Assessment]:
        """The current, enriched assessment of every in-scope incident."""
        return {
            incident_id: self._enrich(assessment).assessment
            for incident_id, assessment in self.engine.final_assessments().items()
        }

    def assessment(self, incident_id: str) -> Assessment | None:
        assessment = self.engine.assessment(incident_id)
        return None if assessment is None else self._enrich(assessment).assessment

    def reviews_due(self, now: int, owns: Callable[[str], bool] | None = None) -> list[ReviewEvent]:
        """Reviews of open escalations coming due or overdue at ``now`` (each once), of the
        subjects ``owns`` accepts (default: all)."""
        return self.lifecycle.reviews_due(now, owns)

    def snapshot(
        self, owns_incident: Callable[[str], bool], owns_subject: Callable[[str], bool]
    ) -> DetectorOutcome:
        """Everything a publisher of these incidents and subjects must have published for
        its consumers to be whole, as of now: the current assessment (and integrity finding)
        of every open incident, the raise and latest upgrade of every open escalation, and
        the case-review events issued.

        A worker publishes it when it takes over incidents and subjects (after a restart, a
        rebalance or a broker that lost its topics). Every id in it is deterministic, so a
        consumer that already has an item ignores it. Settled incidents (more than
        ``max_lateness`` behind the watermark, when the detector forgets) are left out: their
        last published assessment is final (see the engine's ``final_assessments``).
        """
        outcome = DetectorOutcome()
        watermark = self.engine.watermark
        open_from = None
        if self._forget and watermark is not None:
            open_from = watermark - self.policy.max_lateness
        for event in self.engine.current_events():
            if open_from is not None and event.occurred_at < open_from:
                continue
            if not owns_incident(event.incident_id):
                continue
            assessment = self.engine.assessment(event.incident_id)
            assert assessment is not None
            enriched = self._enrich(assessment)
            outcome.assessments.append(enriched.assessment)
            if enriched.flags:
                outcome.integrity.append(IntegrityFinding.of(event, enriched.flags))
        outcome.escalations = self.lifecycle.published_events(owns_subject)
        for subject_key, issued in sorted(self._case_reviews_issued.items()):
            if owns_subject(subject_key):
                outcome.case_reviews.extend(issued)
        return outcome

    def current_events(self) -> Iterator[IncidentEvent]:
        return self.engine.current_events()

    def restore(self, events: Iterable[IncidentEvent]) -> None:
        """Rebuild from current records, issuing nothing (see the engine's restore)."""
        for event in events:
            self.apply(event)

    # -- internals ------------------------------------------------------------------------

    def _enrich(self, assessment: Assessment, *, observe: bool = False) -> _Enriched:
        """Add risk, case review and integrity. ``observe``: also let the case-review
        tracker count the complaints (only when the assessment is being issued)."""
        event = self.engine.current_event(assessment.incident_id)
        assert event is not None, "the engine issued an assessment for an unknown incident"
        policy = self.policy
        code_class = policy.classify(event.code)
        assert code_class is not None  # the engine refuses unknown codes
        risk = score_assessment(
            policy, assessment, code_class=code_class, vulnerability=event.vulnerability
        )
        flags = check_integrity(
            event,
            policy.classify(event.closing_code) if event.closing_code else None,
            policy.classify(event.opening_code),
            policy,
        )
        met = False
        raised: CaseReviewThresholdMet | None = None
        subject = self._case_review_subject(assessment)
        if assessment.in_scope and subject is not None:
            complaints = self._complaints(event)
            if observe:
                result, raised = self.case_reviews.observe(
                    subject, complaints, incident_id=assessment.incident_id,
                    at=assessment.occurred_at,
                )
            else:
                result = evaluate_case_review(
                    self.policy.case_review, complaints, at=assessment.occurred_at
                )
            met = result.met
        enriched = replace(
            assessment,
            risk_level=risk.level,
            risk_score=risk.score,
            reasons=tuple(reason.content() for reason in risk.reasons),
            case_review_threshold_met=met,
            integrity_flags=tuple(flag.content() for flag in flags),
        )
        return _Enriched(enriched, event, risk, flags, raised)

    def _case_review_subject(self, assessment: Assessment) -> str | None:
        if self.policy.case_review.count_by == "victim":
            return assessment.victim_key
        return assessment.location_key

    def _complaints(self, event: IncidentEvent) -> list[Complaint]:
        config = self.policy.case_review
        start, end = event.occurred_at - config.window, event.occurred_at
        if config.count_by == "victim":
            if event.victim_key is None:
                return []
            found = self.engine.victim_incidents(event.victim_key, start, end)
        else:
            if event.place is None:
                return []
            found = self.engine.incidents_near(event.place, config.radius_m, start, end)
        complaints = []
        for other in found:
            cls = self.policy.classify(other.code)
            complaints.append(Complaint.from_event(other, cls.cls if cls else "other"))
        return complaints

    def _observe(self, enriched: _Enriched, at: int, outcome: DetectorOutcome) -> None:
        assessment = enriched.assessment
        if enriched.case_review is not None:
            outcome.case_reviews.append(enriched.case_review)
            met = enriched.case_review
            self._case_reviews_issued.setdefault(met.subject_key, []).append(met)
        if enriched.flags:
            finding = IntegrityFinding.of(enriched.event, enriched.flags)
            if self._findings.get(assessment.incident_id) != finding.finding_id:
                self._findings[assessment.incident_id] = finding.finding_id
                outcome.integrity.append(finding)
        if not assessment.in_scope:
            return
        for subject_type, subject_key in escalation_subjects(self.policy, assessment):
            outcome.escalations.extend(
                self.lifecycle.observe(
                    subject_type,
                    subject_key,
                    enriched.risk,
                    incident_id=assessment.incident_id,
                    occurred_at=assessment.occurred_at,
                    at=at,
                )
            )


@dataclass(frozen=True, slots=True)
class _Enriched:
    assessment: Assessment
    event: IncidentEvent
    risk: RiskAssessment
    flags: tuple[IntegrityFlag, ...]
    case_review: CaseReviewThresholdMet | None
