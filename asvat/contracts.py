"""The wire contracts: JSON Schemas in ``schemas/`` and the checks they cannot express.

Every message on a topic and every record ingest accepts has a schema file (JSON Schema
2020-12). :func:`validate_against` checks any of them; :func:`validate_incident` checks an
input incident event and adds the semantic rules a schema cannot state (times in order and
not in the future, a phone number that really is one). Errors name the field by a dotted
path (``caller.phone``, ``location.lat``, ``vulnerability[1]``) and say what was expected;
they never repeat a caller's personal data.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema_rs
import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from asvat.domain.identity import IdentityError, normalise_phone
from asvat.domain.incident import IncidentEvent
from asvat.domain.location import Place, places_from_wire
from asvat.domain.timeutil import (
    MICROS_PER_SECOND,
    TimestampError,
    format_timestamp,
    parse_timestamp,
)

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "schemas"
INCIDENT_SCHEMA = "incident.v1"
PSEUDONYMISED_INCIDENT_SCHEMA = "incident.pseudonymised.v1"

#: Field name used when the record itself is not a JSON object.
RECORD = "(record)"

#: Schema annotation with the words for "expected ..." where the keyword's own message
#: would be a regular expression or a list of sub-schemas.
_EXPECTED = "x-expected"
_EXPECTED_FOR = frozenset({"pattern", "anyOf", "oneOf", "minProperties"})
_FORMAT_WORDS = {"date-time": "a real calendar date and time", "date": "a real calendar date"}

_TYPE_WORDS = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "object": "a JSON object",
    "array": "an array",
    "boolean": "true or false",
    "null": "null",
}


@dataclass(frozen=True, slots=True)
class FieldError:
    """One problem with one field: ``field`` is a dotted path, ``reason`` says what was expected."""

    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}"


# --------------------------------------------------------------------------- loading


def _schema_name(name: str) -> str:
    return name[: -len(".json")] if name.endswith(".json") else name


def schema_names() -> list[str]:
    """Names of every schema in ``schemas/`` (``incident.v1``, ``assessment.v1``, ...)."""
    return sorted(path.name[: -len(".json")] for path in SCHEMA_DIR.glob("*.json"))


@cache
def load_schema(name: str) -> dict[str, Any]:
    """The schema ``schemas/<name>.json`` as a dict (``name`` with or without ``.json``)."""
    path = SCHEMA_DIR / f"{_schema_name(name)}.json"
    try:
        schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KeyError(
            f"no schema {name!r} in {SCHEMA_DIR} (have: {', '.join(schema_names())})"
        ) from None
    return schema


@cache
def _registry() -> Registry[Any]:
    """Every schema by its ``$id``, so ``incident.v1.json#/$defs/...`` references resolve."""
    resources: list[tuple[str, Resource[Any]]] = []
    for name in schema_names():
        schema = load_schema(name)
        if isinstance(schema.get("$id"), str):
            resource = Resource.from_contents(schema, default_specification=DRAFT202012)
            resources.append((schema["$id"], resource))
    return Registry().with_resources(resources)


@cache
def _validator(name: str) -> Draft202012Validator:
    schema = load_schema(_schema_name(name))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(
        schema, registry=_registry(), format_checker=Draft202012Validator.FORMAT_CHECKER
    )


@cache
def _fast_validator(name: str) -> Any:
    """The same schema compiled by jsonschema-rs: about 300 times faster, yes/no only.

    Nearly every record is valid, so the fast check answers them; only a record it rejects
    goes through the Python validator, whose errors name each field and what was expected.
    ``tests/unit/test_contracts.py`` checks that both agree on valid and invalid records.
    """
    resources = [
        (schema["$id"], schema)
        for schema in (load_schema(other) for other in schema_names())
        if isinstance(schema.get("$id"), str)
    ]
    return jsonschema_rs.validator_for(
        load_schema(_schema_name(name)),
        registry=jsonschema_rs.Registry(resources),
        validate_formats=True,
    )


# --------------------------------------------------------------------------- errors


def _path(parts: Iterable[str | int]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or RECORD


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a JSON object"
    return type(value).__name__


def _shown(value: Any, field: str) -> str:
    """The value for an error message; caller fields are described, never repeated."""
    if field == "caller" or field.startswith("caller."):
        if isinstance(value, str):
            return f"a string of {len(value)} characters"
        return _json_type(value)
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _length(value: Any) -> int:
    return len(value) if isinstance(value, str | list | dict) else 0


def _type_words(expected: Any) -> str:
    names = [expected] if isinstance(expected, str) else list(expected)
    return " or ".join(_TYPE_WORDS.get(name, name) for name in names)


def _field_errors(error: ValidationError) -> Iterator[FieldError]:
    """One jsonschema error as field errors (``required`` can name several fields)."""
    parts = list(error.absolute_path)
    field = _path(parts)
    keyword = error.validator
    rule: Any = error.validator_value
    value = error.instance
    schema = error.schema if isinstance(error.schema, Mapping) else {}

    if keyword == "required" and isinstance(value, Mapping):
        for name in rule:
            if name not in value:
                yield FieldError(_path([*parts, name]), "required but missing")
        return
    if keyword == "dependentRequired" and isinstance(value, Mapping):
        for name, needed in rule.items():
            for other in needed:
                if name in value and other not in value:
                    yield FieldError(_path([*parts, other]), f"expected alongside {name}, missing")
        return
    if keyword == "additionalProperties" and isinstance(value, Mapping):
        allowed = list(schema.get("properties", {}))
        for name in value:
            if name not in allowed:
                yield FieldError(
                    _path([*parts, name]),
                    f"unexpected field; expected only {', '.join(allowed)}",
                )
        return
    if keyword in _EXPECTED_FOR and isinstance(schema.get(_EXPECTED), str):
        yield FieldError(field, f"expected {schema[_EXPECTED]}, got {_shown(value, field)}")
        return
    if keyword == "type":
        yield FieldError(field, f"expected {_type_words(rule)}, got {_json_type(value)}")
    elif keyword == "enum":
        choices = ", ".join(json.dumps(choice) for choice in rule)
        yield FieldError(field, f"expected one of {choices}, got {_shown(value, field)}")
    elif keyword == "const":
        yield FieldError(field, f"expected {json.dumps(rule)}, got {_shown(value, field)}")
    elif keyword == "minLength":
        yield FieldError(field, f"expected at least {rule} characters, got {_length(value)}")
    elif keyword == "maxLength":
        yield FieldError(field, f"expected at most {rule} characters, got {_length(value)}")
    elif keyword in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        relation = {
            "minimum": ">=",
            "maximum": "<=",
            "exclusiveMinimum": ">",
            "exclusiveMaximum": "<",
        }[keyword]
        yield FieldError(field, f"expected a number {relation} {rule}, got {_shown(value, field)}")
    elif keyword == "uniqueItems":
        yield FieldError(field, "expected each item at most once, got duplicates")
    elif keyword == "minProperties":
        yield FieldError(field, f"expected at least {rule} field(s), got none")
    elif keyword == "format":
        words = _FORMAT_WORDS.get(str(rule), f"a valid {rule}")
        yield FieldError(field, f"expected {words}, got {_shown(value, field)}")
    elif keyword == "pattern":
        yield FieldError(field, f"expected text matching {rule}, got {_shown(value, field)}")
    elif keyword in ("anyOf", "oneOf") and error.context:
        inner = best_match(error.context)
        yield FieldError(field, f"expected one of the allowed shapes ({inner.message})")
    else:
        yield FieldError(field, error.message)


def _sorted_unique(errors: Iterable[FieldError]) -> list[FieldError]:
    return sorted(set(errors), key=lambda e: (e.field, e.reason))


# --------------------------------------------------------------------------- public


def validate_against(schema_name: str, obj: Any) -> list[FieldError]:
    """Check ``obj`` against ``schemas/<schema_name>.json``; ``[]`` when it is valid."""
    try:
        if _fast_validator(schema_name).is_valid(obj):
            return []
    except (ValueError, TypeError, OverflowError):
        pass  # e.g. NaN or a huge integer: let the Python validator describe it
    found: list[FieldError] = []
    # Say each problem once: a value not even written right fails its pattern and its
    # format, and half a pair (lat without lon) fails dependentRequired and the anyOf.
    badly_written: set[str] = set()
    half_pairs: set[str] = set()
    deferred: list[tuple[str, FieldError]] = []
    for error in _validator(schema_name).iter_errors(obj):
        for problem in _field_errors(error):
            if error.validator in ("format", "anyOf", "oneOf"):
                deferred.append((str(error.validator), problem))
                continue
            found.append(problem)
            if error.validator == "pattern":
                badly_written.add(problem.field)
            elif error.validator == "dependentRequired":
                half_pairs.add(_path(error.absolute_path))
    for keyword, problem in deferred:
        if keyword == "format" and problem.field in badly_written:
            continue
        if keyword != "format" and problem.field in half_pairs:
            continue
        found.append(problem)
    return _sorted_unique(found)


def validate_incident(obj: Any, *, now_us: int, future_skew_us: int) -> list[FieldError]:
    """Check one raw input event against ``incident.v1`` and the rules beyond the schema.

    Beyond the schema: both times parse as RFC 3339 with an offset, ``occurred_at`` is not
    after ``reported_at``, neither is more than ``future_skew_us`` after ``now_us``, and
    ``caller.phone`` is a valid phone number. A field the schema already rejected is not
    checked again. Returns ``[]`` when the event is valid.
    """
    errors = validate_against(INCIDENT_SCHEMA, obj)
    if not isinstance(obj, Mapping):
        return errors
    rejected = {error.field for error in errors}
    extra: list[FieldError] = []

    latest = now_us + future_skew_us
    times: dict[str, int] = {}
    for name in ("occurred_at", "reported_at"):
        text = obj.get(name)
        if name in rejected or not isinstance(text, str):
            continue
        try:
            moment = parse_timestamp(text)
        except TimestampError as exc:
            extra.append(FieldError(name, str(exc)))
            continue
        if moment > latest:
            extra.append(
                FieldError(
                    name,
                    f"expected a time no later than {format_timestamp(latest)} (now plus "
                    f"{future_skew_us / MICROS_PER_SECOND:g} s allowed for clock skew), "
                    f"got {text}",
                )
            )
        times[name] = moment
    occurred, reported = times.get("occurred_at"), times.get("reported_at")
    if occurred is not None and reported is not None and occurred > reported:
        extra.append(
            FieldError(
                "occurred_at",
                f"expected a time at or before reported_at ({obj['reported_at']}), "
                f"got {obj['occurred_at']}",
            )
        )

    caller = obj.get("caller")
    if isinstance(caller, Mapping) and "caller.phone" not in rejected:
        phone = caller.get("phone")
        if isinstance(phone, str):
            try:
                normalise_phone(phone)
            except IdentityError as exc:
                extra.append(FieldError(exc.field, exc.reason))
    return _sorted_unique([*errors, *extra])


# --------------------------------------------------------------------------- decoding

#: Placeholders while a batch is decoded (compared by identity).
_PENDING = LookupError("not decoded yet")
_PLACE_FAILED = Place(math.nan, math.nan)


#: Integers beyond 64 bits have at least 19 digits: orjson reads them as floats, not ints.
#: Found by mapping every ASCII digit to "9" and every other byte to " " (``bytes.translate``
#: is C: a tenth of the cost of a regular expression's search, which cost more than parsing).
_DIGIT_RUNS = bytes(0x39 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_LONG_RUN = b"9" * 19


def loads_json(raw: bytes | str, **json_options: Any) -> Any:
    """``json.loads(raw, **json_options)``, by orjson (about 4 times faster) where that
    gives the same. orjson refuses a little that the standard library reads (NaN, numbers
    out of a double's range, lone surrogates: then ``json`` reads, or explains, as before),
    and reads integers beyond 64 bits as floats (a text with a run of 19 digits goes to
    ``json`` without trying). ``json_options`` (``parse_constant``…) apply only to what
    orjson refuses: NaN and Infinity are among those."""
    data = raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass")
    if _LONG_RUN not in data.translate(_DIGIT_RUNS):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    return json.loads(raw, **json_options)


def refuse_json_constant(name: str) -> Any:
    """``parse_constant`` for ``json.loads`` and :func:`loads_json`: NaN and Infinity are
    not JSON (RFC 8259), and PostgreSQL's JSON types refuse them."""
    raise ValueError(f"{name} is not valid JSON")


def dumps_json(obj: Any) -> bytes:
    """Compact UTF-8 JSON: the document ``json.dumps(obj, separators=(",", ":"),
    ensure_ascii=False)`` writes, by orjson (several times faster). The bytes may differ
    only in how a float is spelt (``1e-07`` or ``1e-7``), never in the value read back.
    What orjson refuses (integers beyond 64 bits, keys that are not strings) takes the
    ``json`` path. NaN and Infinity, which are not JSON, would become ``null``: ingest
    refuses them in what it reads."""
    try:
        return orjson.dumps(obj)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def decode_incident(raw: bytes | str) -> tuple[dict[str, Any], IncidentEvent]:
    """One ``asvat.incidents.v1`` message: its JSON object and the event.

    Raises ValueError, KeyError or TypeError for a message that is not a readable event.
    """
    data = loads_json(raw)
    if not isinstance(data, dict):
        raise TypeError(f"expected a JSON object, got {_json_type(data)}")
    return data, IncidentEvent.from_wire(data)


def decode_incidents(
    raws: Sequence[bytes | str],
) -> list[tuple[dict[str, Any], IncidentEvent] | Exception]:
    """:func:`decode_incident` of each message of a batch, in order, with WGS84 points
    converted to the grid in one call (``places_from_wire``): the same events, faster.

    A message that cannot be read gives its exception (ValueError, KeyError or TypeError,
    as :func:`decode_incident` raises) in its place; the others are unaffected.
    """
    results: list[tuple[dict[str, Any], IncidentEvent] | Exception] = []
    objects: list[tuple[int, dict[str, Any]]] = []
    for raw in raws:
        try:
            data = loads_json(raw)
            if not isinstance(data, dict):
                raise TypeError(f"expected a JSON object, got {_json_type(data)}")
        except (ValueError, TypeError) as exc:
            results.append(exc)
            continue
        objects.append((len(results), data))
        results.append(_PENDING)
    locations = []
    for _, data in objects:
        location = data.get("location")
        locations.append(location if isinstance(location, dict) else None)
    try:
        places = places_from_wire(locations)
    except (ValueError, KeyError, TypeError):
        # One bad location: make each place alone, so that only its event fails.
        places = [_PLACE_FAILED] * len(objects)
    for (index, data), place in zip(objects, places, strict=True):
        try:
            if place is _PLACE_FAILED:
                event = IncidentEvent.from_wire(data)
            else:
                event = IncidentEvent.from_wire_with_place(data, place)
        except (ValueError, KeyError, TypeError) as exc:
            results[index] = exc
            continue
        results[index] = (data, event)
    return results
