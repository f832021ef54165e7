"""The batch decode the worker calls per batch gives exactly the per-message decode.

``decode_incidents`` (orjson, then one PROJ call for a batch's WGS84 points) against
``decode_incident`` and against the plain path (``json.loads`` + ``IncidentEvent.from_wire``):
the same events, number for number, and the same failures, in place, for unreadable
messages.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asvat.contracts import decode_incident, decode_incidents
from asvat.domain.incident import VULNERABILITY_FACTORS, IncidentEvent
from asvat.domain.location import place_from_wire, places_from_wire

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Great Britain and a little beyond, with full float precision.
LATS = st.floats(min_value=49.0, max_value=61.0, allow_nan=False)
LONS = st.floats(min_value=-8.5, max_value=2.0, allow_nan=False)
UPRNS = st.sampled_from([None, "", "100000000001", 100000000002])


@st.composite
def locations(draw: st.DrawFn) -> dict[str, Any] | None:
    kind = draw(st.sampled_from(["wgs84", "wgs84", "bng", "uprn", "none", "empty"]))
    if kind == "none":
        return None
    if kind == "empty":
        return {}
    out: dict[str, Any] = {}
    if kind == "wgs84":
        out = {"lat": draw(LATS), "lon": draw(LONS)}
    elif kind == "bng":
        out = {
            "easting": draw(st.floats(0, 700_000, allow_nan=False)),
            "northing": draw(st.floats(0, 1_300_000, allow_nan=False)),
        }
    uprn = draw(UPRNS)
    if uprn is not None or kind == "uprn":
        out["uprn"] = uprn if uprn is not None else "100000000003"
    return out


@st.composite
def wire_events(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(0, 10_000))
    second = draw(st.integers(0, 59))
    event: dict[str, Any] = {
        "event_id": f"E-{n}-{draw(st.integers(0, 3))}",
        "incident_id": f"NB-{n}",
        "sequence": draw(st.integers(0, 5)),
        "event_type": draw(st.sampled_from(["opened", "updated", "closed", "cancelled"])),
        "occurred_at": f"2024-03-01T10:00:{second:02d}Z",
        "reported_at": draw(
            st.sampled_from(["2024-03-01T11:00:00Z", "2024-03-01T12:00:00.5+01:00"])
        ),
        "source": draw(st.sampled_from(["999", "101", "online"])),
        "opening_code": draw(st.sampled_from(["ASBN", "ASBP", "HARS"])),
        "closing_code": draw(st.sampled_from([None, "", "ASBE", "NFA"])),
        "victim_key": draw(st.sampled_from([None, "", "a" * 64, "b" * 64])),
        "victim_key_id": "k1",
    }
    location = draw(locations())
    if location is not None or draw(st.booleans()):
        event["location"] = location
    if draw(st.booleans()):
        event["vulnerability"] = draw(st.lists(st.sampled_from(VULNERABILITY_FACTORS), unique=True))
    if draw(st.booleans()):
        event["description"] = draw(st.text(max_size=40))
    return event


BROKEN = [
    b"not json",
    b"[1, 2]",
    b'{"event_id": "E"}',  # fields missing
    b'{"event_id":"E","incident_id":"I","sequence":0,"event_type":"opened",'
    b'"occurred_at":"yesterday","reported_at":"2024-03-01T10:00:00Z","source":"101",'
    b'"opening_code":"ASBN"}',
    b'{"event_id":"E","incident_id":"I","sequence":0,"event_type":"opened",'
    b'"occurred_at":"2024-03-01T10:00:00Z","reported_at":"2024-03-01T10:00:00Z",'
    b'"source":"101","opening_code":"ASBN","location":{"lat":"north","lon":1}}',
    b'{"event_id":"E","incident_id":"I","sequence":0,"event_type":"opened",'
    b'"occurred_at":"2024-03-01T10:00:00Z","reported_at":"2024-03-01T10:00:00Z",'
    b'"source":"101","opening_code":"ASBN","location":{"lat":NaN,"lon":1}}',
]


def plain(raw: bytes) -> tuple[dict[str, Any], IncidentEvent] | type[Exception]:
    """The path before the batch decode, with the failure's type in place of a result."""
    try:
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise TypeError("not an object")
        return data, IncidentEvent.from_wire(data)
    except (ValueError, KeyError, TypeError) as exc:
        return type(exc)


def same(left: Any, right: Any) -> bool:
    """Equal, counting NaN equal to NaN (repr compares floats bit for bit otherwise)."""
    return repr(left) == repr(right)


@SETTINGS
@given(
    events=st.lists(wire_events(), max_size=30),
    broken=st.lists(st.tuples(st.integers(0, 30), st.sampled_from(BROKEN)), max_size=4),
)
def test_batch_decode_equals_decoding_each_message(
    events: list[dict[str, Any]], broken: list[tuple[int, bytes]]
) -> None:
    raws = [json.dumps(e).encode() for e in events]
    for at, raw in broken:
        raws.insert(min(at, len(raws)), raw)
    batch = decode_incidents(raws)
    assert len(batch) == len(raws)
    for raw, result in zip(raws, batch, strict=True):
        expected = plain(raw)
        if isinstance(expected, type):
            assert isinstance(result, (ValueError, KeyError, TypeError)), raw
            with contextlib.suppress(ValueError, KeyError, TypeError):
                decode_incident(raw)
                raise AssertionError(f"decode_incident read {raw!r}")
            continue
        assert not isinstance(result, Exception), (raw, result)
        assert result == expected
        assert same(result[1], expected[1])
        assert same(decode_incident(raw), expected)


@SETTINGS
@given(st.lists(locations(), max_size=40))
def test_places_from_wire_equals_place_from_wire_bit_for_bit(
    batch: list[dict[str, Any] | None],
) -> None:
    assert same(places_from_wire(batch), [place_from_wire(location) for location in batch])


def test_a_bad_location_fails_only_its_own_message() -> None:
    good = json.dumps(
        {
            "event_id": "E-1", "incident_id": "I-1", "sequence": 0, "event_type": "opened",
            "occurred_at": "2024-03-01T10:00:00Z", "reported_at": "2024-03-01T10:00:00Z",
            "source": "101", "opening_code": "ASBN", "location": {"lat": 55.0, "lon": -1.6},
        }
    ).encode()
    results = decode_incidents([good, BROKEN[4], good])
    assert isinstance(results[1], ValueError)
    assert results[0] == results[2] == plain(good)
