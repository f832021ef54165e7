"""Assessment ids are the same, byte for byte, as every earlier version's.

An ``assessment_id`` is ``sha256("assessment|" + canonical JSON of the content)``, the
canonical JSON being ``json.dumps(content, sort_keys=True, separators=(",", ":"),
ensure_ascii=False)``; consumers compare ids across versions. The worker now computes the
content once per message and encodes it with orjson when it holds only what orjson writes
identically (``asvat.domain.assessment._assessment_id``). These tests hold ids computed by the
code before that change, and check both encodings against each other for every kind of value
the content may hold, and the fallback for the kinds they disagree on (floats).
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from asvat.domain.assessment import Assessment
from asvat.domain.timeutil import parse_timestamp


def stdlib_id(content: dict[str, Any]) -> str:
    """The id as every version before orjson computed it."""
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(("assessment|" + canonical).encode("utf-8")).hexdigest()


def stdlib_canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


# -- ids computed by the code before this change (asvat 57969a1) -----------------------------

PLAIN = Assessment(
    "NB-2022-0001234", True, "asb", "nuisance", parse_timestamp("2022-03-04T05:06:07Z"),
    None, "bng:424944:564696", (), {"victim-28d": 0, "location-7d-100m": 1}, {},
)
RICH = Assessment(
    "DEMO-2022-005", True, "asb", "personal", parse_timestamp("2022-12-31T23:59:59.123456Z"),
    "b2d378a2a0860456" * 4, "bng:424944:564696", ("victim-28d", "case-review"),
    {"victim-28d": 4, "location-7d-100m": 0, "case-review": 3},
    {"victim-28d": ("DEMO-2022-001", "DEMO-2022-003", "DEMO-2022-005")},
    "high", 27,
    (
        {
            "factor": "rule", "weight": 12,
            "detail": "rule victim-28d met: 4 incidents of this victim in 28 days (threshold 3); "
            "10 for the rule + 2 × 1 over the threshold",
            "rule_id": "victim-28d", "count": 4, "threshold": 3,
            "incident_ids": ["DEMO-2022-001", "DEMO-2022-003"],
        },
        {
            "factor": "vulnerability_floor", "weight": 0,
            "detail": "vulnerability recorded (elderly): at least medium (score 5 alone gives "
            "standard)",
            "value": "medium",
        },
    ),
    True,
    (
        {
            "reason": "description", "offence": "assault",
            "detail": "the description mentions 'punched', 'café \"ñ\"\\' (assault)",
            "phrases": ["punched", "café \"ñ\"\\"],
        },
        {
            "reason": "opening_code", "offence": None,
            "detail": "opened as CR1, an offence, but finalised as AS1 (asb)", "code": "CR1",
        },
    ),
)
#: Control characters, DEL, line and paragraph separators, astral and non-ASCII keys.
ODD = Assessment(
    "x\u00e9\u2028\x00\x1f\x7f\U0001F600\t\n", False, "cancelled", None, 0, "\u0001", None, (),
    {"ρ": 0, "a": 1, "\u00e9": 2, "Z": 3, "\U0001F600": 4}, {}, "standard", -3, (), False,
    ({"reason": "x\u2029\b\f\r", "offence": "\ud7ff\ue000\uffff"},),
)
KNOWN = {
    "plain": (PLAIN, "d5e5e10608adf92411a59518e11fdee4c46b41f966415da8eb89aaa91713d6f6"),
    "rich": (RICH, "69452ced3b1e97a01a30c6090fe388e43058afb4f6955325b80400d845b317b4"),
    "odd": (ODD, "e3453f3834fa0fa3c6aea1e34c397dce0a3159dea079b970eb2a731383b0e040"),
}


@pytest.mark.parametrize("name", sorted(KNOWN))
def test_ids_made_before_orjson_are_unchanged(name: str) -> None:
    assessment, known = KNOWN[name]
    assert assessment.assessment_id == known
    assert assessment.to_wire(0)["assessment_id"] == known
    assert stdlib_id(assessment.content()) == known


def test_the_wire_message_is_the_content_with_its_id_and_time() -> None:
    wire = RICH.to_wire(parse_timestamp("2024-01-01T00:00:00Z"))
    assert list(wire) == ["schema", "assessment_id", *RICH.content(), "assessed_at"]
    assert wire["schema"] == "asvat.assessment.v1"
    assert wire["assessed_at"] == "2024-01-01T00:00:00Z"
    assert {k: v for k, v in wire.items() if k in RICH.content()} == RICH.content()
    assert RICH.to_wire("2024-01-01T00:00:00Z") == wire  # a stamp formatted once per batch


# -- the two encodings ---------------------------------------------------------------------

#: Every code point but the surrogates (which neither can encode as UTF-8; see below).
TEXT = st.text(st.characters(codec="utf-8"), max_size=40)
KEYS = st.text(st.characters(codec="utf-8"), max_size=12)
#: What the content holds: strings, integers (incl. beyond 64 bits), booleans, None.
PLAIN_LEAVES = (
    st.none() | st.booleans() | st.integers() | st.integers(-(2**64), 2**64) | TEXT
)
PLAIN_VALUES = st.recursive(
    PLAIN_LEAVES,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(KEYS, inner, max_size=5),
    max_leaves=25,
)


@settings(max_examples=1000, suppress_health_check=[HealthCheck.too_slow])
@given(PLAIN_VALUES)
@example("\x00\x01\x08\t\n\x0b\x0c\r\x1f\x20\"\\/\x7f\x80\u2028\u2029\ufeff\uffff\U0010ffff")
@example({"b": 1, "a": 2, "é": 3, "Z": 4, "\U0001F600": 5, "\uffff": 6, "": 7, "\x00": 8})
@example([2**63 - 1, -(2**63), 2**64 - 1, 2**64, -(2**63) - 1, True, False, None])
def test_orjson_writes_what_json_writes_for_every_value_the_content_holds(value: Any) -> None:
    """Sorted keys (code-point order, which is UTF-8 byte order), compact separators, every
    character as UTF-8 except the same escapes (``\\"``, ``\\\\``, ``\\b\\f\\n\\r\\t`` and
    ``\\u00XX`` for the other control characters): identical bytes, or orjson refuses (an
    integer beyond 64 bits) and the id takes the ``json`` path."""
    try:
        encoded = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        return
    assert encoded == stdlib_canonical(value)


def test_floats_are_where_the_encodings_differ() -> None:
    """Why a float anywhere sends the id down the ``json`` path."""
    assert orjson.dumps(1e-7) != stdlib_canonical(1e-7)
    assert orjson.dumps(math.nan) != stdlib_canonical(math.nan)


JSON_VALUES = st.recursive(
    PLAIN_LEAVES | st.floats(allow_nan=True, allow_infinity=True),
    lambda inner: st.lists(inner, max_size=4)
    | st.tuples(inner, inner)
    | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=15,
)
MAPPINGS = st.dictionaries(KEYS, JSON_VALUES, max_size=6)
ASSESSMENTS = st.builds(
    Assessment,
    incident_id=TEXT,
    in_scope=st.booleans(),
    classification=TEXT,
    asb_category=st.none() | TEXT,
    occurred_at=st.integers(-(2**55), 2**57),
    victim_key=st.none() | TEXT,
    location_key=st.none() | TEXT,
    rules_met=st.lists(TEXT, max_size=3).map(tuple),
    rule_counts=st.dictionaries(KEYS, st.integers(), max_size=4),
    contributing=st.dictionaries(KEYS, st.lists(TEXT, max_size=3).map(tuple), max_size=3),
    risk_level=TEXT,
    risk_score=st.integers(),
    reasons=st.lists(MAPPINGS, max_size=3).map(tuple),
    case_review_threshold_met=st.booleans(),
    integrity_flags=st.lists(MAPPINGS, max_size=3).map(tuple),
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(ASSESSMENTS)
def test_assessment_ids_equal_the_stdlib_encodings(assessment: Assessment) -> None:
    """Any content, floats and tuples in the reasons included: the same id as before."""
    try:
        content = assessment.content()
    except (ValueError, OverflowError, OSError):  # occurred_at outside what can be formatted
        return
    expected = stdlib_id(content)
    assert assessment.assessment_id == expected
    assert assessment.to_wire(0)["assessment_id"] == expected


def test_a_lone_surrogate_fails_as_it_did() -> None:
    """Neither encoding can write it as UTF-8: the id fails, as before, rather than change."""
    odd = Assessment("I\ud800", True, "asb", None, 0, None, None, (), {}, {})
    with pytest.raises(UnicodeEncodeError):
        stdlib_id(odd.content())
    with pytest.raises(UnicodeEncodeError):
        _ = odd.assessment_id
