"""The output contracts (assessment, escalation, late incident) and their examples."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
OUTPUTS = ("assessment.v1", "escalation.v1", "late-incident.v1")


def load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def registry() -> Registry[Any]:
    """Every schema by its $id (late-incident.v1 refers to incident.pseudonymised.v1)."""
    schemas = [load(path) for path in sorted(SCHEMAS.glob("*.json"))]
    return Registry().with_resources(
        (schema["$id"], Resource.from_contents(schema, default_specification=DRAFT202012))
        for schema in schemas
    )


def validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(
        load(SCHEMAS / f"{name}.json"),
        registry=registry(),
        format_checker=Draft202012Validator.FORMAT_CHECKER,
    )


def examples(name: str) -> list[Path]:
    return sorted((SCHEMAS / "examples" / name).glob("*.json"))


def messages(name: str, payload: Any) -> list[str]:
    return [error.message for error in validator(name).iter_errors(payload)]


def first_example(name: str) -> dict[str, Any]:
    payload: dict[str, Any] = load(examples(name)[0])
    return payload


@pytest.mark.parametrize("name", OUTPUTS)
def test_schema_is_valid_2020_12_with_id_and_closed(name: str) -> None:
    schema = load(SCHEMAS / f"{name}.json")
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].endswith(f"/{name}.json")
    assert schema["additionalProperties"] is False
    assert schema["properties"]["schema"]["const"] == f"asvat.{name}"


@pytest.mark.parametrize("name", OUTPUTS)
def test_every_field_has_a_description(name: str) -> None:
    missing: list[str] = []

    def walk(node: Any, where: str) -> None:
        if not isinstance(node, dict):
            return
        for key, sub in node.get("properties", {}).items():
            if not sub.get("description"):
                missing.append(f"{where}.{key}")
            walk(sub, f"{where}.{key}")
        for keyword in ("items", "additionalProperties", "propertyNames"):
            if isinstance(node.get(keyword), dict):
                walk(node[keyword], f"{where}.{keyword}")

    schema = load(SCHEMAS / f"{name}.json")
    assert schema.get("description")
    walk(schema, name)
    assert missing == []


@pytest.mark.parametrize(
    ("name", "minimum"), [("assessment.v1", 2), ("escalation.v1", 2), ("late-incident.v1", 1)]
)
def test_enough_examples(name: str, minimum: int) -> None:
    assert len(examples(name)) >= minimum


@pytest.mark.parametrize(
    "path",
    [path for name in OUTPUTS for path in examples(name)],
    ids=lambda path: f"{path.parent.name}/{path.name}",
)
def test_example_is_valid(path: Path) -> None:
    assert messages(path.parent.name, load(path)) == []


@pytest.mark.parametrize("name", OUTPUTS)
def test_extra_field_is_rejected(name: str) -> None:
    payload = first_example(name)
    payload["surprise"] = 1
    assert any("surprise" in message for message in messages(name, payload))


def test_assessment_without_rules_met_is_rejected() -> None:
    payload = first_example("assessment.v1")
    del payload["rules_met"]
    assert messages("assessment.v1", payload) == ["'rules_met' is a required property"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("classification", "ASB"),
        ("asb_category", "noise"),
        ("victim_key", "not-hex"),
        ("location_key", "somewhere"),
        ("occurred_at", "2024-03-01 21:15"),
        ("occurred_at", "2024-03-01T21:15:00"),  # no offset: ambiguous
        ("assessment_id", "ABC"),
        ("rules_met", ["victim-28d", "victim-28d"]),
        ("in_scope", "yes"),
    ],
)
def test_assessment_field_rules(field: str, value: Any) -> None:
    payload = first_example("assessment.v1")
    payload[field] = value
    assert messages("assessment.v1", payload) != []


def test_escalation_subject_key_follows_subject_type() -> None:
    victim = load(SCHEMAS / "examples" / "escalation.v1" / "1-raised.json")
    assert victim["subject_type"] == "victim"
    as_location = copy.deepcopy(victim)
    as_location["subject_type"] = "location"  # a victim key is not a location key
    assert messages("escalation.v1", as_location) != []
    as_location["subject_key"] = "uprn:100012345678"
    assert messages("escalation.v1", as_location) == []


@pytest.mark.parametrize(
    ("field", "value"),
    [("event", "cleared"), ("subject_type", "street"), ("level", "low"), ("episode", 0)],
)
def test_escalation_field_rules(field: str, value: Any) -> None:
    payload = first_example("escalation.v1")
    payload[field] = value
    assert messages("escalation.v1", payload) != []


def test_late_incident_never_carries_caller_details() -> None:
    payload = first_example("late-incident.v1")
    payload["event"]["caller"] = {"phone": "07700 900123"}
    assert messages("late-incident.v1", payload) != []
