"""The detection engine against an independent, naive reference (``tests/reference_engine.py``).

Properties (hypothesis): the engine's final assessments equal the reference's, under the
default policy and under random policies; they do not depend on arrival order or on
redelivered duplicates; the last assessment the engine emits for an incident is its final
one; incidents that end cancelled or out of scope are absent; over a three-year span
delivered within ``max_lateness``, eviction changes nothing the engine still reports.
Examples pin the boundaries the properties hit only by chance.

``ASVAT_PROPERTY_EXAMPLES`` (default 60) scales every property's example count, e.g. 1500
for a soak run."""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from asvat.domain.engine import DetectionEngine
from asvat.domain.incident import IncidentEvent
from asvat.domain.location import Place
from asvat.domain.policy import Policy, default_policy, load_policy_text
from asvat.domain.timeutil import parse_timestamp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from reference_engine import (
    SPEC_DEFAULT_POLICY,
    RefPolicy,
    RefResult,
    RefRule,
    adapt_policy,
    current_records,
    in_scope,
    reference_assessments,
)

DAY = 86_400 * 1_000_000
HOUR = 3_600 * 1_000_000

# ---------------------------------------------------------------------------------------
# Building events

BASE = datetime(2024, 2, 1, tzinfo=UTC)
E0, N0 = 424_000.0, 564_000.0
SPEC_CODES = ("ASBP", "ASBN", "ASBE", "HARS", "CDAM", "DISP", "NFA")


def victim(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def stamp(moment: datetime, offset: str = "Z") -> str:
    """``moment`` (aware, UTC) written as RFC 3339 with the given offset ("Z" or "+01:00")."""
    if offset == "Z":
        local, suffix = moment.astimezone(UTC), "Z"
    else:
        sign = 1 if offset[0] == "+" else -1
        hh, mm = int(offset[1:3]), int(offset[4:6])
        local = moment.astimezone(UTC) + sign * timedelta(hours=hh, minutes=mm)
        suffix = offset
    text = local.strftime("%Y-%m-%dT%H:%M:%S")
    if local.microsecond:
        text += f".{local.microsecond:06d}"
    return text + suffix


def ts(moment: datetime, offset: str = "Z") -> int:
    return parse_timestamp(stamp(moment, offset))


def event(
    incident_id: str,
    *,
    seq: int = 1,
    event_type: str = "opened",
    occurred: str = "2024-02-01T00:00:00Z",
    reported: str | None = None,
    opening: str = "ASBN",
    closing: str | None = None,
    victim_key: str | None = None,
    place: Place | None = None,
    event_id: str | None = None,
) -> IncidentEvent:
    """A hand-written event for the example tests."""
    occurred_at = parse_timestamp(occurred)
    return IncidentEvent(
        event_id=event_id or f"{incident_id}#{seq}",
        incident_id=incident_id,
        sequence=seq,
        event_type=event_type,
        occurred_at=occurred_at,
        reported_at=parse_timestamp(reported) if reported else occurred_at + HOUR,
        source="101",
        opening_code=opening,
        closing_code=closing,
        victim_key=victim_key,
        place=place,
    )


# ---------------------------------------------------------------------------------------
# Running the engine

Triple = tuple[tuple[str, ...], dict[str, int], dict[str, tuple[str, ...]]]


def triple(a: Any) -> Triple:
    return (
        tuple(a.rules_met),
        dict(a.rule_counts),
        {rule: tuple(ids) for rule, ids in a.contributing.items()},
    )


def ref_triples(results: dict[str, RefResult]) -> dict[str, Triple]:
    return {iid: triple(r) for iid, r in results.items()}


class Run:
    """One engine fed one delivery sequence."""

    def __init__(
        self,
        events: Iterable[IncidentEvent],
        policy: Policy | None = None,
        *,
        forget: bool = True,
    ) -> None:
        self.engine = DetectionEngine(
            policy if policy is not None else default_policy(), forget=forget
        )
        self.last_emitted: dict[str, Any] = {}
        self.not_applied: list[Any] = []
        for ev in events:
            outcome = self.engine.apply(ev)
            if outcome.not_applied is not None:  # late or rejected
                self.not_applied.append((ev.event_id, outcome.not_applied))
            for a in outcome.assessments:
                self.last_emitted[a.incident_id] = a
        self.final: dict[str, Any] = dict(self.engine.final_assessments())

    def triples(self) -> dict[str, Triple]:
        return {iid: triple(a) for iid, a in self.final.items()}


def describe(events: Sequence[IncidentEvent]) -> str:
    lines = []
    for e in events:
        place = None if e.place is None else (e.place.easting - E0, e.place.northing - N0)
        lines.append(
            f"  {e.event_id:<14} {e.incident_id} seq={e.sequence} {e.event_type:<9} "
            f"occ=+{(e.occurred_at - parse_timestamp('2024-02-01T00:00:00Z')) / DAY:.6f}d "
            f"delay={(e.reported_at - e.occurred_at) / DAY:.6f}d "
            f"code={e.opening_code}/{e.closing_code} "
            f"victim={e.victim_key[:6] if e.victim_key else None} "
            f"place={place}{'' if e.place is None else ' uprn=' + str(e.place.uprn)}"
        )
    return "\n".join(lines)


def diff(expected: dict[str, Triple], actual: dict[str, Triple]) -> str:
    out = []
    for iid in sorted(set(expected) | set(actual)):
        if expected.get(iid) != actual.get(iid):
            pad = " " * len(iid)
            out.append(f"  {iid}: expected {expected.get(iid)}\n  {pad}  actual {actual.get(iid)}")
    return "\n".join(out)


def assert_same(expected: dict[str, Triple], actual: dict[str, Triple], what: str) -> None:
    assert expected == actual, f"{what}:\n{diff(expected, actual)}"


def assert_reissues_consistent(run: Run) -> None:
    """The last assessment emitted for each incident is its final one (re-issue correctness)."""
    for iid, final in run.final.items():
        assert iid in run.last_emitted, f"{iid} is in final but was never emitted"
        assert run.last_emitted[iid] == final, (
            f"{iid}: stale re-issue\n  last emitted {run.last_emitted[iid]}\n  final        {final}"
        )
    for iid, last in run.last_emitted.items():
        if iid not in run.final:
            assert not last.in_scope, f"{iid} left scope but its last emitted assessment is {last}"


# ---------------------------------------------------------------------------------------
# Strategies

# Anchor days whose pairwise differences hit 7, 28 and 183 days exactly (and ±1 day).
ANCHOR_DAYS = (0, 1, 6, 7, 8, 14, 21, 27, 28, 29, 35, 56, 90, 155, 182, 183, 184, 190, 211)
DELAYS = (
    timedelta(0),
    timedelta(hours=1),
    timedelta(days=1),
    timedelta(days=31),
    timedelta(days=31, microseconds=1),
    timedelta(days=45),
)
OFFSETS = ("Z", "+01:00")
GRID_X = (0.0, 60.0, 100.0, 160.0, 200.0, 400.0)
GRID_Y = (0.0, 80.0, 100.0)
UPRNS = (None, None, None, "100000000001", "100000000002")
VICTIMS = (None, victim("v1"), victim("v2"), victim("v3"))
UNKNOWN_CODE = "ZZZZ"  # in no policy's table
MAX_LATENESS = 400 * DAY  # the default policy's


@st.composite
def moments(draw: st.DrawFn, eras: tuple[int, ...]) -> datetime:
    day = draw(st.sampled_from(ANCHOR_DAYS)) + draw(st.sampled_from(eras))
    hour = draw(st.sampled_from((0, 0, 0, 1, 12, 23)))
    minus_one = draw(st.sampled_from((0, 0, 0, 1)))
    return BASE + timedelta(days=day, hours=hour, microseconds=-minus_one)


@st.composite
def places(draw: st.DrawFn) -> Place | None:
    if draw(st.integers(0, 5)) == 0:
        return None
    return Place(
        E0 + draw(st.sampled_from(GRID_X)),
        N0 + draw(st.sampled_from(GRID_Y)),
        draw(st.sampled_from(UPRNS)),
    )


@st.composite
def incident_history(
    draw: st.DrawFn, incident_id: str, codes: tuple[str, ...], eras: tuple[int, ...]
) -> list[IncidentEvent]:
    """1–4 snapshots of one incident, sequences non-decreasing (ties allowed).

    Later snapshots may move the occurrence time (within the incident's era: an incident
    whose occurrence moves by more than the engine's retention is outside the documented
    semantics, see ``test_an_event_for_a_forgotten_incident_starts_it_afresh``), victim,
    place, report delay or opening code, set or clear the closing code, or cancel it.
    """
    era = (draw(st.sampled_from(eras)),)
    occurred = draw(moments(era))
    delay = draw(st.sampled_from(DELAYS))
    victim_key = draw(st.sampled_from(VICTIMS))
    place = draw(places())
    opening = draw(st.sampled_from(codes))
    closing: str | None = None
    seq = draw(st.integers(0, 3))
    events: list[IncidentEvent] = []
    for k in range(draw(st.integers(1, 4))):
        if k == 0:
            event_type = "opened"
        else:
            event_type = draw(st.sampled_from(("updated", "closed", "closed", "cancelled")))
            seq += draw(st.sampled_from((0, 1, 1, 2, 7)))
            change = draw(
                st.sampled_from(("none", "none", "occurred", "victim", "place", "delay", "open"))
            )
            if change == "occurred":
                occurred = draw(moments(era))
            elif change == "victim":
                victim_key = draw(st.sampled_from(VICTIMS))
            elif change == "place":
                place = draw(places())
            elif change == "delay":
                delay = draw(st.sampled_from(DELAYS))
            elif change == "open":
                opening = draw(st.sampled_from(codes))
        if event_type == "closed":
            closing = draw(st.sampled_from(codes))
        elif event_type == "updated" and draw(st.integers(0, 3)) == 0:
            closing = None  # re-opened
        tag = draw(st.sampled_from("abc"))
        events.append(
            IncidentEvent(
                event_id=f"{incident_id}#{tag}{k}",
                incident_id=incident_id,
                sequence=seq,
                event_type=event_type,
                occurred_at=ts(occurred, draw(st.sampled_from(OFFSETS))),
                reported_at=ts(occurred + delay, draw(st.sampled_from(OFFSETS))),
                source="101",
                opening_code=opening,
                closing_code=closing,
                victim_key=victim_key,
                place=place,
            )
        )
    return events


@st.composite
def event_sets(
    draw: st.DrawFn,
    min_incidents: int = 5,
    max_incidents: int = 40,
    codes: tuple[str, ...] = SPEC_CODES,
    eras: tuple[int, ...] = (0,),
) -> list[IncidentEvent]:
    n = draw(st.integers(min_incidents, max_incidents))
    out: list[IncidentEvent] = []
    for idx in range(n):
        out.extend(draw(incident_history(f"NB-{idx:03d}", codes, eras)))
    return out


@st.composite
def deliveries(draw: st.DrawFn, events: list[IncidentEvent]) -> list[IncidentEvent]:
    """A permutation of ``events`` with a few redelivered duplicates inserted anywhere."""
    order = list(draw(st.permutations(events)))
    for dup in draw(st.lists(st.sampled_from(events), max_size=8)):
        order.insert(draw(st.integers(0, len(order))), dup)
    return order


@st.composite
def bounded_lateness_deliveries(
    draw: st.DrawFn, events: list[IncidentEvent], slack: int
) -> list[IncidentEvent]:
    """Events (and a few duplicates) ordered by ``occurred_at + u``, ``0 ≤ u < slack``.

    When an event arrives, every event already delivered has ``occurred_at`` less than
    ``slack`` after its own, so nothing is later than ``slack`` behind the newest seen.
    """
    copies = events + draw(st.lists(st.sampled_from(events), max_size=8))
    keyed = [(e.occurred_at + draw(st.integers(0, slack - 1)), n, e) for n, e in enumerate(copies)]
    return [e for _, _, e in sorted(keyed, key=lambda k: (k[0], k[1]))]


CLASSES = ("asb", "crime", "non_crime", "other")
WINDOWS = {"1h": HOUR, "23h": 23 * HOUR, "1d": DAY, "7d": 7 * DAY, "28d": 28 * DAY}
WINDOWS["183d"] = 183 * DAY
REPORT_DELAYS = {"1h": HOUR, "1d": DAY, "31d": 31 * DAY}
RADII = (50.0, 100.0, 141.5, 160.0, 1000.0)


@st.composite
def policies(draw: st.DrawFn) -> tuple[str, RefPolicy]:
    """A random policy as YAML for the engine and, built from the same draws, for the reference."""
    classes = {code: draw(st.sampled_from(CLASSES)) for code in SPEC_CODES}
    scope = draw(st.sets(st.sampled_from(CLASSES), min_size=1))
    lines = ["codes:"]
    for code, cls in classes.items():
        extra = ", asb_category: nuisance" if cls == "asb" else ""
        lines.append(f"  {code}: {{class: {cls}{extra}}}")
    lines.append(f"scope: [{', '.join(sorted(scope))}]")
    lines.append("unknown_code: other")
    lines.append("max_lateness: 400d")
    lines.append("rules:")
    rules: list[RefRule] = []
    for n in range(draw(st.integers(1, 4))):
        subject = draw(st.sampled_from(("victim", "location")))
        window = draw(st.sampled_from(sorted(WINDOWS)))
        threshold = draw(st.integers(1, 5))
        radius = draw(st.sampled_from(RADII)) if subject == "location" else None
        delay = draw(st.sampled_from((None, None, *sorted(REPORT_DELAYS))))
        text = f"  - {{id: r{n}, subject: {subject}, window: {window}, threshold: {threshold}"
        if radius is not None:
            text += f", radius_m: {radius!r}"
        if delay is not None:
            text += f", max_report_delay: {delay}"
        lines.append(text + "}")
        rules.append(
            RefRule(
                id=f"r{n}",
                subject=subject,
                window=WINDOWS[window],
                threshold=threshold,
                radius_m=radius,
                max_report_delay=None if delay is None else REPORT_DELAYS[delay],
            )
        )
    ref = RefPolicy(codes=classes, scope=frozenset(scope), rules=tuple(rules))
    return "\n".join(lines) + "\n", ref


EXAMPLES = int(os.environ.get("ASVAT_PROPERTY_EXAMPLES", "60"))


# A passing property takes seconds; a failing one may shrink for up to Hypothesis's five
# minutes, hence the per-test timeout above pytest's default.
SHRINK_TIMEOUT = pytest.mark.timeout(600)


def property_settings(share: float = 1.0) -> settings:
    return settings(
        max_examples=max(1, int(EXAMPLES * share)),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# ---------------------------------------------------------------------------------------
# Properties


@SHRINK_TIMEOUT
@property_settings()
@given(events=event_sets(), data=st.data())
def test_engine_matches_reference(events: list[IncidentEvent], data: st.DataObject) -> None:
    """Default policy, one random delivery with duplicates: final == reference; re-issues
    end on the final assessment; cancelled / out-of-scope incidents are absent."""
    delivered = data.draw(deliveries(events), label="delivery")
    note("events:\n" + describe(events))
    run = Run(delivered)
    assert run.not_applied == [], "no event here is late or has an unknown code"
    expected = ref_triples(reference_assessments(events, SPEC_DEFAULT_POLICY))
    assert_same(expected, run.triples(), "engine final != reference")
    assert_reissues_consistent(run)
    for iid, record in current_records(events).items():
        if in_scope(record, SPEC_DEFAULT_POLICY):
            assert run.final[iid].in_scope
        else:
            assert iid not in run.final, f"{iid} ({record.event_type}, {record.code}) in final"


@SHRINK_TIMEOUT
@property_settings(0.6)
@given(events=event_sets(), data=st.data())
def test_engine_final_invariant_under_order_and_duplicates(
    events: list[IncidentEvent], data: st.DataObject
) -> None:
    """Whole assessments (not just the rule fields) are identical for any arrival order."""
    note("events:\n" + describe(events))
    baseline = Run(events).final
    for label in ("reversed", "shuffled+dups"):
        if label == "reversed":
            delivered = list(reversed(events))
        else:
            delivered = data.draw(deliveries(events), label="delivery")
        other = Run(delivered).final
        assert set(other) == set(baseline), f"{label}: different incidents in final"
        for iid, a in baseline.items():
            assert other[iid] == a, f"{label}: {iid}\n  in order: {a}\n  {label}: {other[iid]}"


@SHRINK_TIMEOUT
@property_settings()
@given(policy=policies(), data=st.data())
def test_random_policy_matches_reference(
    policy: tuple[str, RefPolicy], data: st.DataObject
) -> None:
    """Random windows, thresholds, radii, report delays, code table and scope.

    An unknown code (policy ``unknown_code: other``) is drawn only while ``other`` is out of
    scope; with ``other`` in scope its treatment is pinned by
    ``test_unknown_code_kept_as_other_is_out_of_scope``.
    """
    yaml_text, ref_policy = policy
    codes = SPEC_CODES if "other" in ref_policy.scope else (*SPEC_CODES, UNKNOWN_CODE)
    events = data.draw(event_sets(codes=codes), label="events")
    note("policy:\n" + yaml_text)
    note("events:\n" + describe(events))
    delivered = data.draw(deliveries(events), label="delivery")
    run = Run(delivered, load_policy_text(yaml_text))
    assert run.not_applied == []
    expected = ref_triples(reference_assessments(events, ref_policy))
    assert_same(expected, run.triples(), "engine final != reference")
    assert_reissues_consistent(run)


@SHRINK_TIMEOUT
@property_settings(0.6)
@given(events=event_sets(eras=(0, 300, 600, 900)), data=st.data())
def test_long_span_with_bounded_lateness_matches_reference(
    events: list[IncidentEvent], data: st.DataObject
) -> None:
    """Three years of events, each delivered less than max_lateness behind the newest seen:
    none is late, and the engine may evict old incidents from memory.

    Every assessment the engine still holds equals the reference's, and every incident that
    occurred within max_lateness of the newest occurrence is still held. (Whether evicted
    incidents must stay in ``final_assessments`` is pinned separately by
    ``test_final_keeps_incidents_older_than_retention``.)
    """
    delivered = data.draw(bounded_lateness_deliveries(events, MAX_LATENESS), label="delivery")
    note("events:\n" + describe(events))
    run = Run(delivered)
    assert run.not_applied == [], "no event here is later than max_lateness"
    expected = ref_triples(reference_assessments(events, SPEC_DEFAULT_POLICY))
    actual = run.triples()
    held = {iid: t for iid, t in expected.items() if iid in actual}
    assert_same(held, actual, "engine final != reference (on the incidents it holds)")
    watermark = max(e.occurred_at for e in events)
    records = current_records(events)
    recent = {iid for iid in expected if records[iid].occurred_at >= watermark - MAX_LATENESS}
    assert recent <= set(actual), f"recent incidents missing: {sorted(recent - set(actual))}"
    for iid, final in run.final.items():
        assert run.last_emitted.get(iid) == final, f"{iid}: stale re-issue"


# ---------------------------------------------------------------------------------------
# The adapter reads the shipped default policy as the specification states it


def test_default_policy_matches_specification() -> None:
    adapted = adapt_policy(default_policy())
    assert adapted.scope == SPEC_DEFAULT_POLICY.scope
    assert adapted.rules == SPEC_DEFAULT_POLICY.rules
    for code, cls in SPEC_DEFAULT_POLICY.codes.items():
        assert adapted.codes[code] == cls, code


# ---------------------------------------------------------------------------------------
# Examples

V = victim("alice")


def final_of(events: Iterable[IncidentEvent]) -> dict[str, Triple]:
    events = list(events)
    run = Run(events)
    expected = ref_triples(reference_assessments(events, SPEC_DEFAULT_POLICY))
    assert_same(expected, run.triples(), "engine != reference on an example")
    return run.triples()


@pytest.mark.parametrize(
    ("third", "met"),
    [
        ("2024-03-01T00:00:00Z", False),  # exactly 28 d after the first: excluded
        ("2024-02-29T23:59:59.999999Z", True),  # 28 d − 1 µs: included
    ],
)
def test_victim_window_boundary(third: str, met: bool) -> None:
    final = final_of(
        [
            event("A", occurred="2024-02-02T00:00:00Z", victim_key=V),
            event("B", occurred="2024-02-10T00:00:00Z", victim_key=V),
            event("C", occurred=third, victim_key=V),
        ]
    )
    rules_met, counts, contributing = final["C"]
    assert counts["victim-28d"] == (3 if met else 2)
    assert ("victim-28d" in rules_met) is met
    if met:
        assert contributing["victim-28d"] == ("A", "B", "C")
    else:
        assert "victim-28d" not in contributing
    # A later incident never counts towards an earlier one.
    assert final["A"][1]["victim-28d"] == 1


def test_plus_one_hour_offset_is_the_same_instant_as_z() -> None:
    assert parse_timestamp("2024-03-01T22:15:00+01:00") == parse_timestamp("2024-03-01T21:15:00Z")
    first = [
        event("A", occurred="2024-02-02T01:00:00+01:00", victim_key=V),  # 00:00Z
        event("B", occurred="2024-02-10T00:00:00Z", victim_key=V),
    ]
    exactly_28d = final_of([*first, event("C", occurred="2024-03-01T01:00:00+01:00", victim_key=V)])
    assert exactly_28d["C"][1]["victim-28d"] == 2
    just_inside = final_of(
        [*first, event("C", occurred="2024-03-01T00:59:59.999999+01:00", victim_key=V)]
    )
    assert just_inside["C"][1]["victim-28d"] == 3
    in_z = final_of([*first, event("C", occurred="2024-02-29T23:59:59.999999Z", victim_key=V)])
    assert in_z == just_inside


def _four_at_one_place() -> list[IncidentEvent]:
    p = Place(E0, N0)
    return [
        event("L1", occurred="2024-02-01T10:00:00Z", place=Place(E0 + 60, N0 + 80), victim_key=V),
        event("L2", occurred="2024-02-02T10:00:00Z", place=p, victim_key=V),
        event("L3", occurred="2024-02-03T10:00:00Z", place=Place(E0 - 100, N0), victim_key=V),
        event("L4", occurred="2024-02-04T10:00:00Z", place=p),
    ]


def test_location_rule_exact_radius_counts() -> None:
    final = final_of(_four_at_one_place())
    assert final["L4"][0] == ("location-7d-100m",)
    assert final["L4"][2]["location-7d-100m"] == ("L1", "L2", "L3", "L4")
    # L1 and L3 are 178.9 m apart, so L3 counts only L2 and itself (L4 is later).
    assert final["L3"][1]["location-7d-100m"] == 2


def test_location_rule_shared_uprn_far_apart() -> None:
    u = "100000000009"
    final = final_of(
        event(f"U{k}", occurred=f"2024-02-0{k}T10:00:00Z", place=Place(E0 + 1000 * k, N0, u))
        for k in range(1, 5)
    )
    assert final["U4"][1]["location-7d-100m"] == 4
    assert final["U4"][0] == ("location-7d-100m",)


def test_cancellation_removes_from_every_window() -> None:
    events = _four_at_one_place()
    before = final_of(events)
    assert before["L4"][0] == ("location-7d-100m",)
    assert before["L3"][1]["victim-28d"] == 3
    cancel = event(
        "L2",
        seq=2,
        event_type="cancelled",
        occurred="2024-02-02T10:00:00Z",
        place=Place(E0, N0),
        victim_key=V,
    )
    after = final_of([*events, cancel])
    assert "L2" not in after
    assert after["L4"][0] == ()
    assert after["L4"][1]["location-7d-100m"] == 3
    assert after["L3"][1]["victim-28d"] == 2
    assert all("L2" not in ids for t in after.values() for ids in t[2].values())
    # The cancellation may arrive first: the outcome is the same.
    assert final_of([cancel, *reversed(events)]) == after


def test_reclassification_nfa_to_asbn_brings_it_in() -> None:
    base = [
        event("A", occurred="2024-02-02T00:00:00Z", victim_key=V),
        event("B", occurred="2024-02-03T00:00:00Z", victim_key=V),
        event("C", occurred="2024-02-04T00:00:00Z", victim_key=V, opening="NFA"),
    ]
    out = final_of(base)
    assert "C" not in out
    assert out["B"][1]["victim-28d"] == 2
    closed = event(
        "C",
        seq=2,
        event_type="closed",
        occurred="2024-02-04T00:00:00Z",
        victim_key=V,
        opening="NFA",
        closing="ASBN",
    )
    into = final_of([*base, closed])
    assert into["C"][0] == ("case-review", "victim-28d")
    assert into["C"][2]["victim-28d"] == ("A", "B", "C")
    # And back out again: closing code NFA on an ASBN opening takes it out of scope.
    out_again = final_of(
        [
            *base[:2],
            event("D", occurred="2024-02-04T00:00:00Z", victim_key=V),
            event(
                "D",
                seq=2,
                event_type="closed",
                occurred="2024-02-04T00:00:00Z",
                victim_key=V,
                closing="NFA",
            ),
        ]
    )
    assert "D" not in out_again
    assert out_again["B"][1]["victim-28d"] == 2


@pytest.mark.parametrize(
    ("delay", "counted"),
    [("2024-03-06T00:00:00Z", True), ("2024-03-06T00:00:00.000001Z", False)],
)
def test_case_review_report_delay_boundary(delay: str, counted: bool) -> None:
    # C occurred 2024-02-04; reported exactly 31 d later (counted) or 1 µs more (not counted,
    # not even towards its own assessment — the rule can still be met by the others).
    events = [
        event("A", occurred="2024-01-01T00:00:00Z", victim_key=V),
        event("B", occurred="2024-01-20T00:00:00Z", victim_key=V),
        event("C", occurred="2024-02-04T00:00:00Z", reported=delay, victim_key=V),
        event("D", occurred="2024-02-05T00:00:00Z", victim_key=V),
    ]
    final = final_of(events)
    assert final["C"][1]["case-review"] == (3 if counted else 2)
    assert final["D"][1]["case-review"] == (4 if counted else 3)
    assert final["D"][2]["case-review"] == (("A", "B", "C", "D") if counted else ("A", "B", "D"))
    assert ("case-review" in final["C"][0]) is counted


def test_sequence_tie_broken_by_larger_event_id_and_duplicates_ignored() -> None:
    a = event("A", seq=3, event_type="updated", victim_key=V, opening="NFA", event_id="A#x")
    b = event("A", seq=3, event_type="updated", victim_key=V, opening="ASBP", event_id="A#y")
    for order in ([a, b], [b, a], [b, a, b, a]):
        final = final_of(order)
        assert set(final) == {"A"}
        assert final["A"][1] == {"victim-28d": 1, "case-review": 1, "location-7d-100m": 0}


def test_anonymous_and_placeless_count_zero() -> None:
    final = final_of([event("A", victim_key=None, place=None)])
    assert final["A"] == ((), {"victim-28d": 0, "case-review": 0, "location-7d-100m": 0}, {})


@pytest.mark.parametrize(("behind", "late"), [("400d", False), ("400d+1us", True)])
def test_max_lateness_boundary(behind: str, late: bool) -> None:
    """``max_lateness`` (400 d): an event exactly that far behind the newest occurred_at is
    applied; 1 µs more and it is not (and changes nothing)."""
    newest = event("N", occurred="2025-03-06T00:00:00Z", victim_key=V)
    old_moment = datetime(2025, 3, 6, tzinfo=UTC) - timedelta(days=400)
    if late:
        old_moment -= timedelta(microseconds=1)
    old = event("O", occurred=stamp(old_moment, "+01:00"), victim_key=V)
    assert newest.occurred_at - old.occurred_at == 400 * DAY + (1 if late else 0)
    run = Run([newest, old])
    if late:
        assert [e for e, _ in run.not_applied] == ["O#1"]
        assert run.not_applied[0][1].kind == "late"
        assert set(run.final) == {"N"}
    else:
        assert run.not_applied == []
        assert set(run.final) == {"N", "O"}
        assert run.triples() == ref_triples(reference_assessments([newest, old]))


def test_final_keeps_incidents_older_than_retention() -> None:
    """Spec: the final result has *every* incident in scope at the end, however old — what
    an engine that does not forget (``asvat replay``) gives. The live engine's
    ``final_assessments`` holds only the open incidents (within max_lateness)."""
    events = [
        event("OLD", occurred="2024-01-01T00:00:00Z"),
        event("NEW", occurred="2025-08-23T00:00:00Z"),  # 600 d later
    ]
    assert set(Run(events, forget=False).final) == {"OLD", "NEW"}
    assert set(Run(events).final) == {"NEW"}


def test_an_event_for_a_forgotten_incident_starts_it_afresh() -> None:
    """Documented semantics (README, Retention): once an incident is forgotten, a later
    event for it starts it afresh, even one with an older sequence.

    X's current record (sequence 2) moved its occurrence back to day 0; when the watermark
    reaches day 600, X is forgotten, so its sequence-1 snapshot (day 590) arriving then is
    applied as X's record. Delivered before Y, the same snapshot is superseded. This is the
    one case where arrival order matters without an event being late: an incident's
    occurrence time moving by more than the retention (the longest window plus
    max_lateness, 583 days by default).
    """
    x2 = event("X", seq=2, event_type="updated", occurred="2024-01-01T00:00:00Z", victim_key=V)
    y = event("Y", occurred="2025-08-23T00:00:00Z")  # day 600
    x1 = event("X", seq=1, occurred="2025-08-13T00:00:00Z", victim_key=V)  # day 590
    a = event("A", occurred="2025-08-18T00:00:00Z", victim_key=V)
    b = event("B", occurred="2025-08-21T00:00:00Z", victim_key=V)
    forgotten_first = Run([x2, y, x1, a, b])
    assert forgotten_first.not_applied == []
    assert forgotten_first.triples()["B"][1]["victim-28d"] == 3  # X (day 590), A, B
    superseded_first = Run([x2, x1, y, a, b])
    assert superseded_first.triples()["B"][1]["victim-28d"] == 2  # A, B


def test_unknown_code_kept_as_other_is_classed_other() -> None:
    """``unknown_code: other`` keeps an unknown code, classed ``other``: out of scope unless
    the policy's scope lists ``other``, as this one does."""
    yaml_text = (
        "codes:\n  ASBN: {class: asb, asb_category: nuisance}\n  NFA: {class: other}\n"
        "scope: [asb, other]\nunknown_code: other\n"
        "rules:\n  - {id: r0, subject: victim, window: 28d, threshold: 1}\n"
    )
    run = Run([event("K", opening="NFA"), event("U", opening="ZZZZ")], load_policy_text(yaml_text))
    assert run.not_applied == []
    assert set(run.final) == {"K", "U"}
    assert run.final["U"].classification == "other"


def test_eviction_does_not_change_a_held_incidents_counts() -> None:
    """B (day 148) is settled when C (day 600) arrives: no event still to be applied can
    change it. Its 183-day window reaches back to day -35, so A (day 0) counts for B's
    case-review. The last assessment issued for B says so; the live engine does not
    recompute settled incidents (A may be forgotten), and a replay engine, which forgets
    nothing, gives the same answer as the reference."""
    a = event("A", occurred="2024-01-01T00:00:00Z", victim_key=V)
    b = event("B", occurred="2024-05-28T00:00:00Z", victim_key=V)  # A + 148 d
    c = event("C", occurred="2025-08-23T00:00:00Z")  # A + 600 d, B + 452 d
    expected = ref_triples(reference_assessments([a, b, c]))
    assert expected["B"][1]["case-review"] == 2
    run = Run([a, b, c])
    assert run.not_applied == []
    assert triple(run.last_emitted["B"]) == expected["B"]
    assert "B" not in run.final
    assert Run([a, b, c], forget=False).triples() == expected
