"""The input contract (incident.v1), the topic payload (incident.pseudonymised.v1), and
the field errors ingest answers with."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from asvat.contracts import (
    SCHEMA_DIR,
    FieldError,
    dumps_json,
    load_schema,
    loads_json,
    validate_against,
    validate_incident,
)
from asvat.domain.identity import pseudonymise_event
from asvat.domain.timeutil import MICROS_PER_SECOND, format_timestamp, parse_timestamp
from asvat.recording_quality import pseudonymise_recorder

EXAMPLES = SCHEMA_DIR / "examples"
INPUT_EXAMPLES = sorted((EXAMPLES / "incident.v1").glob("*.json"))
TOPIC_EXAMPLES = sorted((EXAMPLES / "incident.pseudonymised.v1").glob("*.json"))
#: The documented key the pseudonymised examples were made with (an example, not a secret).
EXAMPLE_KEY = b"example-only-hmac-key-not-a-secret-0123456789"

NOW = parse_timestamp("2024-08-01T12:00:00Z")
SKEW = 300 * MICROS_PER_SECOND


def load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def check(obj: Any, *, now: int = NOW, skew: int = SKEW) -> list[FieldError]:
    return validate_incident(obj, now_us=now, future_skew_us=skew)


def valid_event() -> dict[str, Any]:
    return {
        "event_id": "e-1",
        "incident_id": "NB-2024-000001",
        "sequence": 0,
        "event_type": "opened",
        "occurred_at": "2024-03-01T21:15:00Z",
        "reported_at": "2024-03-01T21:17:00Z",
        "source": "999",
        "opening_code": "ASBP",
        "caller": {"phone": "07412 345678", "name": "Sam Example", "date_of_birth": "1980-02-29"},
        "location": {"lat": 54.97, "lon": -1.61},
    }


# --------------------------------------------------------------------------- the files


@pytest.mark.parametrize("name", ["incident.v1", "incident.pseudonymised.v1"])
def test_schema_is_2020_12_with_an_id_and_closed(name: str) -> None:
    schema = load_schema(name)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"https://asvat.example/schemas/{name}.json"
    assert schema["additionalProperties"] is False


@pytest.mark.parametrize("name", ["incident.v1", "incident.pseudonymised.v1"])
def test_every_field_has_a_description(name: str) -> None:
    missing: list[str] = []

    def walk(node: Any, where: str) -> None:
        if not isinstance(node, dict):
            return
        for key, sub in node.get("properties", {}).items():
            if not sub.get("description"):
                missing.append(f"{where}.{key}")
            walk(sub, f"{where}.{key}")
        for key, sub in node.get("$defs", {}).items():
            walk(sub, f"{where}.$defs.{key}")

    walk(load_schema(name), name)
    assert missing == []


def test_topic_schema_says_the_same_as_the_input_schema_for_shared_fields() -> None:
    """incident.pseudonymised.v1 repeats incident.v1's fields: the rules must not drift."""

    def rules(node: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in node.items() if k != "description"}
        if "$ref" in out:
            out["$ref"] = out["$ref"].replace("incident.v1.json#", "#")
        return out

    source = load_schema("incident.v1")["properties"]
    topic = load_schema("incident.pseudonymised.v1")["properties"]
    pseudonym = {"victim_key", "victim_key_id", "victim_key_aliases", "ingested_at"}
    assert set(topic) == (set(source) - {"caller"}) | pseudonym
    # recorded_by differs by design: operator_id in, operator_key out
    for name in set(source) - {"caller", "recorded_by"}:
        assert rules(topic[name]) == rules(source[name]), name


def test_the_required_examples_exist() -> None:
    examples = [load(p) for p in INPUT_EXAMPLES]
    assert {"999", "101", "online", "bus_feedback"} <= {e["source"] for e in examples}
    assert any(e["source"] == "999" and "phone" in e.get("caller", {}) for e in examples)
    assert any(e["source"] == "101" and "person_id" in e.get("caller", {}) for e in examples)
    assert any(
        e["source"] == "online" and "caller" not in e and "easting" in e["location"]
        for e in examples
    )
    assert any(
        e["event_type"] == "closed"
        and e.get("closing_code")
        and e["occurred_at"].endswith("+01:00")
        for e in examples
    )
    assert any(e["event_type"] == "cancelled" for e in examples)
    assert [p.name for p in TOPIC_EXAMPLES] == [p.name for p in INPUT_EXAMPLES]


@pytest.mark.parametrize("path", INPUT_EXAMPLES, ids=lambda p: p.name)
def test_every_input_example_is_valid(path: Path) -> None:
    assert check(load(path)) == []


@pytest.mark.parametrize("path", TOPIC_EXAMPLES, ids=lambda p: p.name)
def test_every_topic_example_is_valid(path: Path) -> None:
    assert validate_against("incident.pseudonymised.v1", load(path)) == []
    assert validate_against("incident.pseudonymised.v1.json", load(path)) == []


@pytest.mark.parametrize("path", INPUT_EXAMPLES, ids=lambda p: p.name)
def test_topic_examples_are_what_ingest_makes_of_the_input_examples(path: Path) -> None:
    made = pseudonymise_recorder(pseudonymise_event(load(path), EXAMPLE_KEY, "k1"), EXAMPLE_KEY)
    shown = load(EXAMPLES / "incident.pseudonymised.v1" / path.name)
    assert {k: v for k, v in shown.items() if k != "ingested_at"} == made


def test_a_raw_event_is_not_a_valid_topic_payload() -> None:
    errors = validate_against("incident.pseudonymised.v1", valid_event())
    assert (
        FieldError(
            "caller",
            "unexpected field; expected only "
            + ", ".join(load_schema("incident.pseudonymised.v1")["properties"]),
        )
        in errors
    )
    assert {"caller", "victim_key", "victim_key_id", "ingested_at"} <= {e.field for e in errors}


def test_unknown_schema_names_the_ones_there_are() -> None:
    with pytest.raises(KeyError, match=r"incident\.v1"):
        validate_against("incident.v9", {})


# --------------------------------------------------------------------------- bad records

Mutation = Callable[[dict[str, Any]], None]


def drop(name: str) -> Mutation:
    return lambda e: e.pop(name)


def put(path: str, value: Any) -> Mutation:
    def mutate(event: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        node = event
        for part in parents:
            node = node[part]
        node[leaf] = value

    return mutate


BAD_RECORDS: list[tuple[str, Mutation, str, str]] = [
    ("missing field", drop("incident_id"), "incident_id", "required but missing"),
    ("missing location", drop("location"), "location", "required but missing"),
    ("wrong type", put("sequence", "1"), "sequence", "expected an integer, got a string"),
    ("negative sequence", put("sequence", -1), "sequence", "expected a number >= 0"),
    ("boolean is not an integer", put("sequence", True), "sequence", "expected an integer"),
    (
        "timestamp without offset",
        put("occurred_at", "2024-03-01T21:15:00"),
        "occurred_at",
        "with an offset",
    ),
    (
        "timestamp not a real date",
        put("reported_at", "2024-02-30T10:00:00Z"),
        "reported_at",
        "a real calendar date and time",
    ),
    (
        "occurred after reported",
        put("occurred_at", "2024-03-01T21:18:00Z"),
        "occurred_at",
        "at or before reported_at (2024-03-01T21:17:00Z)",
    ),
    (
        "occurred after reported across offsets",
        put("occurred_at", "2024-03-01T22:17:01+01:00"),
        "occurred_at",
        "at or before reported_at",
    ),
    (
        "future beyond skew",
        put("reported_at", "2024-08-01T12:05:01Z"),
        "reported_at",
        "no later than 2024-08-01T12:05:00Z",
    ),
    (
        "unknown event_type",
        put("event_type", "reopened"),
        "event_type",
        'expected one of "opened", "updated", "closed", "cancelled", got "reopened"',
    ),
    ("unknown source", put("source", "email"), "source", 'expected one of "999", "101"'),
    ("source as a number", put("source", 999), "source", "got 999"),
    ("bad phone", put("caller.phone", "12345"), "caller.phone", "expected a valid phone number"),
    ("bad lat", put("location.lat", 91), "location.lat", "expected a number <= 90, got 91"),
    ("lat as text", put("location.lat", "54.9"), "location.lat", "expected a number"),
    ("lat without lon", put("location", {"lat": 54.9}), "location.lon", "expected alongside lat"),
    (
        "easting out of range",
        put("location", {"easting": 800000, "northing": 1}),
        "location.easting",
        "expected a number <= 700000",
    ),
    (
        "no point at all",
        put("location", {"address": "somewhere"}),
        "location",
        "expected a point: lat and lon",
    ),
    (
        "uprn with letters",
        put("location.uprn", "UPRN12"),
        "location.uprn",
        "a UPRN of 1 to 12 digits",
    ),
    ("unknown field", put("priority", "high"), "priority", "unexpected field; expected only"),
    (
        "unknown caller field",
        put("caller.ni_number", "QQ123456C"),
        "caller.ni_number",
        "unexpected field",
    ),
    ("empty caller", put("caller", {}), "caller", "at least one of person_id, phone"),
    (
        "bad date of birth",
        put("caller.date_of_birth", "29/02/1980"),
        "caller.date_of_birth",
        "a date written YYYY-MM-DD",
    ),
    (
        "unknown vulnerability",
        put("vulnerability", ["child", "tall"]),
        "vulnerability[1]",
        'expected one of "disability"',
    ),
    (
        "repeated vulnerability",
        put("vulnerability", ["child", "child"]),
        "vulnerability",
        "each item at most once",
    ),
    ("empty closing code", put("closing_code", ""), "closing_code", "at least 1 characters"),
    (
        "long description",
        put("description", "x" * 4001),
        "description",
        "at most 4000 characters, got 4001",
    ),
    ("empty event_id", put("event_id", ""), "event_id", "at least 1 characters"),
]


@pytest.mark.parametrize(
    ("mutate", "field", "fragment"),
    [case[1:] for case in BAD_RECORDS],
    ids=[case[0] for case in BAD_RECORDS],
)
def test_bad_record_names_the_field_and_what_was_expected(
    mutate: Mutation, field: str, fragment: str
) -> None:
    event = valid_event()
    assert check(event) == []
    mutate(event)
    errors = check(event)
    assert [e.field for e in errors] == [field], errors
    assert fragment in errors[0].reason
    assert errors[0].reason.startswith(("expected", "required", "unexpected")), errors[0]


@pytest.mark.parametrize("value", [[], "text", 3, None])
def test_a_record_that_is_not_an_object(value: Any) -> None:
    [error] = check(value)
    assert error.field == "(record)"
    assert error.reason.startswith("expected a JSON object, got ")


def test_future_skew_boundary_is_inclusive() -> None:
    event = valid_event()
    event["reported_at"] = format_timestamp(NOW + SKEW)
    assert check(event) == []
    event["reported_at"] = format_timestamp(NOW + SKEW + 1)
    assert [e.field for e in check(event)] == ["reported_at"]
    assert check(event, skew=SKEW + 1) == []


def test_equal_occurred_and_reported_times_are_fine() -> None:
    event = valid_event()
    event["occurred_at"] = "2024-03-01T22:17:00+01:00"  # the same instant as reported_at
    assert check(event) == []


def test_several_problems_are_all_reported_sorted_by_field() -> None:
    event = valid_event()
    del event["event_id"]
    event["source"] = "fax"
    event["location"]["lat"] = -91
    assert [e.field for e in check(event)] == ["event_id", "location.lat", "source"]


def test_caller_values_are_never_repeated_in_reasons() -> None:
    event = valid_event()
    event["caller"] = {
        "phone": "not-a-phone-4417",
        "name": 90210,
        "date_of_birth": "17/05/1968",
        "person_id": "",
        "postcode": "N" * 17,
    }
    errors = check(event)
    assert {e.field for e in errors} == {
        "caller.phone",
        "caller.name",
        "caller.date_of_birth",
        "caller.person_id",
        "caller.postcode",
    }
    text = " ".join(e.reason for e in errors)
    for raw in ("not-a-phone-4417", "4417", "90210", "17/05/1968", "N" * 17):
        assert raw not in text


def test_anonymous_report_without_caller_or_with_null_caller() -> None:
    event = valid_event()
    del event["caller"]
    assert check(event) == []
    event["caller"] = None
    assert check(event) == []


def test_both_point_pairs_together_are_allowed() -> None:
    event = valid_event()
    event["location"] = {"lat": 54.97, "lon": -1.61, "easting": 424560, "northing": 564921}
    assert check(event) == []


def test_checking_does_not_change_the_record() -> None:
    event = valid_event()
    before = copy.deepcopy(event)
    check(event)
    assert event == before


def test_field_error_reads_as_field_colon_reason() -> None:
    assert str(FieldError("caller.phone", "expected a valid phone number")) == (
        "caller.phone: expected a valid phone number"
    )


@pytest.mark.parametrize(
    "mutate",
    [case[1] for case in BAD_RECORDS],
    ids=[case[0] for case in BAD_RECORDS],
)
def test_fast_and_explaining_validators_agree_on_schema_errors(mutate: Mutation) -> None:
    """The jsonschema-rs fast path may only answer "valid" where the Python validator would.

    Semantic checks (times, phone) run after both; here only the schema verdicts matter.
    """
    from asvat.contracts import _fast_validator, _validator

    event = valid_event()
    mutate(event)
    slow_valid = not list(_validator("incident.v1").iter_errors(event))
    assert _fast_validator("incident.v1").is_valid(event) == slow_valid


@pytest.mark.parametrize("path", INPUT_EXAMPLES + TOPIC_EXAMPLES, ids=lambda p: p.name)
def test_fast_validator_accepts_every_example(path: Path) -> None:
    from asvat.contracts import _fast_validator

    name = "incident.v1" if path.parent.name == "incident.v1" else "incident.pseudonymised.v1"
    assert _fast_validator(name).is_valid(load(path))


@pytest.mark.parametrize(
    "text",
    [
        '{"sequence": 123456789012345678901234567890}',  # orjson alone: a float
        '{"sequence": 18446744073709551616}',
        '{"sequence": -9223372036854775809}',
        '{"lat": 1e400}',  # orjson refuses, json: inf
        '"\\ud800"',  # a lone surrogate: orjson refuses, json reads it
        '{"a": 1, "a": 2}',
        '{"x": 0.1, "y": -0.0, "z": 1E5, "w": [true, null, "é"]}',
        '{"sequence": 9007199254740993}',
    ],
)
def test_loads_json_reads_what_json_loads_reads(text: str) -> None:
    expected = json.loads(text)
    for raw in (text, text.encode()):
        found = loads_json(raw)
        assert repr(found) == repr(expected)
        assert type(found) is type(expected)


def test_loads_json_passes_json_options_for_what_orjson_refuses() -> None:
    def refuse(name: str) -> None:
        raise ValueError(f"{name} is not valid JSON")

    with pytest.raises(ValueError, match="NaN is not valid JSON"):
        loads_json('{"lat": NaN}', parse_constant=refuse)
    with pytest.raises(json.JSONDecodeError):
        loads_json('{"lat": ', parse_constant=refuse)


@pytest.mark.parametrize(
    "value",
    [
        {"sequence": 123456789012345678901234567890},  # beyond 64 bits: the json path
        {"sequence": -9223372036854775809, "ok": 9223372036854775807},
        {1: "an int key", None: "a None key"},  # json writes them as strings
        {"free_text": "caf\u00e9 \u2028 \"quoted\" back\\slash \x00\x1f tab\t", "e": ""},
        {"x": 0.1, "y": -0.0, "z": 1e-07, "big": 1e16, "w": [True, None, "\U0001F600"]},
        ["a", ("tuple", 1), {"nested": {"deep": [1.5, 2]}}],
    ],
)
def test_dumps_json_writes_what_json_dumps_writes(value: Any) -> None:
    expected = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    written = dumps_json(value)
    assert isinstance(written, bytes)
    assert json.loads(written) == json.loads(expected)
    if "e-07" not in expected and "e+16" not in expected:  # a float's spelling may differ
        assert written == expected.encode("utf-8")


def test_dumps_json_writes_every_example_event_as_json_does() -> None:
    for path in INPUT_EXAMPLES + TOPIC_EXAMPLES:
        event = load(path)
        expected = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
        assert dumps_json(event) == expected.encode("utf-8"), path.name
