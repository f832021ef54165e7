"""The detection engine: event-time repeat windows that are right for any arrival order.

State is the current record of every retained incident plus three indexes over the
incidents that are *active* (in scope and not cancelled), each a timeline sorted by
occurrence time:

* per victim (``victim_key``) — for victim rules; during an HMAC key rotation an incident
  is also listed under each of its ``victim_key_aliases``, and incidents that share any
  key are one victim's (a window is the union of its keys' timelines);
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

Cost (``bench/engine.py`` measures it): ``apply`` runs once per incident event, so it looks
a subject's timeline and grid cells up once per event, uses no generators, builds an
:class:`Assessment` only when it is issued (whether it changed is decided on a hash of the
counts and ids), and skips the search for windows that hold a new incident when none of its
subjects has a later one (the usual case: events come roughly in time order). Memory is
kept per retained incident: a record holds only what the rules read (the event holds the
rest), a superseded record is dropped at once, and a victim's timeline, of which there are
many and most short, is a single list searched with ``bisect``'s ``key``.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort_right
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from math import floor
from operator import attrgetter
from typing import Any

from asvat.domain.assessment import Assessment, Escalation, NotApplied
from asvat.domain.identity import victim_keys
from asvat.domain.incident import IncidentEvent
from asvat.domain.location import Place
from asvat.domain.policy import CodeClass, Policy, Rule
from asvat.domain.timeutil import format_timestamp

DAY = 86_400 * 1_000_000
#: Fingerprints are kept below 2**60: such an int takes 32 bytes, a full 64-bit hash 48.
_FINGERPRINT_BITS = (1 << 60) - 1


class _Record:
    """The current record of one incident, reduced to what the rules need."""

    __slots__ = ("active", "cls", "eligible", "event", "fingerprint", "place")

    def __init__(self, event: IncidentEvent, cls: CodeClass, active: bool, eligible: int) -> None:
        self.event = event
        self.place = event.place
        self.cls = cls
        self.active = active
        self.eligible = eligible  # bit r set: counts for rule r (max_report_delay)
        # Hash of the counts and contributing ids last issued; 0 = none issued since this
        # record became the incident's current one (so it is issued, see ``apply``).
        self.fingerprint = 0


#: The sort key of a victim's timeline (a plain list of records, see the module docstring).
_victim_time = attrgetter("event.occurred_at")


class _Timeline:
    """Records of one place subject (a grid cell or a UPRN), sorted by occurrence time.

    The times are kept beside the records so that ``bisect`` compares plain ints: a grid
    cell is searched several times per event.
    """

    __slots__ = ("items", "times")

    def __init__(self) -> None:
        self.times: list[int] = []
        self.items: list[_Record] = []

    def add(self, record: _Record) -> None:
        t = record.event.occurred_at
        index = bisect_right(self.times, t)
        self.times.insert(index, t)
        self.items.insert(index, record)

    def remove(self, record: _Record) -> None:
        index = bisect_left(self.times, record.event.occurred_at)
        items = self.items
        while items[index] is not record:
            index += 1
        del self.times[index]
        del items[index]

    def __len__(self) -> int:
        return len(self.times)

    def ends_with(self, record: _Record, t: int) -> bool:
        """Whether no record but ``record`` has occurrence time ``t`` or later."""
        times = self.times
        if times[-1] < t:
            return True
        return self.items[-1] is record and (len(times) == 1 or times[-2] < t)


def _timeline_of(records: dict[str, _Record], incident_ids: list[str]) -> _Timeline:
    """A timeline of the records of ``incident_ids``, in that order (already sorted)."""
    timeline = _Timeline()
    items = [records[incident_id] for incident_id in incident_ids]
    timeline.items = items
    timeline.times = [record.event.occurred_at for record in items]
    return timeline


def location_key(place: Place | None) -> str | None:
    """The key of a place as a subject: its UPRN, else its grid point to the metre."""
    if place is None:
        return None
    if place.uprn is not None:
        return f"uprn:{place.uprn}"
    return f"bng:{floor(place.easting)}:{floor(place.northing)}"


def _cell_key(cx: int, cy: int) -> int:
    """One int for the grid cell ``(cx, cy)``: cheaper to hash than a tuple, and unique for
    |cy| < 2**31 cells (any point within 400,000 km of the grid's origin)."""
    return (cx << 32) + (cy & 0xFFFFFFFF)


@dataclass(frozen=True, slots=True)
class _RulePlan:
    """One rule with what evaluating it needs at hand."""

    id: str
    victim: bool
    window: int
    threshold: int
    mask: int  # the rule's bit in ``_Record.eligible``
    filtered: bool  # has a max_report_delay: only records with the bit set count
    r2: float  # radius squared (location rules)


class Outcome:
    """What applying one event changed.

    A plain class, not a dataclass: mypyc compiles its ``__init__`` (a dataclass's
    generated one stays interpreted), and one is made per event.
    """

    __slots__ = ("assessments", "duplicate", "escalations", "not_applied", "superseded")

    def __init__(self) -> None:
        self.assessments: list[Assessment] = []
        self.escalations: list[Escalation] = []
        self.not_applied: NotApplied | None = None
        self.duplicate = False
        self.superseded = False

    def __repr__(self) -> str:
        return (
            f"Outcome(assessments={self.assessments!r}, escalations={self.escalations!r}, "
            f"not_applied={self.not_applied!r}, duplicate={self.duplicate!r}, "
            f"superseded={self.superseded!r})"
        )


class DetectionEngine:
    """Applies incident events and keeps every incident's assessment current."""

    def __init__(self, policy: Policy, *, forget: bool = True) -> None:
        """``forget``: prune incidents past the retention (the live worker). Offline
        replays pass False, so that every incident's final assessment can be given however
        long the history; memory then grows with it."""
        self.policy = policy
        self._forget = forget
        self._rules: tuple[Rule, ...] = policy.rules
        self._rule_ids = tuple(r.id for r in policy.rules)
        # Every rule at 0, in rule order: copied to start each evaluation's rule_counts.
        self._no_counts = dict.fromkeys(self._rule_ids, 0)
        self._plans = tuple(
            _RulePlan(
                id=r.id,
                victim=r.subject == "victim",
                window=r.window,
                threshold=r.threshold,
                mask=1 << n,
                filtered=r.max_report_delay is not None,
                r2=(r.radius_m or 0.0) * (r.radius_m or 0.0),
            )
            for n, r in enumerate(policy.rules)
        )
        # The plans as plain tuples, which ``_evaluate`` unpacks faster than it reads fields.
        self._plan_rows = tuple(
            (p.id, p.victim, p.window, p.threshold, p.mask, p.filtered, p.r2) for p in self._plans
        )
        # Rules without max_report_delay count every incident: their bits are always set.
        self._always_eligible = sum(
            1 << n for n, r in enumerate(policy.rules) if r.max_report_delay is None
        )
        self._delay_limits = tuple(
            (1 << n, r.max_report_delay)
            for n, r in enumerate(policy.rules)
            if r.max_report_delay is not None
        )
        self._by_victim = bool(policy.victim_rules)
        self._by_place = bool(policy.location_rules)
        self._codes = policy.codes
        self._scope = policy.scope
        self._max_lateness = policy.max_lateness
        self._retention = policy.longest_window + policy.max_lateness
        self._cell = 2.0 * policy.max_radius_m if policy.location_rules else 0.0
        self._max_radius = policy.max_radius_m
        self._records: dict[str, _Record] = {}
        self._victims: dict[str, list[_Record]] = {}
        self._cells: dict[int, _Timeline] = {}  # by _cell_key
        self._uprns: dict[str, _Timeline] = {}
        self._raised: dict[tuple[str, str], set[str]] = {}
        self._raised_seen: dict[tuple[str, str], int] = {}
        # Subjects by the day their ``_raised_seen`` was last moved into: pruning reads
        # only the days it passes, not every subject ever raised.
        self._raised_days: dict[int, list[tuple[str, str]]] = {}
        # Incident ids by the day of their current record's occurrence, for pruning. Ids, not
        # records: a superseded record must not stay in memory until its day is pruned.
        self._days: dict[int, list[str]] = {}
        self._first_day: int | None = None
        self._watermark: int | None = None
        self._pruned_before_day: int | None = None
        # The watermark from which _prune has a day to forget (None: not known yet).
        self._prune_from: int | None = None
        # Ids of incidents forgotten since take_forgotten() last ran (None: not tracked).
        self._forgotten: list[str] | None = None

    # -- public API -----------------------------------------------------------------------

    @property
    def watermark(self) -> int | None:
        """The newest occurrence time applied so far (µs), or None."""
        return self._watermark

    @property
    def retained_incidents(self) -> int:
        return len(self._records)

    @property
    def forgotten_before(self) -> int | None:
        """Incidents that occurred before this time (µs) have been forgotten; None until
        the engine first forgets (always None when it does not forget). Every event still
        to be applied occurred at or after it."""
        day = self._pruned_before_day
        return None if day is None else day * DAY

    def apply(self, event: IncidentEvent) -> Outcome:
        """Apply one event; return the assessments and escalations it changed."""
        outcome = Outcome()
        watermark = self._watermark
        t = event.occurred_at
        if watermark is not None and t < watermark - self._max_lateness:
            outcome.not_applied = NotApplied(
                reason=(
                    f"occurred_at {format_timestamp(t)} is more than the "
                    f"policy's max_lateness behind the newest occurrence time seen "
                    f"({format_timestamp(watermark)})"
                ),
                kind="late",
                watermark=watermark,
            )
            return outcome
        code = event.closing_code or event.opening_code  # IncidentEvent.code, inlined
        cls = self._codes.get(code) or self.policy.classify(code)
        if cls is None:
            outcome.not_applied = NotApplied(
                reason=f"code {code!r} is not in the policy's codes (unknown_code: reject)",
                kind="rejected",
                watermark=watermark,
            )
            return outcome
        incident_id = event.incident_id
        old = self._records.get(incident_id)
        if old is not None and not event.supersedes(old.event):
            if event.event_id == old.event.event_id:
                outcome.duplicate = True
            else:
                outcome.superseded = True
            return outcome

        eligible = self._always_eligible
        if self._delay_limits:
            delay = event.reported_at - t
            for bit, max_delay in self._delay_limits:
                if delay <= max_delay:
                    eligible |= bit
        active = event.event_type != "cancelled" and cls.cls in self._scope
        new = _Record(event, cls, active, eligible)
        self._records[incident_id] = new
        day = t // DAY
        on_day = self._days.get(day)
        if on_day is None:
            self._days[day] = [incident_id]
            if self._first_day is None or day < self._first_day:
                self._first_day = day
                self._prune_from = None
        elif old is None or old.event.occurred_at // DAY != day:
            on_day.append(incident_id)
        # The changed incident's own assessment is always re-issued (new.fingerprint is 0):
        # fields outside the windows (vulnerability, codes, description) feed its risk and
        # integrity checks, which the detector adds to it.
        old_active = old is not None and old.active
        if old is not None and old_active:
            self._unindex(old)
        new_cells = None
        if active:
            self._index(new)
            new_cells = self._cells_near(new.place)

        if not old_active and (new_cells is None or self._is_newest(new, new_cells)):
            # The usual case: no other incident's window holds the old or the new record.
            self._reassess(new, new_cells, outcome)
        else:
            # Keyed by record (one current record per incident), in the order first reached.
            affected: dict[_Record, None] = {new: None}
            if old is not None and old_active:
                self._collect_affected(old, self._cells_near(old.place), affected)
                if new_cells is not None and not self._is_newest(new, new_cells):
                    self._collect_affected(new, new_cells, affected)
            else:  # not the newest (tested above)
                assert new_cells is not None
                self._collect_affected(new, new_cells, affected)
            for record in affected:
                self._reassess(record, new_cells if record is new else None, outcome)

        if watermark is None or t > watermark:
            self._watermark = t
            if self._forget and (self._prune_from is None or t >= self._prune_from):
                self._prune()
        return outcome

    def final_assessments(self) -> dict[str, Assessment]:
        """The current assessment of every active (in-scope, not cancelled) incident.

        An engine that forgets gives only the *open* incidents: those within
        ``max_lateness`` of the watermark, which an event can still change. Older ones are
        settled: their last issued assessment is final, and recomputing it here could miss
        incidents already forgotten from their windows.
        """
        records = self._records.items()
        if self._forget and self._watermark is not None:
            open_from = self._watermark - self._max_lateness
            return {
                incident_id: self._assess(record)
                for incident_id, record in records
                if record.active and record.event.occurred_at >= open_from
            }
        return {
            incident_id: self._assess(record) for incident_id, record in records if record.active
        }

    def assessment(self, incident_id: str) -> Assessment | None:
        record = self._records.get(incident_id)
        return None if record is None else self._assess(record)

    def current_events(self) -> Iterator[IncidentEvent]:
        """The current record of every retained incident (for snapshots)."""
        return (record.event for record in self._records.values())

    def current_event(self, incident_id: str) -> IncidentEvent | None:
        """The current record of a retained incident."""
        record = self._records.get(incident_id)
        return None if record is None else record.event

    def track_forgotten(self) -> None:
        """From now on, remember the ids of the incidents pruned, for :meth:`take_forgotten`.

        A detector that forgets calls it, to forget its own per-incident state (integrity
        findings issued) with the incidents."""
        if self._forgotten is None:
            self._forgotten = []

    def take_forgotten(self) -> list[str]:
        """Ids of the incidents forgotten since the last call (each once), leaving out any
        that a later event has started afresh; ``[]`` unless :meth:`track_forgotten` ran."""
        forgotten = self._forgotten
        if not forgotten:
            return []
        self._forgotten = []
        records = self._records
        return [
            incident_id for incident_id in dict.fromkeys(forgotten) if incident_id not in records
        ]

    def victim_incidents(
        self, victim_key: str, start: int, end: int, aliases: tuple[str, ...] = ()
    ) -> list[IncidentEvent]:
        """Active incidents of a victim with occurrence time in ``(start, end]``; with
        ``aliases`` (its keys under previous HMAC keys), those sharing any of its keys."""
        if aliases:
            victim = self._merged_victim(victim_key, aliases) or []
        else:
            victim = self._victims.get(victim_key, [])
        first = bisect_right(victim, start, key=_victim_time)
        last = bisect_right(victim, end, key=_victim_time)
        return [record.event for record in victim[first:last]]

    def incidents_near(
        self, place: Place, radius_m: float, start: int, end: int
    ) -> list[IncidentEvent]:
        """Active incidents within ``radius_m`` of ``place`` (at most the policy's largest
        location radius) or at its UPRN, with occurrence time in ``(start, end]``."""
        if radius_m > self._max_radius:
            raise ValueError(f"radius {radius_m} m exceeds the largest rule radius")
        cells = self._cells_near(place)
        found = self._same_place(place, cells, radius_m * radius_m, start, end, reach=False)
        return [record.event for record in found]

    def restore(self, events: Iterable[IncidentEvent]) -> None:
        """Rebuild state from current records without issuing anything.

        After a restore, applying an event issues exactly what it would have issued had the
        engine never stopped (fingerprints and raised escalations are recomputed).
        """
        sink = Outcome()
        for event in events:
            outcome = self.apply(event)
            sink.escalations.extend(outcome.escalations)

    def export_state(self) -> dict[str, Any]:
        """Everything this engine has learnt, as plain values and incident events (for a
        checkpoint, :mod:`asvat.domain.checkpoint`); nothing derived from the policy.

        The indices are given as incident ids in their order (ties included), so that
        :meth:`import_state` rebuilds them exactly. The records' fingerprints are not
        kept: they hash strings, whose hashes differ from one process to the next.
        """
        return {
            "records": [
                (record.event, record.active, record.eligible)
                for record in self._records.values()
            ],
            "victims": {
                key: [record.event.incident_id for record in victim]
                for key, victim in self._victims.items()
            },
            "cells": {
                key: [record.event.incident_id for record in timeline.items]
                for key, timeline in self._cells.items()
            },
            "uprns": {
                uprn: [record.event.incident_id for record in timeline.items]
                for uprn, timeline in self._uprns.items()
            },
            "raised": self._raised,
            "raised_seen": self._raised_seen,
            "raised_days": self._raised_days,
            "days": self._days,
            "first_day": self._first_day,
            "watermark": self._watermark,
            "pruned_before_day": self._pruned_before_day,
            "prune_from": self._prune_from,
            "forgotten": self._forgotten,
        }

    def import_state(self, state: dict[str, Any]) -> None:
        """Take over what :meth:`export_state` gave (on a new engine of the same policy).

        Every record comes back with fingerprint 0, so the first reassessment of each
        issues its assessment again (the same content, the same id) even where unchanged.
        """
        if self._records:
            raise ValueError("import_state needs a new engine")
        records: dict[str, _Record] = {}
        codes = self._codes
        for event, active, eligible in state["records"]:
            code = event.closing_code or event.opening_code
            cls = codes.get(code) or self.policy.classify(code)
            if cls is None:
                raise ValueError(f"code {code!r} of incident {event.incident_id} is not in the "
                                 "policy's codes")
            records[event.incident_id] = _Record(event, cls, active, eligible)
        self._records = records
        self._victims = {
            key: [records[incident_id] for incident_id in ids]
            for key, ids in state["victims"].items()
        }
        self._cells = {key: _timeline_of(records, ids) for key, ids in state["cells"].items()}
        self._uprns = {key: _timeline_of(records, ids) for key, ids in state["uprns"].items()}
        self._raised = state["raised"]
        self._raised_seen = state["raised_seen"]
        self._raised_days = state["raised_days"]
        self._days = state["days"]
        self._first_day = state["first_day"]
        self._watermark = state["watermark"]
        self._pruned_before_day = state["pruned_before_day"]
        self._prune_from = state["prune_from"]
        self._forgotten = state["forgotten"]

    # -- internals ------------------------------------------------------------------------

    def _cells_near(self, place: Place | None) -> list[_Timeline]:
        """The cell timelines that a disc of the largest radius around ``place`` touches."""
        if place is None or not self._by_place:
            return []
        size = self._cell
        radius = self._max_radius
        x, y = place.easting, place.northing
        x0 = floor((x - radius) / size)
        x1 = floor((x + radius) / size)
        y0 = floor((y - radius) / size)
        y1 = floor((y + radius) / size)
        cells = self._cells
        if x1 == x0 + 1 and y1 == y0 + 1:  # the usual 2 × 2 cells (size is twice the radius)
            found = []
            for key in (
                _cell_key(x0, y0), _cell_key(x0, y1), _cell_key(x1, y0), _cell_key(x1, y1)
            ):
                timeline = cells.get(key)
                if timeline is not None:
                    found.append(timeline)
            return found
        found = []
        for cx in range(x0, x1 + 1):
            for cy in range(y0, y1 + 1):
                timeline = cells.get(_cell_key(cx, cy))
                if timeline is not None:
                    found.append(timeline)
        return found

    def _cell_of(self, place: Place) -> int:
        """The key of the grid cell that holds ``place``."""
        size = self._cell
        return _cell_key(floor(place.easting / size), floor(place.northing / size))

    def _index(self, record: _Record) -> None:
        victim_key = record.event.victim_key
        if victim_key is not None and self._by_victim:
            victim = self._victims.get(victim_key)
            if victim is None:
                self._victims[victim_key] = [record]
            else:
                insort_right(victim, record, key=_victim_time)
            if record.event.victim_key_aliases:
                for alias in victim_keys(victim_key, record.event.victim_key_aliases)[1:]:
                    aliased = self._victims.setdefault(alias, [])
                    insort_right(aliased, record, key=_victim_time)
        place = record.place
        if place is not None and self._by_place:
            cell = self._cell_of(place)
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
        victim_key = record.event.victim_key
        if victim_key is not None and self._by_victim:
            keys = (
                victim_keys(victim_key, record.event.victim_key_aliases)
                if record.event.victim_key_aliases
                else (victim_key,)
            )
            for key in keys:
                victim = self._victims[key]
                index = bisect_left(victim, record.event.occurred_at, key=_victim_time)
                while victim[index] is not record:
                    index += 1
                del victim[index]
                if not victim:
                    del self._victims[key]
        place = record.place
        if place is not None and self._by_place:
            cell = self._cell_of(place)
            timeline = self._cells[cell]
            timeline.remove(record)
            if not timeline:
                del self._cells[cell]
            if place.uprn is not None:
                timeline = self._uprns[place.uprn]
                timeline.remove(record)
                if not timeline:
                    del self._uprns[place.uprn]

    def _is_newest(self, record: _Record, cells: list[_Timeline]) -> bool:
        """Whether no other active record of ``record``'s subjects occurred at its time or
        later: then no other window holds it, and ``_collect_affected`` would find only
        ``record`` itself. This is the usual case when events come roughly in time order.
        """
        t = record.event.occurred_at
        victim_key = record.event.victim_key
        if victim_key is not None and self._by_victim:
            victim = self._victims[victim_key]
            if victim[-1] is not record or (len(victim) > 1 and victim[-2].event.occurred_at >= t):
                return False
            for alias in record.event.victim_key_aliases:
                victim = self._victims.get(alias) or [record]
                if victim[-1] is not record or (
                    len(victim) > 1 and victim[-2].event.occurred_at >= t
                ):
                    return False
        for timeline in cells:
            if not timeline.ends_with(record, t):
                return False
        place = record.place
        if place is not None and place.uprn is not None and self._by_place:
            return self._uprns[place.uprn].ends_with(record, t)
        return True

    def _collect_affected(
        self, changed: _Record, cells: list[_Timeline], into: dict[_Record, None]
    ) -> None:
        """Add every active record whose window for some rule holds ``changed``."""
        t = changed.event.occurred_at
        victims: list[list[_Record]] = []
        if self._by_victim and changed.event.victim_key is not None:
            for key in victim_keys(changed.event.victim_key, changed.event.victim_key_aliases):
                victim = self._victims.get(key)
                if victim is not None:
                    victims.append(victim)
        for plan in self._plans:
            end = t + plan.window
            if plan.victim:
                for victim in victims:
                    # Records with t <= t_k < end: those whose window holds ``changed``.
                    first = bisect_left(victim, t, key=_victim_time)
                    last = bisect_left(victim, end, first, key=_victim_time)
                    for index in range(first, last):
                        into[victim[index]] = None
            else:
                for record in self._same_place(changed.place, cells, plan.r2, t, end, reach=True):
                    into[record] = None

    def _merged_victim(self, victim_key: str, aliases: tuple[str, ...]) -> list[_Record] | None:
        """The records that share any of the keys, once each, sorted by occurrence time."""
        merged: dict[_Record, None] = {}
        for key in victim_keys(victim_key, aliases):
            for record in self._victims.get(key, ()):
                merged[record] = None
        if not merged:
            return None
        return sorted(merged, key=_victim_time)

    def _same_place(
        self,
        place: Place | None,
        cells: list[_Timeline],
        r2: float,
        start: int,
        end: int,
        *,
        reach: bool,
    ) -> list[_Record]:
        """Active records at the same place as ``place`` under a location rule, in a time
        range: the window ``(start, end]``, or with ``reach`` the range ``[start, end)``."""
        found: list[_Record] = []
        if place is None:
            return found
        x, y = place.easting, place.northing
        search = bisect_left if reach else bisect_right
        for timeline in cells:
            times = timeline.times
            first = search(times, start)
            last = search(times, end, first)
            if first == last:
                continue
            items = timeline.items
            for index in range(first, last):
                record = items[index]
                other = record.place
                assert other is not None
                dx = other.easting - x
                dy = other.northing - y
                if dx * dx + dy * dy <= r2:
                    found.append(record)
        uprn = place.uprn
        same_address = self._uprns.get(uprn) if uprn is not None else None
        if same_address is not None:
            # Same UPRN but further than the radius: not found in the cells.
            times = same_address.times
            items = same_address.items
            for index in range(search(times, start), search(times, end)):
                record = items[index]
                other = record.place
                assert other is not None
                dx = other.easting - x
                dy = other.northing - y
                if dx * dx + dy * dy > r2:
                    found.append(record)
        return found

    def _evaluate(
        self, record: _Record, cells: list[_Timeline] | None
    ) -> tuple[dict[str, int], dict[str, tuple[str, ...]]]:
        """Per rule, how many incidents count towards ``record``'s, and for the rules met
        their sorted ids (in rule order)."""
        counts = dict(self._no_counts)
        contributing: dict[str, tuple[str, ...]] = {}
        t = record.event.occurred_at
        victim = None
        victim_end = 0
        if self._by_victim and record.event.victim_key is not None:
            if record.event.victim_key_aliases:
                victim = self._merged_victim(
                    record.event.victim_key, record.event.victim_key_aliases
                )
            else:
                victim = self._victims.get(record.event.victim_key)
            if victim is not None:
                victim_end = bisect_right(victim, t, key=_victim_time)
        if cells is None:
            cells = self._cells_near(record.place)
        for rule_id, by_victim, window, threshold, mask, filtered, r2 in self._plan_rows:
            start = t - window
            if by_victim:
                if victim is None:
                    continue
                first = bisect_right(victim, start, 0, victim_end, key=_victim_time)
                if not filtered:  # count without building a list, unless it is met
                    counts[rule_id] = victim_end - first
                    if victim_end - first >= threshold:
                        ids = [r.event.incident_id for r in victim[first:victim_end]]
                        ids.sort()
                        contributing[rule_id] = tuple(ids)
                    continue
                counted = [r for r in victim[first:victim_end] if r.eligible & mask]
            else:
                counted = self._same_place(record.place, cells, r2, start, t, reach=False)
                if filtered:
                    counted = [r for r in counted if r.eligible & mask]
            counts[rule_id] = len(counted)
            if len(counted) >= threshold:
                ids = [r.event.incident_id for r in counted]
                ids.sort()
                contributing[rule_id] = tuple(ids)
        return counts, contributing

    def _assess(self, record: _Record) -> Assessment:
        if record.active:
            counts, contributing = self._evaluate(record, None)
        else:
            counts, contributing = dict(self._no_counts), {}
        return self._assessment(record, counts, contributing)

    def _assessment(
        self, record: _Record, counts: dict[str, int], contributing: dict[str, tuple[str, ...]]
    ) -> Assessment:
        cls = record.cls
        event = record.event
        # Positional: the fields of Assessment in order (faster than keywords, per issue).
        return Assessment(
            event.incident_id,
            record.active,
            "cancelled" if event.event_type == "cancelled" else cls.cls,
            cls.asb_category,
            event.occurred_at,
            event.victim_key,
            location_key(record.place),
            tuple(sorted(contributing)) if contributing else (),
            counts,
            contributing,
        )

    def _reassess(self, record: _Record, cells: list[_Timeline] | None, outcome: Outcome) -> None:
        """Issue ``record``'s assessment (and any escalation it raises) if it changed."""
        if record.active:
            counts, contributing = self._evaluate(record, cells)
        else:
            counts, contributing = dict(self._no_counts), {}
        fingerprint = hash((tuple(counts.values()), tuple(contributing.items())))
        fingerprint = fingerprint & _FINGERPRINT_BITS or 1
        if fingerprint == record.fingerprint:
            return
        record.fingerprint = fingerprint
        assessment = self._assessment(record, counts, contributing)
        outcome.assessments.append(assessment)
        if not contributing:
            return
        t = record.event.occurred_at
        for rule in self._rules:
            ids = contributing.get(rule.id)
            if ids is None:
                continue
            subject_key = (
                record.event.victim_key if rule.subject == "victim" else assessment.location_key
            )
            if subject_key is None:
                continue
            subject = (rule.subject, subject_key)
            raised = self._raised.get(subject)
            if raised is None:
                raised = self._raised[subject] = set()
            self._see(subject, t)
            if rule.id in raised:
                continue
            raised.add(rule.id)
            outcome.escalations.append(
                Escalation(
                    subject_type=rule.subject,
                    subject_key=subject_key,
                    rule_id=rule.id,
                    incident_id=record.event.incident_id,
                    contributing_incident_ids=ids,
                    occurred_at=t,
                )
            )

    def _see(self, subject: tuple[str, str], t: int) -> None:
        """Note that ``subject`` met a rule at ``t``; it is forgotten once ``t`` is pruned."""
        seen = self._raised_seen.get(subject)
        if seen is None or t > seen:
            self._raised_seen[subject] = t
            day = t // DAY
            if seen is None or seen // DAY != day:
                self._raised_days.setdefault(day, []).append(subject)

    def _prune(self) -> None:
        """Forget incidents that no event still to be applied can affect."""
        assert self._watermark is not None
        horizon = self._watermark - self._retention
        last_whole_day = horizon // DAY  # days before this one end at or before the horizon
        start = self._pruned_before_day
        if start is None:
            start = self._first_day if self._first_day is not None else last_whole_day
        if start >= last_whole_day:
            # Nothing to forget until the horizon passes the end of day ``start``.
            self._prune_from = (start + 1) * DAY + self._retention
            return
        records = self._records
        for day in range(start, last_whole_day):
            for incident_id in self._days.pop(day, ()):
                record = records.get(incident_id)
                # The id is also listed under the days of its earlier records, if it moved.
                if record is not None and record.event.occurred_at // DAY == day:
                    del records[incident_id]
                    if record.active:
                        self._unindex(record)
                    if self._forgotten is not None:
                        self._forgotten.append(incident_id)
        self._pruned_before_day = last_whole_day
        self._prune_from = (last_whole_day + 1) * DAY + self._retention
        self._forget_raised(horizon)

    def _forget_raised(self, horizon: int) -> None:
        """Forget the escalations of subjects last seen before ``horizon``."""
        last_day = horizon // DAY
        seen = self._raised_seen
        for day in sorted(d for d in self._raised_days if d <= last_day):
            # The horizon's own day is only partly behind it: keep its list for next time.
            subjects = self._raised_days[day] if day == last_day else self._raised_days.pop(day)
            for subject in subjects:
                when = seen.get(subject)
                if when is not None and when < horizon:
                    del seen[subject]
                    self._raised.pop(subject, None)
