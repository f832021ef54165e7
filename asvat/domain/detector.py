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

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from asvat.domain.assessment import Assessment, NotApplied
from asvat.domain.case_review import (
    CaseReviewThresholdMet,
    CaseReviewTracker,
    Complaint,
    evaluate_case_review,
)
from asvat.domain.engine import DetectionEngine, location_key
from asvat.domain.escalation_lifecycle import (
    EscalationEvent,
    EscalationLifecycle,
    ReviewEvent,
    escalation_subjects,
)
from asvat.domain.incident import IncidentEvent
from asvat.domain.integrity import IntegrityFinding, IntegrityFlag, check_integrity, is_checked
from asvat.domain.policy import (
    ESCALATION_LEVELS,
    CodeClass,
    Policy,
    PolicyError,
    phrase_pattern,
)
from asvat.domain.risk import NO_RISK, RiskAssessment, score_assessment
from asvat.domain.timeutil import DayIndex

#: At most this many (code, vulnerability) risks are remembered (see ``Detector._risk``).
_RISK_MEMO_SIZE = 4096


_ASCII_WORD = re.compile(r"\w+", re.ASCII)
#: At most this many phrase subsets are remembered (see ``_PhraseFilter``).
_PHRASE_SUBSETS = 1024


class _PhraseFilter:
    r"""Which integrity phrases a description can match, found without searching each one.

    A phrase's pattern (``policy.phrase_pattern``: its words, whole, any case, any spacing)
    can only match an ASCII description when each of its words, lower-cased, is a whole
    word (maximal run of ``\w``) of the lower-cased description. So the phrases are indexed
    by their first word, the description's words are looked up, and only the phrases found
    (and any phrase this cannot reason about: other patterns, non-ASCII or non-``\w``
    words) are searched, by their own patterns, in policy order, through a copy of the
    policy that lists just those. A non-ASCII description is searched with every phrase.
    The flags are exactly those of the full search; profiling showed the per-phrase regular
    expressions to be the largest single cost of the detector.
    """

    def __init__(self, policy: Policy) -> None:
        self._policy = policy
        phrases = policy.integrity.phrases
        self._by_first_word: dict[str, list[int]] = {}
        self._always: list[int] = []
        for index, phrase in enumerate(phrases):
            words = phrase.phrase.split()
            standard = phrase_pattern(phrase.phrase)
            if (
                words
                and phrase.pattern.pattern == standard.pattern
                and phrase.pattern.flags == standard.flags
                and all(_ASCII_WORD.fullmatch(word) for word in words)
            ):
                self._by_first_word.setdefault(words[0].lower(), []).append(index)
            else:
                self._always.append(index)
        self._subsets: dict[tuple[int, ...], Policy] = {}

    def policy_for(self, description: str | None) -> Policy:
        """A policy that gives the same integrity flags for ``description`` as the full one."""
        if not description or not description.isascii():
            return self._policy
        by_first_word = self._by_first_word
        found = set(self._always)
        for word in set(_ASCII_WORD.findall(description.lower())):
            indexes = by_first_word.get(word)
            if indexes is not None:
                found.update(indexes)
        key = tuple(sorted(found))
        subset = self._subsets.get(key)
        if subset is None:
            if len(self._subsets) >= _PHRASE_SUBSETS:
                self._subsets.clear()
            integrity = self._policy.integrity
            kept = tuple(integrity.phrases[index] for index in key)
            subset = replace(self._policy, integrity=replace(integrity, phrases=kept))
            self._subsets[key] = subset
        return subset


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
        # Performance only (each gives exactly what the plain path gives):
        # a description is searched only for the phrases it can match (see _PhraseFilter);
        self._phrases = _PhraseFilter(policy)
        # the risk of an in-scope incident that meets no rule depends only on its code and
        # vulnerability factors, so it is computed once per pair (with its reasons' content);
        self._plain_risk: dict[
            tuple[str, frozenset[str]], tuple[RiskAssessment, tuple[Mapping[str, Any], ...]]
        ] = {}
        self._location_rule_ids = tuple(rule.id for rule in policy.location_rules)
        self._case_review_by_victim = policy.case_review.count_by == "victim"
        self._forget = forget
        # subject_key -> case-review events issued for it (re-published by snapshots)
        self._case_reviews_issued: dict[str, list[CaseReviewThresholdMet]] = {}
        self._case_review_days: DayIndex[str] = DayIndex()  # their subjects, for forgetting
        # Closes by a person (escalation_id -> (subject_type, subject_key, at)) read before
        # the escalation they close was raised here, and the ids closed (see ``close``).
        self._pending_closes: dict[str, tuple[str, str, int]] = {}
        self._closed_ids: set[str] = set()
        # What the engine had forgotten before when this detector last pruned its own
        # per-incident and per-subject state (see _forget).
        self._forgotten_before: int | None = None
        if forget:
            self.engine.track_forgotten()

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
        if self._forget and self.engine.forgotten_before != self._forgotten_before:
            self._forget_before(self.engine.forgotten_before)
        return outcome

    def state_counts(self) -> dict[str, int]:
        """How many entries each part of the state holds (for the worker's metrics): all
        but ``escalation_episodes`` and ``closes`` (people's actions) are bounded by the
        retention when the detector forgets."""
        return {
            "incidents": self.engine.retained_incidents,
            "integrity_findings": len(self._findings),
            "case_review_events": sum(len(v) for v in self._case_reviews_issued.values()),
            "case_review_subjects": self.case_reviews.subjects_counted,
            "closed_subjects": self.lifecycle.closed_subjects,
            "escalation_episodes": self.lifecycle.subjects_numbered,
            "closes": len(self._closed_ids) + len(self._pending_closes),
        }

    def export_state(self) -> dict[str, Any]:
        """Everything this detector has learnt from the events and commands applied, as
        plain values and domain records; nothing derived from the policy (for a checkpoint:
        :mod:`asvat.domain.checkpoint`, which also checks the policy is the same)."""
        return {
            "engine": self.engine.export_state(),
            "lifecycle": self.lifecycle.export_state(),
            "case_reviews": self.case_reviews.export_state(),
            "findings": self._findings,
            "case_reviews_issued": self._case_reviews_issued,
            "case_review_days": self._case_review_days.export_state(),
            "pending_closes": self._pending_closes,
            "closed_ids": self._closed_ids,
            "forgotten_before": self._forgotten_before,
        }

    def import_state(self, state: dict[str, Any]) -> None:
        """Take over what :meth:`export_state` gave, on a new detector of the same policy
        and ``forget``. Applying the next events then gives what the exporting detector
        would have given, except that an incident's first assessment after the import is
        issued even where it is unchanged (see :meth:`DetectionEngine.import_state`)."""
        self.engine.import_state(state["engine"])
        self.lifecycle.import_state(state["lifecycle"])
        self.case_reviews.import_state(state["case_reviews"])
        self._findings = state["findings"]
        self._case_reviews_issued = state["case_reviews_issued"]
        self._case_review_days.import_state(state["case_review_days"])
        self._pending_closes = state["pending_closes"]
        self._closed_ids = state["closed_ids"]
        self._forgotten_before = state["forgotten_before"]

    def _forget_before(self, horizon: int | None) -> None:
        """Forget what only concerns incidents the engine has forgotten (those that occurred
        before ``horizon``): no event still to be applied can reach them. Their integrity
        findings and case-review events are final, as their last assessments are, and
        leave the snapshots as settled incidents do."""
        self._forgotten_before = horizon
        findings = self._findings
        for incident_id in self.engine.take_forgotten():
            findings.pop(incident_id, None)
        if horizon is None:
            return
        self.case_reviews.forget_before(horizon)
        self.lifecycle.forget_closed_before(horizon)
        issued = self._case_reviews_issued
        for subject_key in dict.fromkeys(self._case_review_days.pop_before(horizon)):
            found = issued.get(subject_key)
            if found is None:
                continue
            kept = [met for met in found if met.occurred_at >= horizon]
            if not kept:
                del issued[subject_key]
            elif len(kept) < len(found):
                issued[subject_key] = kept

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

    def close(
        self, escalation_id: str, subject_type: str, subject_key: str, *, at: int
    ) -> DetectorOutcome:
        """A person closed escalation ``escalation_id`` of the subject at ``at`` (µs).

        The subject's incidents that occurred after ``at`` are then observed again, so one of
        them can raise the subject's next episode, as it would have had it arrived after the
        close. A close read before the escalation it closes was raised here (a worker
        rebuilding in another order) waits and is applied when it is raised. So the result
        does not depend on the order events and closes are read in. Returns the escalations
        raised by observing the later incidents.
        """
        outcome = DetectorOutcome()
        if escalation_id in self._closed_ids:
            return outcome
        current = self.lifecycle.current(subject_type, subject_key)
        if current is None or current.escalation_id != escalation_id:
            self._pending_closes[escalation_id] = (subject_type, subject_key, at)
            return outcome
        self._apply_close(escalation_id, subject_type, subject_key, at, outcome)
        return outcome

    def _apply_close(
        self,
        escalation_id: str,
        subject_type: str,
        subject_key: str,
        at: int,
        outcome: DetectorOutcome,
    ) -> None:
        self.lifecycle.close(subject_type, subject_key, at=at)
        self._closed_ids.add(escalation_id)
        self._pending_closes.pop(escalation_id, None)
        later = sorted(
            (
                event
                for event in self.engine.current_events()
                if event.occurred_at > at and _is_subject_of(event, subject_type, subject_key)
            ),
            key=lambda event: (event.occurred_at, event.incident_id),
        )
        subject = (subject_type, subject_key)
        for event in later:
            assessment = self.engine.assessment(event.incident_id)
            if assessment is None or not assessment.in_scope:
                continue
            enriched = self._enrich(assessment)
            if enriched.risk.level not in ESCALATION_LEVELS:
                continue
            if subject not in escalation_subjects(self.policy, enriched.assessment):
                continue
            raised = self.lifecycle.observe(
                subject_type,
                subject_key,
                enriched.risk,
                incident_id=assessment.incident_id,
                occurred_at=assessment.occurred_at,
                at=max(at, event.reported_at),
            )
            outcome.escalations.extend(raised)
            self._close_if_pending(raised, outcome)

    def _close_if_pending(self, raised: list[EscalationEvent], outcome: DetectorOutcome) -> None:
        for event in raised:
            pending = self._pending_closes.get(event.escalation_id)
            if pending is not None and event.event == "raised":
                subject_type, subject_key, at = pending
                self._apply_close(event.escalation_id, subject_type, subject_key, at, outcome)

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
        opening = policy.classify(event.opening_code)
        closing = policy.classify(event.closing_code) if event.closing_code else None
        code_class = closing if event.closing_code else opening  # policy.classify(event.code)
        assert code_class is not None  # the engine refuses unknown codes
        risk, reasons = self._risk(assessment, code_class, event)
        flags: tuple[IntegrityFlag, ...] = ()
        if is_checked(event, closing, policy):
            checked_with = self._phrases.policy_for(event.description)
            flags = check_integrity(event, closing, opening, checked_with)
        met = False
        raised: CaseReviewThresholdMet | None = None
        subject = self._case_review_subject(assessment)
        if assessment.in_scope and subject is not None:
            found = self._case_review_incidents(event)
            # Fewer incidents than the threshold cannot meet it (each counts at most once),
            # and then neither the tracker nor the result needs the complaints.
            if len(found) >= policy.case_review.complaints:
                complaints = self._complaints(found)
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
        a = assessment
        # Positional: Assessment's fields in order (``dataclasses.replace`` costs more).
        enriched = Assessment(
            a.incident_id,
            a.in_scope,
            a.classification,
            a.asb_category,
            a.occurred_at,
            a.victim_key,
            a.location_key,
            a.rules_met,
            a.rule_counts,
            a.contributing,
            risk.level,
            risk.score,
            reasons,
            met,
            tuple(flag.content() for flag in flags) if flags else (),
        )
        return _Enriched(enriched, event, risk, flags, raised)

    def _risk(
        self, assessment: Assessment, code_class: CodeClass, event: IncidentEvent
    ) -> tuple[RiskAssessment, tuple[Mapping[str, Any], ...]]:
        """The risk of the incident and its reasons' content."""
        if not assessment.in_scope:
            return NO_RISK, ()
        if assessment.contributing:
            risk = score_assessment(
                self.policy, assessment, code_class=code_class, vulnerability=event.vulnerability
            )
            return risk, tuple(reason.content() for reason in risk.reasons)
        key = (event.code, event.vulnerability)
        known = self._plain_risk.get(key)
        if known is None:
            risk = score_assessment(
                self.policy, assessment, code_class=code_class, vulnerability=event.vulnerability
            )
            known = (risk, tuple(reason.content() for reason in risk.reasons))
            if len(self._plain_risk) >= _RISK_MEMO_SIZE:
                self._plain_risk.clear()
            self._plain_risk[key] = known
        return known

    def _case_review_subject(self, assessment: Assessment) -> str | None:
        if self.policy.case_review.count_by == "victim":
            return assessment.victim_key
        return assessment.location_key

    def _case_review_incidents(self, event: IncidentEvent) -> list[IncidentEvent]:
        """The subject's active incidents in the case review's window ending at ``event``."""
        config = self.policy.case_review
        start, end = event.occurred_at - config.window, event.occurred_at
        if config.count_by == "victim":
            if event.victim_key is None:
                return []
            return self.engine.victim_incidents(
                event.victim_key, start, end, event.victim_key_aliases
            )
        if event.place is None:
            return []
        return self.engine.incidents_near(event.place, config.radius_m, start, end)

    def _complaints(self, found: list[IncidentEvent]) -> list[Complaint]:
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
            self._case_review_days.add(met.occurred_at, met.subject_key)
        if enriched.flags:
            finding = IntegrityFinding.of(enriched.event, enriched.flags)
            if self._findings.get(assessment.incident_id) != finding.finding_id:
                self._findings[assessment.incident_id] = finding.finding_id
                outcome.integrity.append(finding)
        if not assessment.in_scope or enriched.risk.level not in ESCALATION_LEVELS:
            return  # the lifecycle raises nothing below medium
        for subject_type, subject_key in escalation_subjects(self.policy, assessment):
            raised = self.lifecycle.observe(
                subject_type,
                subject_key,
                enriched.risk,
                incident_id=assessment.incident_id,
                occurred_at=assessment.occurred_at,
                at=at,
            )
            outcome.escalations.extend(raised)
            if raised and self._pending_closes:
                self._close_if_pending(raised, outcome)


def _is_subject_of(event: IncidentEvent, subject_type: str, subject_key: str) -> bool:
    if subject_type == "victim":
        return event.victim_key == subject_key or subject_key in event.victim_key_aliases
    return location_key(event.place) == subject_key


@dataclass(frozen=True, slots=True)
class _Enriched:
    assessment: Assessment
    event: IncidentEvent
    risk: RiskAssessment
    flags: tuple[IntegrityFlag, ...]
    case_review: CaseReviewThresholdMet | None
