"""Key rotation: aliases on the wire, and the engine linking a victim across it.

The engine treats incidents that share any key (``victim_key`` or an alias) as one
victim's. The property test checks it against a naive reading of exactly that rule, built
on the independent reference engine's helpers, for any arrival order.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import sys
from collections.abc import Sequence
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asvat.domain.engine import DetectionEngine
from asvat.domain.identity import identity_basis, pseudonymise_event, victim_key, victim_keys
from asvat.domain.incident import IncidentEvent
from asvat.domain.policy import default_policy

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from reference_engine import (
    SPEC_DEFAULT_POLICY,
    adapt_policy,
    current_records,
    in_scope,
)

DAY = 86_400 * 1_000_000
T0 = 1_706_745_600 * 1_000_000  # 2024-02-01T00:00:00Z
K1 = b"old-key-0123456789abcdef0123456789abcdef"
K2 = b"new-key-0123456789abcdef0123456789abcdef"
CODES = ("ASBP", "ASBN", "HARS", "DISP", "NFA")


def key_under(secret: bytes, person: str) -> str:
    return hmac.new(secret, f"person:{person}".encode(), hashlib.sha256).hexdigest()


def rotated_event(
    incident_id: str, person: str, phase: str, day: int, *, seq: int = 0, code: str = "ASBP"
) -> IncidentEvent:
    """``phase``: ``old`` (before the rotation: K1 only), ``both`` (during it: K2 with the
    K1 alias), ``new`` (after K1 is retired: K2 only)."""
    aliases: tuple[str, ...]
    if phase == "old":
        key, aliases = key_under(K1, person), ()
    elif phase == "both":
        key, aliases = key_under(K2, person), (key_under(K1, person),)
    else:
        key, aliases = key_under(K2, person), ()
    at = T0 + day * DAY
    return IncidentEvent(
        event_id=f"{incident_id}#{seq}",
        incident_id=incident_id,
        sequence=seq,
        event_type="opened",
        occurred_at=at,
        reported_at=at + 3_600_000_000,
        source="101",
        opening_code=code,
        closing_code=None,
        victim_key=key,
        place=None,
        victim_key_aliases=aliases,
    )


def final(events: Sequence[IncidentEvent]) -> dict[str, tuple[tuple[str, ...], dict[str, int]]]:
    engine = DetectionEngine(default_policy(), forget=False)
    for event in events:
        engine.apply(event)
    return {
        iid: (a.rules_met, {r: n for r, n in a.rule_counts.items() if n})
        for iid, a in engine.final_assessments().items()
    }


def shared_key_reference(
    events: Sequence[IncidentEvent],
) -> dict[str, tuple[tuple[str, ...], dict[str, int]]]:
    """Victim rules only: j counts for i when they share a key and j is in i's window."""
    policy = adapt_policy(SPEC_DEFAULT_POLICY)
    scoped = [r for r in current_records(events).values() if in_scope(r, policy)]
    out = {}
    for i in scoped:
        keys_i = set(victim_keys(i.victim_key, i.victim_key_aliases))
        counts, met = {}, []
        for rule in policy.rules:
            if rule.subject != "victim":
                continue
            n = 0
            for j in scoped:
                if not keys_i & set(victim_keys(j.victim_key, j.victim_key_aliases)):
                    continue
                if not (i.occurred_at - rule.window < j.occurred_at <= i.occurred_at):
                    continue
                if rule.max_report_delay is not None and (
                    j.reported_at - j.occurred_at > rule.max_report_delay
                ):
                    continue
                n += 1
            if n:
                counts[rule.id] = n
            if n >= rule.threshold:
                met.append(rule.id)
        out[i.incident_id] = (tuple(sorted(met)), counts)
    return out


def test_a_caller_links_across_a_rotation() -> None:
    events = [
        rotated_event("A", "P-1", "old", 0),  # before the rotation
        rotated_event("B", "P-1", "both", 5),  # during it: linked to A through the alias
        rotated_event("C", "P-1", "both", 10),
        rotated_event("D", "P-1", "new", 20),  # after it: linked to B and C by the new key
        rotated_event("X", "P-2", "both", 10),  # someone else
    ]
    got = final(events)
    assert got["C"] == (("case-review", "victim-28d"), {"victim-28d": 3, "case-review": 3})
    assert got["D"][1]["victim-28d"] == 3  # B, C and D: A is the old key's alone
    assert got["X"][1] == {"victim-28d": 1, "case-review": 1}
    # Without the alias, the rotation would have cut the history in two.
    cut = [
        rotated_event("A", "P-1", "old", 0),
        rotated_event("B", "P-1", "new", 5),
        rotated_event("C", "P-1", "new", 10),
    ]
    assert final(cut)["C"][1]["victim-28d"] == 2


def test_escalations_name_the_current_key() -> None:
    engine = DetectionEngine(default_policy(), forget=False)
    outcomes = [
        engine.apply(rotated_event("A", "P-1", "old", 0)),
        engine.apply(rotated_event("B", "P-1", "old", 1)),
        engine.apply(rotated_event("C", "P-1", "both", 2)),
    ]
    escalations = outcomes[-1].escalations
    assert {e.rule_id for e in escalations} == {"victim-28d", "case-review"}
    for escalation in escalations:
        assert escalation.subject_key == key_under(K2, "P-1")
        assert escalation.contributing_incident_ids == ("A", "B", "C")
    alone = engine.victim_incidents(key_under(K2, "P-1"), T0 - DAY, T0 + 3 * DAY)
    assert [e.incident_id for e in alone] == ["C"]
    linked = engine.victim_incidents(
        key_under(K2, "P-1"), T0 - DAY, T0 + 3 * DAY, aliases=(key_under(K1, "P-1"),)
    )
    assert [e.incident_id for e in linked] == ["A", "B", "C"]


event_specs = st.lists(
    st.tuples(
        st.sampled_from(["P-1", "P-2"]),
        st.sampled_from(["old", "both", "new"]),
        st.integers(0, 70),
        st.sampled_from(CODES),
        st.integers(0, 2),
    ),
    min_size=1,
    max_size=24,
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=event_specs, seed=st.integers(0, 2**32 - 1))
def test_engine_links_exactly_the_incidents_that_share_a_key(
    specs: list[tuple[str, str, int, str, int]], seed: int
) -> None:
    events = []
    for n, (person, phase, day, code, seq) in enumerate(specs):
        # A few incidents get several events (updates, moving in time and phase).
        events.append(rotated_event(f"I{n % 9}", person, phase, day, seq=seq + n, code=code))
    shuffled = list(events) + events[: len(events) // 3]  # redelivered duplicates
    random.Random(seed).shuffle(shuffled)
    expected = shared_key_reference(events)
    got = {
        iid: (tuple(r for r in met if r != "location-7d-100m"), counts)
        for iid, (met, counts) in final(shuffled).items()
    }
    assert got == expected
    assert final(shuffled) == final(sorted(events, key=lambda e: e.occurred_at))


def test_take_forgotten_lists_pruned_incidents_once() -> None:
    engine = DetectionEngine(default_policy())
    assert engine.take_forgotten() == []  # not tracked yet
    engine.track_forgotten()
    engine.apply(rotated_event("OLD-1", "P-1", "old", 0))
    engine.apply(rotated_event("OLD-2", "P-2", "old", 1))
    engine.apply(rotated_event("KEPT", "P-1", "old", 300))
    assert engine.take_forgotten() == []
    retention_days = (default_policy().longest_window + default_policy().max_lateness) // DAY
    engine.apply(rotated_event("NEW", "P-1", "old", retention_days + 3))
    assert engine.take_forgotten() == ["OLD-1", "OLD-2"]
    assert engine.take_forgotten() == []
    assert engine.current_event("OLD-1") is None and engine.current_event("KEPT") is not None


def test_a_forgotten_incident_started_afresh_is_not_reported() -> None:
    engine = DetectionEngine(default_policy())
    engine.track_forgotten()
    engine.apply(rotated_event("I-1", "P-1", "old", 0))
    retention_days = (default_policy().longest_window + default_policy().max_lateness) // DAY
    engine.apply(rotated_event("I-2", "P-1", "old", retention_days + 3))
    # I-1 is forgotten; a new event for it, recent this time, starts it afresh.
    engine.apply(rotated_event("I-1", "P-1", "old", retention_days + 4, seq=1))
    assert engine.take_forgotten() == []


def test_pseudonymise_adds_aliases_only_during_a_rotation() -> None:
    raw = {"event_id": "e", "incident_id": "i", "caller": {"person_id": "P-1"}}
    plain = pseudonymise_event(raw, K2, "k2")
    assert "victim_key_aliases" not in plain
    rotating = pseudonymise_event(raw, K2, "k2", previous=[("k1", K1)])
    assert rotating["victim_key"] == plain["victim_key"] == key_under(K2, "P-1")
    assert rotating["victim_key_id"] == "k2"
    assert rotating["victim_key_aliases"] == {"k1": key_under(K1, "P-1")}
    # The alias is exactly what the old key gave before the rotation: the link holds.
    assert rotating["victim_key_aliases"]["k1"] == victim_key({"person_id": "P-1"}, K1)
    anonymous = pseudonymise_event({"event_id": "e"}, K2, "k2", previous=[("k1", K1)])
    assert anonymous["victim_key"] is None and "victim_key_aliases" not in anonymous
    assert identity_basis({"person_id": "P-1"}) == "person:P-1"


def test_aliases_survive_the_wire() -> None:
    wire = {
        "event_id": "e",
        "incident_id": "i",
        "sequence": 0,
        "event_type": "opened",
        "occurred_at": "2024-02-01T00:00:00Z",
        "reported_at": "2024-02-01T01:00:00Z",
        "source": "101",
        "opening_code": "ASBP",
        "location": {"easting": 424000, "northing": 564000},
        "victim_key": key_under(K2, "P-1"),
        "victim_key_id": "k2",
        "victim_key_aliases": {"k1": key_under(K1, "P-1"), "k0": key_under(b"x" * 32, "P-1")},
    }
    event = IncidentEvent.from_wire(wire)
    assert event.victim_key_aliases == (key_under(b"x" * 32, "P-1"), key_under(K1, "P-1"))
    assert IncidentEvent.from_wire({**wire, "victim_key_aliases": None}).victim_key_aliases == ()
