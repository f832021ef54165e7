"""The detection engine: event-time repeat windows that are right for any arrival order.

State is the current record of every retained incident plus three indexes over the
incidents that are *active* (in scope and not cancelled), each a timeline sorted by
occurrence time:

* per victim (``victim_key``) — for victim rules;
* per grid cell of side ``2 × largest radius`` — for radius location rules; a disc of
  that radius touches at most 2 × 2 cells, so a look-up reads at most four timelines;
* per UPRN — for "same address" location matches.

Incident *i* meets rule *r* when the active incidents of its subject with occurrence time
in (tᵢ − window, tᵢ] number at least ``threshold`` (only those reported within
``max_report_delay``, when the rule has one, *i* included). Because an incident *j* is in
*k*'s window exactly when t_k ∈ [t_j, t_j + window) and the subject relation is symmetric,
a change to *j* re-evaluates exactly the incidents in that range of *j*'s old and new
subjects; each whose assessment changed is re-issued. The result depends only on the set
of current records, never on the order events arrived in.

Events more than ``max_lateness`` behind the newest occurrence time seen are not applied
(they are returned as :class:`NotApplied` for the late topic). Incidents older than the
longest window plus ``max_lateness`` behind that newest time can no longer affect or be
affected by any event that will be applied, so they are pruned a day at a time.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from math import floor
from typing import TypeVar

from asvat.domain.assessment import Assessment, Escalation, NotApplied
from asvat.domain.incident import IncidentEvent
from asvat.domain.location import Place
from asvat.domain.policy import CodeClass, Policy, Rule
from asvat.domain.timeutil import format_timestamp

DAY = 86_400 * 1_000_000

K = TypeVar("K", tuple[int, int], str)


class _Record:
    """The current record of one incident, reduced to what the rules need."""

    __slots__ = (
        "active",
        "cls",
        "eligible",
        "event",
        "fingerprint",
        "incident_id",
        "location_key",
        "place",
        "t",
        "victim_key",
    )

    def __init__(self, event: IncidentEvent, cls: CodeClass, active: bool, eligible: int) -> None:
        self.event = event
        self.incident_id = event.incident_id
        self.t = event.occurred_at
        self.cls = cls
        self.active = active
        self.eligible = eligible  # bit r set: counts for rule r (max_report_delay)
        self.victim_key = event.victim_key
        self.place = event.place
        self.location_key = location_key(event.place)
        self.fingerprint = 0  # of the assessment last issued; 0 = none yet


def location_key(place: Place | None) -> str | None:
    """The key of a place as a subject: its UPRN, else its grid point to the metre."""
    if place is None:
        return None
    if place.uprn is not None:
        return f"uprn:{place.uprn}"
    return f"bng:{floor(place.easting)}:{floor(place.northing)}"


class _Timeline:
    """Records of one subject, sorted by occurrence time."""

    __slots__ = ("items", "times")

    def __init__(self) -> None:
        self.times: list[int] = []
        self.items: list[_Record] = []

    def add(self, record: _Record) -> None:
        index = bisect_right(self.times, record.t)
        self.times.insert(index, record.t)
        self.items.insert(index, record)

    def remove(self, record: _Record) -> None:
        index = bisect_left(self.times, record.t)
        items = self.items
        while items[index] is not record:
            index += 1
        del self.times[index]
        del items[index]

    def window(self, start: int, end: int) -> list[_Record]:
        """Records with ``start < t <= end`` (the window ending at ``end``)."""
        times = self.times
        return self.items[bisect_right(times, start) : bisect_right(times, end)]

    def reach(self, start: int, end: int) -> list[_Record]:
        """Records with ``start <= t < end`` (those whose window holds ``start``)."""
        times = self.times
        return self.items[bisect_left(times, start) : bisect_left(times, end)]

    def prune(self, horizon: int) -> None:
        cut = bisect_left(self.times, horizon)
        if cut:
            del self.times[:cut]
            del self.items[:cut]

    def __len__(self) -> int:
        return len(self.times)


@dataclass(slots=True)
class Outcome:
    """What applying one event changed."""

    assessments: list[Assessment] = field(default_factory=list)
    escalations: list[Escalation] = field(default_factory=list)
    not_applied: NotApplied | None = None
    duplicate: bool = False
    superseded: bool = False


class DetectionEngine:
    """Applies incident events and keeps every incident's assessment current."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self._rules: tuple[Rule, ...] = policy.rules
        self._rule_ids = tuple(r.id for r in policy.rules)
        self._max_lateness = policy.max_lateness
        self._retention = policy.longest_window + policy.max_lateness
        self._cell = 2.0 * policy.max_radius_m if policy.location_rules else 0.0
        self._records: dict[str, _Record] = {}
        self._victims: dict[str, _Timeline] = {}
        self._cells: dict[tuple[int, int], _Timeline] = {}
        self._uprns: dict[str, _Timeline] = {}
        self._raised: dict[tuple[str, str], set[str]] = {}
        self._raised_seen: dict[tuple[str, str], int] = {}
        self._days: dict[int, list[_Record]] = {}
        self._watermark: int | None = None
        self._pruned_before_day: int | None = None

    # -- public API -----------------------------------------------------------------------

    @property
    def watermark(self) -> int | None:
        """The newest occurrence time applied so far (µs), or None."""
        return self._watermark

    @property
    def retained_incidents(self) -> int:
        return len(self._records)

    def apply(self, event: IncidentEvent) -> Outcome:
        """Apply one event; return the assessments and escalations it changed."""
        outcome = Outcome()
        watermark = self._watermark
        if watermark is not None and event.occurred_at < watermark - self._max_lateness:
            outcome.not_applied = NotApplied(
                reason=(
                    f"occurred_at {format_timestamp(event.occurred_at)} is more than the "
                    f"policy's max_lateness behind the newest occurrence time seen "
                    f"({format_timestamp(watermark)})"
                ),
                kind="late",
                watermark=watermark,
            )
            return outcome
        cls = self.policy.classify(event.code)
        if cls is None:
            outcome.not_applied = NotApplied(
                reason=f"code {event.code!r} is not in the policy's codes (unknown_code: reject)",
                kind="rejected",
                watermark=watermark,
            )
            return outcome
        old = self._records.get(event.incident_id)
        if old is not None and not event.supersedes(old.event):
            if event.event_id == old.event.event_id:
                outcome.duplicate = True
            else:
                outcome.superseded = True
            return outcome

        new = self._make_record(event, cls)
        self._records[event.incident_id] = new
        self._days.setdefault(new.t // DAY, []).append(new)
        if old is not None:
            new.fingerprint = old.fingerprint
            if old.active:
                self._unindex(old)
        if new.active:
            self._index(new)

        affected: dict[str, _Record] = {new.incident_id: new}
        if old is not None and old.active:
            self._collect_affected(old, affected)
        if new.active:
            self._collect_affected(new, affected)
        for record in affected.values():
            self._reassess(record, outcome)

        if watermark is None or event.occurred_at > watermark:
            self._watermark = event.occurred_at
            self._prune()
        return outcome

    def final_assessments(self) -> dict[str, Assessment]:
        """The current assessment of every active (in-scope, not cancelled) incident."""
        return {
            incident_id: self._assess(record)
            for incident_id, record in self._records.items()
            if record.active
        }

    def assessment(self, incident_id: str) -> Assessment | None:
        record = self._records.get(incident_id)
        return None if record is None else self._assess(record)

    def current_events(self) -> Iterator[IncidentEvent]:
        """The current record of every retained incident (for snapshots)."""
        return (record.event for record in self._records.values())

    def restore(self, events: Iterable[IncidentEvent]) -> None:
        """Rebuild state from current records without issuing anything.

        After a restore, applying an event issues exactly what it would have issued had the
        engine never stopped (fingerprints and raised escalations are recomputed).
        """
        sink = Outcome()
        for event in events:
            outcome = self.apply(event)
            sink.escalations.extend(outcome.escalations)

    # -- internals ------------------------------------------------------------------------

    def _make_record(self, event: IncidentEvent, cls: CodeClass) -> _Record:
        active = not event.cancelled and cls.cls in self.policy.scope
        eligible = 0
        delay = event.reported_at - event.occurred_at
        for bit, rule in enumerate(self._rules):
            if rule.max_report_delay is None or delay <= rule.max_report_delay:
                eligible |= 1 << bit
        return _Record(event, cls, active, eligible)

    def _cells_near(self, place: Place, radius: float) -> list[_Timeline]:
        size = self._cell
        x0 = floor((place.easting - radius) / size)
        x1 = floor((place.easting + radius) / size)
        y0 = floor((place.northing - radius) / size)
        y1 = floor((place.northing + radius) / size)
        cells = self._cells
        found = []
        for cx in range(x0, x1 + 1):
            for cy in range(y0, y1 + 1):
                timeline = cells.get((cx, cy))
                if timeline is not None:
                    found.append(timeline)
        return found

    def _index(self, record: _Record) -> None:
        if record.victim_key is not None and self.policy.victim_rules:
            timeline = self._victims.get(record.victim_key)
            if timeline is None:
                timeline = self._victims[record.victim_key] = _Timeline()
            timeline.add(record)
        place = record.place
        if place is not None and self.policy.location_rules:
            cell = place.cell(self._cell)
            timeline = self._cells.get(cell)
            if timeline is None:
                timeline = self._cells[cell] = _Timeline()
            timeline.add(record)
            if place.uprn is not None:
                timeline = self._uprns.get(place.uprn)
                if timeline is None:
                    timeline = self._uprns[place.uprn] = _Timeline()
                timeline.add(record)

    def _unindex(self, record: _Record) -> None:
        if record.victim_key is not None and self.policy.victim_rules:
            self._remove_from(self._victims, record.victim_key, record)
        place = record.place
        if place is not None and self.policy.location_rules:
            self._remove_from(self._cells, place.cell(self._cell), record)
            if place.uprn is not None:
                self._remove_from(self._uprns, place.uprn, record)

    @staticmethod
    def _remove_from(index: dict[K, _Timeline], key: K, record: _Record) -> None:
        timeline = index[key]
        timeline.remove(record)
        if not timeline:
            del index[key]

    def _collect_affected(self, changed: _Record, into: dict[str, _Record]) -> None:
        """Add every active record whose window for some rule holds ``changed``."""
        t = changed.t
        for rule in self._rules:
            end = t + rule.window
            if rule.subject == "victim":
                if changed.victim_key is None:
                    continue
                timeline = self._victims.get(changed.victim_key)
                if timeline is not None:
                    for record in timeline.reach(t, end):
                        into[record.incident_id] = record
            else:
                for record in self._near(changed.place, rule, t, end, reach=True):
                    into[record.incident_id] = record

    def _near(
        self, place: Place | None, rule: Rule, start: int, end: int, *, reach: bool
    ) -> Iterator[_Record]:
        """Active records at the same place as ``place`` under ``rule``, in a time range."""
        if place is None:
            return
        radius = rule.radius_m or 0.0
        r2 = radius * radius
        x, y = place.easting, place.northing
        uprn = place.uprn
        for timeline in self._cells_near(place, radius):
            records = timeline.reach(start, end) if reach else timeline.window(start, end)
            for record in records:
                other = record.place
                assert other is not None
                dx = other.easting - x
                dy = other.northing - y
                if dx * dx + dy * dy <= r2:
                    yield record
        same_address = self._uprns.get(uprn) if uprn is not None else None
        if same_address is not None:
            records = same_address.reach(start, end) if reach else same_address.window(start, end)
            # Same UPRN but further than the radius: not yielded from the cells.
            for record in records:
                other = record.place
                assert other is not None
                dx = other.easting - x
                dy = other.northing - y
                if dx * dx + dy * dy > r2:
                    yield record

    def _evaluate(self, record: _Record) -> tuple[tuple[int, ...], dict[str, tuple[str, ...]]]:
        counts: list[int] = []
        contributing: dict[str, tuple[str, ...]] = {}
        t = record.t
        for bit, rule in enumerate(self._rules):
            mask = 1 << bit
            start = t - rule.window
            ids: list[str]
            if rule.subject == "victim":
                timeline = (
                    self._victims.get(record.victim_key) if record.victim_key is not None else None
                )
                if timeline is None:
                    ids = []
                else:
                    ids = [r.incident_id for r in timeline.window(start, t) if r.eligible & mask]
            else:
                seen = {
                    r.incident_id
                    for r in self._near(record.place, rule, start, t, reach=False)
                    if r.eligible & mask
                }
                ids = list(seen)
            counts.append(len(ids))
            if len(ids) >= rule.threshold:
                ids.sort()
                contributing[rule.id] = tuple(ids)
        return tuple(counts), contributing

    def _assess(self, record: _Record) -> Assessment:
        cls = record.cls
        if record.active:
            counts, contributing = self._evaluate(record)
        else:
            counts, contributing = (0,) * len(self._rules), {}
        return Assessment(
            incident_id=record.incident_id,
            in_scope=record.active,
            classification="cancelled" if record.event.cancelled else cls.cls,
            asb_category=cls.asb_category,
            occurred_at=record.t,
            victim_key=record.victim_key,
            location_key=record.location_key,
            rules_met=tuple(sorted(contributing)),
            rule_counts=dict(zip(self._rule_ids, counts, strict=True)),
            contributing=contributing,
        )

    def _reassess(self, record: _Record, outcome: Outcome) -> None:
        assessment = self._assess(record)
        fingerprint = (
            hash(
                (
                    assessment.in_scope,
                    assessment.classification,
                    assessment.asb_category,
                    assessment.occurred_at,
                    assessment.victim_key,
                    assessment.location_key,
                    tuple(assessment.rule_counts.values()),
                    tuple(sorted(assessment.contributing.items())),
                )
            )
            or 1
        )
        if fingerprint == record.fingerprint:
            return
        record.fingerprint = fingerprint
        outcome.assessments.append(assessment)
        for rule in self._rules:
            ids = assessment.contributing.get(rule.id)
            if ids is None:
                continue
            subject_key = record.victim_key if rule.subject == "victim" else record.location_key
            if subject_key is None:
                continue
            subject = (rule.subject, subject_key)
            raised = self._raised.get(subject)
            if raised is None:
                raised = self._raised[subject] = set()
            self._raised_seen[subject] = max(self._raised_seen.get(subject, record.t), record.t)
            if rule.id in raised:
                continue
            raised.add(rule.id)
            outcome.escalations.append(
                Escalation(
                    subject_type=rule.subject,
                    subject_key=subject_key,
                    rule_id=rule.id,
                    incident_id=record.incident_id,
                    contributing_incident_ids=ids,
                    occurred_at=record.t,
                )
            )

    def _prune(self) -> None:
        """Forget incidents that no event still to be applied can affect."""
        assert self._watermark is not None
        horizon = self._watermark - self._retention
        last_whole_day = horizon // DAY  # days before this one end at or before the horizon
        start = self._pruned_before_day
        if start is None:
            start = min(self._days) if self._days else last_whole_day
        if start >= last_whole_day:
            return
        for day in range(start, last_whole_day):
            for record in self._days.pop(day, ()):
                if self._records.get(record.incident_id) is record:
                    del self._records[record.incident_id]
                    if record.active:
                        self._unindex(record)
        self._pruned_before_day = last_whole_day
        stale = [subject for subject, seen in self._raised_seen.items() if seen < horizon]
        for subject in stale:
            del self._raised_seen[subject]
            self._raised.pop(subject, None)
