"""The API consumer's ``decode``: what it takes from a topic, and what it sets aside."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from asvat.settings import TOPIC_ASSESSMENTS, TOPIC_ESCALATIONS
from services.api.consumer import InvalidMessage, decode

EXAMPLES = Path(__file__).resolve().parents[2] / "schemas" / "examples"


def _example(schema: str) -> dict[str, object]:
    path = sorted((EXAMPLES / schema).glob("*.json"))[0]
    loaded: dict[str, object] = json.loads(path.read_text(encoding="utf-8"))
    return loaded


@pytest.mark.parametrize(
    ("topic", "schema"),
    [(TOPIC_ASSESSMENTS, "assessment.v1"), (TOPIC_ESCALATIONS, "escalation.v1")],
)
def test_a_valid_message_reads_as_json_loads_reads_it(topic: str, schema: str) -> None:
    payload = _example(schema)
    raw = json.dumps(payload, ensure_ascii=False).encode("utf-8")
    assert decode(topic, raw) == json.loads(raw)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_set_aside_not_stored(constant: str) -> None:
    # Not JSON (RFC 8259); PostgreSQL refuses them and orjson, which writes the stored
    # payloads, would write them as null.
    raw = json.dumps(_example("assessment.v1")).encode()
    raw = raw[:-1] + f', "extra": {constant}}}'.encode()  # the object's last member
    with pytest.raises(InvalidMessage, match=f"not UTF-8 JSON: {constant} is not valid JSON"):
        decode(TOPIC_ASSESSMENTS, raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"\xff\xfe", "not UTF-8 JSON"),
        (b'{"a": ', "not UTF-8 JSON"),
        (b"[1, 2]", "expected a JSON object, got list"),
        (None, "empty message"),
    ],
)
def test_what_is_not_a_json_object_says_why(raw: bytes | None, expected: str) -> None:
    with pytest.raises(InvalidMessage, match=expected):
        decode(TOPIC_ASSESSMENTS, raw)
