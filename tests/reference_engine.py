"""Independent reference for the detection engine: naive, slow, obviously correct.

This module is a test oracle. It re-derives every incident's final assessment from the
whole multiset of events at once (no streaming, no indexes, no incremental state) straight
from the written specification:

* events with an ``event_id`` already seen are ignored;
* an incident's current record is its event with the highest ``sequence``, ties broken by
  the larger ``event_id``; a current record of type ``cancelled`` counts nowhere;
* the classification comes from the closing code if set, else the opening code, through
  the policy's ``codes`` table; an incident is in scope when its class is in ``scope``
  (a code missing from the table is out of scope);
* incident ``i`` meets rule ``r`` when the number of in-scope, non-cancelled incidents
  ``j`` of the same subject with ``occurred_at_j`` in ``(t_i - window, t_i]`` is at least
  ``threshold`` (``i`` included). Subject "victim": the same non-None ``victim_key`` as
  ``i``. Subject "location": same non-None UPRN, or Euclidean distance ≤ ``radius_m``
  (decided in exact rational arithmetic). With ``max_report_delay`` only incidents whose
  ``reported_at - occurred_at ≤ max_report_delay`` are counted, ``i`` included;
* an incident with no ``victim_key`` (no ``place``) has count 0 for victim (location) rules;
* ``contributing`` holds the sorted counted ids for met rules only.

The only coupling to the production code is :func:`adapt_policy`, which reads the
parameters out of an ``asvat.domain.policy.Policy`` object.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from asvat.domain.incident import IncidentEvent
from asvat.domain.location import Place

MICROS_PER_DAY = 86_400 * 1_000_000


@dataclass(frozen=True)
class RefRule:
    id: str
    subject: str  # "victim" | "location"
    window: int  # microseconds
    threshold: int
    radius_m: float | None = None  # location rules only
    max_report_delay: int | None = None  # microseconds


@dataclass(frozen=True)
class RefPolicy:
    codes: Mapping[str, str]  # code -> class
    scope: frozenset[str]
    rules: tuple[RefRule, ...]


@dataclass(frozen=True)
class RefResult:
    rules_met: tuple[str, ...]
    rule_counts: dict[str, int] = field(default_factory=dict)
    contributing: dict[str, tuple[str, ...]] = field(default_factory=dict)


# The default policy, transcribed from the specification (not read from the YAML).
SPEC_DEFAULT_POLICY = RefPolicy(
    codes={
        "ASBP": "asb",
        "ASBN": "asb",
        "ASBE": "asb",
        "HARS": "crime",
        "CDAM": "crime",
        "DISP": "non_crime",
        "NFA": "other",
    },
    scope=frozenset({"asb", "crime", "non_crime"}),
    rules=(
        RefRule(id="victim-28d", subject="victim", window=28 * MICROS_PER_DAY, threshold=3),
        RefRule(
            id="case-review",
            subject="victim",
            window=183 * MICROS_PER_DAY,
            threshold=3,
            max_report_delay=31 * MICROS_PER_DAY,
        ),
        RefRule(
            id="location-7d-100m",
            subject="location",
            window=7 * MICROS_PER_DAY,
            threshold=4,
            radius_m=100.0,
        ),
    ),
)


def _get(obj: Any, name: str) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _code_class(entry: Any) -> str:
    """The class of one ``codes`` table entry (a plain string or an object with ``class``)."""
    if isinstance(entry, str):
        return entry
    for name in ("class_", "cls", "klass", "classification", "class"):
        value = _get(entry, name)
        if isinstance(value, str):
            return value
    raise TypeError(f"cannot read the class out of policy code entry {entry!r}")


def adapt_policy(policy_like: Any) -> RefPolicy:
    """Read the parameters the reference needs out of a production ``Policy`` object.

    This is the only place that knows the shape of ``asvat.domain.policy.Policy``.
    """
    if isinstance(policy_like, RefPolicy):
        return policy_like
    codes = {str(code): _code_class(entry) for code, entry in dict(policy_like.codes).items()}
    scope = frozenset(str(s) for s in policy_like.scope)
    rules = []
    for rule in policy_like.rules:
        radius = _get(rule, "radius_m")
        delay = _get(rule, "max_report_delay")
        rules.append(
            RefRule(
                id=str(rule.id),
                subject=str(rule.subject),
                window=int(rule.window),
                threshold=int(rule.threshold),
                radius_m=None if radius is None else float(radius),
                max_report_delay=None if delay is None else int(delay),
            )
        )
    return RefPolicy(codes=codes, scope=scope, rules=tuple(rules))


def current_records(events: Iterable[IncidentEvent]) -> dict[str, IncidentEvent]:
    """incident_id -> current record, after dropping repeated event_ids."""
    seen: set[str] = set()
    unique: list[IncidentEvent] = []
    for event in events:
        if event.event_id in seen:
            continue
        seen.add(event.event_id)
        unique.append(event)
    records: dict[str, IncidentEvent] = {}
    for event in unique:
        best = records.get(event.incident_id)
        if best is None or (event.sequence, event.event_id) > (best.sequence, best.event_id):
            records[event.incident_id] = event
    return records


def classify(record: IncidentEvent, policy: RefPolicy) -> str | None:
    code = record.closing_code if record.closing_code else record.opening_code
    return policy.codes.get(code)


def in_scope(record: IncidentEvent, policy: RefPolicy) -> bool:
    if record.event_type == "cancelled":
        return False
    cls = classify(record, policy)
    return cls is not None and cls in policy.scope


def same_location(a: Place, b: Place, radius_m: float) -> bool:
    if a.uprn is not None and b.uprn is not None and a.uprn == b.uprn:
        return True
    dx = Fraction(a.easting) - Fraction(b.easting)
    dy = Fraction(a.northing) - Fraction(b.northing)
    return dx * dx + dy * dy <= Fraction(radius_m) * Fraction(radius_m)


def _same_subject(rule: RefRule, i: IncidentEvent, j: IncidentEvent) -> bool:
    if rule.subject == "victim":
        return i.victim_key is not None and j.victim_key == i.victim_key
    if rule.subject == "location":
        if i.place is None or j.place is None:
            return False
        assert rule.radius_m is not None, f"location rule {rule.id} has no radius_m"
        return same_location(i.place, j.place, rule.radius_m)
    raise ValueError(f"unknown rule subject {rule.subject!r}")


def reference_assessments(
    events: Iterable[IncidentEvent], policy_like: Any = SPEC_DEFAULT_POLICY
) -> dict[str, RefResult]:
    """incident_id -> expected final assessment, for every in-scope incident."""
    policy = adapt_policy(policy_like)
    records = current_records(events)
    scoped = [r for r in records.values() if in_scope(r, policy)]
    results: dict[str, RefResult] = {}
    for i in scoped:
        counts: dict[str, int] = {}
        contributing: dict[str, tuple[str, ...]] = {}
        met: list[str] = []
        for rule in policy.rules:
            counted: list[str] = []
            for j in scoped:
                if not _same_subject(rule, i, j):
                    continue
                if not (i.occurred_at - rule.window < j.occurred_at <= i.occurred_at):
                    continue
                if (
                    rule.max_report_delay is not None
                    and j.reported_at - j.occurred_at > rule.max_report_delay
                ):
                    continue
                counted.append(j.incident_id)
            counts[rule.id] = len(counted)
            if len(counted) >= rule.threshold:
                met.append(rule.id)
                contributing[rule.id] = tuple(sorted(counted))
        results[i.incident_id] = RefResult(
            rules_met=tuple(sorted(met)), rule_counts=counts, contributing=contributing
        )
    return results
