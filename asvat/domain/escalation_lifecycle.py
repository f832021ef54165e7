"""Escalations per subject (a victim or a location): raised, upgraded, closed, reviewed.

* **Raised** when the subject's risk first reaches medium or high (the level of one of its
  incidents, :mod:`asvat.domain.risk`).
* **Upgraded** when it rises (medium → high). Never downgraded automatically: a lower level
  changes nothing; a person closes the escalation (:meth:`EscalationLifecycle.close`).
* After a close, only an incident that occurred after the close can raise a new escalation
  (re-assessing what the person had already seen does not re-open it); the new one is the
  subject's next *episode*.
* Each raise and upgrade carries the policy's tasking for its level and subject type:
  actions with deadlines from the time given (``at``), and review schedules per rank.
* :meth:`EscalationLifecycle.reviews_due` announces each review once when it comes due
  (``review.due``, ``tasking.review_notice`` before its time) and once when it is overdue
  (``review.overdue``, after its time). A recorded review schedules the next one
  ``every`` after it; an upgrade replaces the schedules with the new level's, from then.

Ids are deterministic: an escalation is ``sha256("escalation"|type|key|episode)``; a raise
or upgrade event adds the event and level; a review adds the level, rank and due time. Time
is always passed in (epoch µs): pass event time (the triggering incident's reported time)
for a replay that gives the same output every run, or wall-clock time in a live worker.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from asvat.domain.assessment import Assessment, content_id
from asvat.domain.policy import ESCALATION_LEVELS, Policy, TaskingPolicy
from asvat.domain.risk import Reason, RiskAssessment, format_duration, level_rank
from asvat.domain.timeutil import DayIndex, format_timestamp

Subject = tuple[str, str]  # (subject_type, subject_key)


def escalation_subjects(policy: Policy, assessment: Assessment) -> list[Subject]:
    """The subjects an incident's risk applies to: its victim, and its place when the place
    is a repeat location (the incident meets a location rule). An incident's risk is not
    put on a place merely because a repeat victim was there."""
    subjects: list[Subject] = []
    if assessment.victim_key is not None:
        subjects.append(("victim", assessment.victim_key))
    if assessment.location_key is not None and any(
        rule.id in assessment.contributing for rule in policy.location_rules
    ):
        subjects.append(("location", assessment.location_key))
    return subjects


def _time(micros: int | None) -> str | None:
    return None if micros is None else format_timestamp(micros)


@dataclass(frozen=True, slots=True)
class Task:
    """A recommended action, due by ``due_at`` (None: no deadline)."""

    id: str
    description: str
    due_at: int | None

    def content(self) -> dict[str, Any]:
        return {"id": self.id, "description": self.description, "due_at": _time(self.due_at)}


@dataclass(frozen=True, slots=True)
class ScheduledReview:
    """A supervisory review by ``rank`` every ``every`` µs, the first due at ``first_due_at``."""

    rank: str
    every: int
    first_due_at: int

    def content(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "every": format_duration(self.every),
            "first_due_at": format_timestamp(self.first_due_at),
        }


@dataclass(frozen=True, slots=True)
class Tasking:
    level: str
    actions: tuple[Task, ...]
    reviews: tuple[ScheduledReview, ...]

    def content(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "actions": [a.content() for a in self.actions],
            "reviews": [r.content() for r in self.reviews],
        }


def tasking_for(policy: TaskingPolicy, level: str, subject_type: str, at: int) -> Tasking:
    """The tasking of an escalation of ``subject_type`` raised or upgraded to ``level`` at
    ``at``: the level's actions for that subject type, deadlines counted from ``at``."""
    spec = policy.levels[level]
    return Tasking(
        level=level,
        actions=tuple(
            Task(a.id, a.description, None if a.within is None else at + a.within)
            for a in spec.actions
            if subject_type in a.subjects
        ),
        reviews=tuple(ScheduledReview(r.rank, r.every, at + r.every) for r in spec.reviews),
    )


@dataclass(frozen=True, slots=True)
class EscalationEvent:
    """``raised``, ``upgraded`` or ``closed``, for the escalations topic."""

    event: str
    escalation_id: str
    subject_type: str
    subject_key: str
    episode: int
    level: str
    previous_level: str | None
    at: int
    incident_id: str | None = None
    occurred_at: int | None = None
    score: int | None = None
    reasons: tuple[Reason, ...] = ()
    tasking: Tasking | None = None

    @property
    def event_id(self) -> str:
        """Deterministic: the escalation, the event and the level."""
        return content_id("escalation-event", self.escalation_id, self.event, self.level)

    def content(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "escalation_id": self.escalation_id,
            "event": self.event,
            "subject_type": self.subject_type,
            "subject_key": self.subject_key,
            "episode": self.episode,
            "level": self.level,
            "previous_level": self.previous_level,
            "incident_id": self.incident_id,
            "occurred_at": _time(self.occurred_at),
            "risk_score": self.score,
            "reasons": [r.content() for r in self.reasons],
            "tasking": None if self.tasking is None else self.tasking.content(),
            "at": format_timestamp(self.at),
        }


@dataclass(frozen=True, slots=True)
class ReviewEvent:
    """``review.due`` or ``review.overdue`` for one review of an open escalation."""

    event: str
    escalation_id: str
    subject_type: str
    subject_key: str
    level: str
    rank: str
    due_at: int
    at: int

    @property
    def review_id(self) -> str:
        """Deterministic: the escalation, level, rank and due time of this review."""
        return content_id("review", self.escalation_id, self.level, self.rank, str(self.due_at))

    @property
    def event_id(self) -> str:
        return content_id(self.review_id, self.event)

    def content(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "review_id": self.review_id,
            "event": self.event,
            "escalation_id": self.escalation_id,
            "subject_type": self.subject_type,
            "subject_key": self.subject_key,
            "level": self.level,
            "rank": self.rank,
            "due_at": format_timestamp(self.due_at),
            "at": format_timestamp(self.at),
        }


@dataclass(slots=True)
class _Review:
    rank: str
    every: int
    due_at: int
    announced: bool = False
    overdue: bool = False


@dataclass(slots=True)
class _Open:
    escalation_id: str
    episode: int
    level: str
    raised_at: int
    changed_at: int
    reviews: list[_Review] = field(default_factory=list)
    #: The raise and, after upgrades, the latest upgrade: what a snapshot re-publishes.
    events: list[EscalationEvent] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class OpenEscalation:
    """A read-only view of a subject's open escalation."""

    escalation_id: str
    subject_type: str
    subject_key: str
    episode: int
    level: str
    raised_at: int
    changed_at: int
    reviews_due_at: tuple[tuple[str, int], ...]  # (rank, due_at)


class EscalationLifecycle:
    """The escalation state of every subject. Pure: no clock, no I/O."""

    def __init__(self, tasking: TaskingPolicy) -> None:
        self.tasking = tasking
        self._open: dict[Subject, _Open] = {}
        self._episodes: dict[Subject, int] = {}
        self._closed_at: dict[Subject, int] = {}
        self._closed_days: DayIndex[Subject] = DayIndex()  # for forget_closed_before

    def export_state(self) -> dict[str, Any]:
        """Every subject's open escalation, episode count and last close (for a checkpoint:
        :mod:`asvat.domain.checkpoint`)."""
        return {
            "open": self._open,
            "episodes": self._episodes,
            "closed_at": self._closed_at,
            "closed_days": self._closed_days.export_state(),
        }

    def import_state(self, state: dict[str, Any]) -> None:
        self._open = state["open"]
        self._episodes = state["episodes"]
        self._closed_at = state["closed_at"]
        self._closed_days.import_state(state["closed_days"])

    # -- escalations ----------------------------------------------------------------------

    def observe(
        self,
        subject_type: str,
        subject_key: str,
        risk: RiskAssessment,
        *,
        incident_id: str,
        occurred_at: int,
        at: int,
    ) -> list[EscalationEvent]:
        """The subject's incident ``incident_id`` has risk ``risk``: raise or upgrade.

        ``at`` is when the escalation is raised or upgraded (deadlines count from it).
        Returns no event when the level is standard, not above the open escalation's, or
        when the subject's last escalation was closed after ``occurred_at``.
        """
        if risk.level not in ESCALATION_LEVELS:
            return []
        subject = (subject_type, subject_key)
        current = self._open.get(subject)
        if current is None:
            closed_at = self._closed_at.get(subject)
            if closed_at is not None and occurred_at <= closed_at:
                return []
            episode = self._episodes.get(subject, 0) + 1
            self._episodes[subject] = episode
            current = _Open(
                escalation_id=content_id("escalation", subject_type, subject_key, str(episode)),
                episode=episode,
                level=risk.level,
                raised_at=at,
                changed_at=at,
            )
            self._open[subject] = current
            event, previous = "raised", None
        elif level_rank(risk.level) > level_rank(current.level):
            previous = current.level
            current.level = risk.level
            current.changed_at = at
            event = "upgraded"
        else:
            return []
        tasking = tasking_for(self.tasking, risk.level, subject_type, at)
        current.reviews = [_Review(r.rank, r.every, r.first_due_at) for r in tasking.reviews]
        issued = EscalationEvent(
            event=event,
            escalation_id=current.escalation_id,
            subject_type=subject_type,
            subject_key=subject_key,
            episode=current.episode,
            level=risk.level,
            previous_level=previous,
            at=at,
            incident_id=incident_id,
            occurred_at=occurred_at,
            score=risk.score,
            reasons=risk.reasons,
            tasking=tasking,
        )
        if current.events:
            current.events[1:] = [issued]
        else:
            current.events.append(issued)
        return [issued]

    def close(self, subject_type: str, subject_key: str, *, at: int) -> EscalationEvent | None:
        """A person closes the subject's open escalation at ``at``; None if none is open."""
        subject = (subject_type, subject_key)
        current = self._open.pop(subject, None)
        if current is None:
            return None
        self._closed_at[subject] = at
        self._closed_days.add(at, subject)
        return EscalationEvent(
            event="closed",
            escalation_id=current.escalation_id,
            subject_type=subject_type,
            subject_key=subject_key,
            episode=current.episode,
            level=current.level,
            previous_level=None,
            at=at,
        )

    def forget_closed_before(self, horizon: int) -> None:
        """Forget closes made before ``horizon``: they only hold back incidents that occurred
        before the close, and no incident still to be applied occurred before ``horizon``.
        (Episode numbers are kept: escalation ids must not repeat.)"""
        closed = self._closed_at
        for subject in self._closed_days.pop_before(horizon):
            at = closed.get(subject)
            if at is not None and at < horizon:  # not closed again since
                del closed[subject]

    @property
    def closed_subjects(self) -> int:
        """Subjects whose last escalation was closed and whose close is still remembered."""
        return len(self._closed_at)

    @property
    def subjects_numbered(self) -> int:
        """Subjects that have had an escalation (their episode numbers are kept)."""
        return len(self._episodes)

    def current(self, subject_type: str, subject_key: str) -> OpenEscalation | None:
        found = self._open.get((subject_type, subject_key))
        if found is None:
            return None
        return OpenEscalation(
            escalation_id=found.escalation_id,
            subject_type=subject_type,
            subject_key=subject_key,
            episode=found.episode,
            level=found.level,
            raised_at=found.raised_at,
            changed_at=found.changed_at,
            reviews_due_at=tuple((r.rank, r.due_at) for r in found.reviews),
        )

    def published_events(self, owns: Callable[[str], bool] | None = None) -> list[EscalationEvent]:
        """The raise and latest upgrade of every open escalation (of the subjects ``owns``
        accepts): what a worker re-publishes when it takes over a subject, so that a consumer
        that missed them (ids are deterministic: one that did not ignores them) is whole."""
        found: list[EscalationEvent] = []
        for (_subject_type, subject_key), current in sorted(self._open.items()):
            if owns is None or owns(subject_key):
                found.extend(current.events)
        return found

    def open_escalations(self) -> Iterator[OpenEscalation]:
        for subject_type, subject_key in sorted(self._open):
            view = self.current(subject_type, subject_key)
            assert view is not None
            yield view

    # -- reviews --------------------------------------------------------------------------

    def record_review(self, subject_type: str, subject_key: str, rank: str, *, at: int) -> int:
        """A ``rank`` review of the subject's open escalation was done at ``at``; returns when
        the next one is due. Raises KeyError when no escalation is open or the level has no
        review by that rank."""
        current = self._open.get((subject_type, subject_key))
        if current is None:
            raise KeyError(f"no open escalation for {subject_type} {subject_key}")
        for review in current.reviews:
            if review.rank == rank:
                review.due_at = at + review.every
                review.announced = review.overdue = False
                return review.due_at
        raise KeyError(f"no {rank} review at level {current.level}")

    def reviews_due(
        self, now: int, owns: Callable[[str], bool] | None = None
    ) -> list[ReviewEvent]:
        """Reviews that have come due (within ``review_notice`` of their time) or are overdue
        (past it) at ``now`` and were not announced as such before. Each review is announced
        due once and overdue once; a review first seen overdue gives both events. Ordered by
        due time, then escalation id, then rank as the policy lists them.

        ``owns(subject_key)``: only those subjects' reviews are announced (and marked as
        announced); a worker that holds a replica of state it does not publish leaves the
        others for their owner."""
        notice = self.tasking.review_notice
        found: list[tuple[int, str, int, int, ReviewEvent]] = []
        for (subject_type, subject_key), current in self._open.items():
            if owns is not None and not owns(subject_key):
                continue
            for index, review in enumerate(current.reviews):
                kinds: list[str] = []
                if not review.announced and now >= review.due_at - notice:
                    review.announced = True
                    kinds.append("review.due")
                if not review.overdue and now > review.due_at:
                    review.overdue = True
                    kinds.append("review.overdue")
                for order, kind in enumerate(kinds):
                    event = ReviewEvent(
                        event=kind,
                        escalation_id=current.escalation_id,
                        subject_type=subject_type,
                        subject_key=subject_key,
                        level=current.level,
                        rank=review.rank,
                        due_at=review.due_at,
                        at=now,
                    )
                    found.append((review.due_at, current.escalation_id, index, order, event))
        found.sort(key=lambda item: item[:4])
        return [item[4] for item in found]

    # -- persistence ----------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The whole state as JSON-ready data (for a state store)."""
        return {
            "episodes": [[t, k, n] for (t, k), n in sorted(self._episodes.items())],
            "closed_at": [[t, k, at] for (t, k), at in sorted(self._closed_at.items())],
            "open": [
                {
                    "subject": [t, k],
                    "escalation_id": o.escalation_id,
                    "episode": o.episode,
                    "level": o.level,
                    "raised_at": o.raised_at,
                    "changed_at": o.changed_at,
                    "reviews": [
                        [r.rank, r.every, r.due_at, r.announced, r.overdue] for r in o.reviews
                    ],
                }
                for (t, k), o in sorted(self._open.items())
            ],
        }

    @classmethod
    def restore(cls, tasking: TaskingPolicy, data: dict[str, Any]) -> EscalationLifecycle:
        """Rebuild from :meth:`snapshot` output."""
        lifecycle = cls(tasking)
        lifecycle._episodes = {(t, k): int(n) for t, k, n in data["episodes"]}
        lifecycle._closed_at = {(t, k): int(at) for t, k, at in data["closed_at"]}
        for subject, at in lifecycle._closed_at.items():
            lifecycle._closed_days.add(at, subject)
        for item in data["open"]:
            subject_type, subject_key = item["subject"]
            lifecycle._open[(subject_type, subject_key)] = _Open(
                escalation_id=item["escalation_id"],
                episode=int(item["episode"]),
                level=item["level"],
                raised_at=int(item["raised_at"]),
                changed_at=int(item["changed_at"]),
                reviews=[
                    _Review(rank, int(every), int(due), bool(announced), bool(overdue))
                    for rank, every, due, announced, overdue in item["reviews"]
                ],
            )
        return lifecycle
