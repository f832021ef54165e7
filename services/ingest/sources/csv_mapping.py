"""CSV exports as incident events, through a column-mapping YAML file.

The mapping names, for each field of ``incident.v1``, the CSV column that holds it (by
header name), or a constant. An example with every key: ``deploy/ingest/mapping.example.yaml``.

.. code-block:: yaml

    delimiter: ","                    # optional, default ","
    timestamp_format: "%d/%m/%Y %H:%M"  # optional strptime format; default: RFC 3339 as is
    timezone: Europe/London           # for times written without an offset (default UTC)
    list_separator: ";"               # for vulnerability (default ";")
    columns:                          # incident.v1 field -> CSV header
      incident_id: Log Number
      occurred_at: Occurred
      opening_code: Opening Code
      caller.phone: Caller Phone
      location.lat: Latitude
      location.lon: Longitude
    constants:                        # fields with one value for every row
      source: "101"
    values:                           # optional translation of cell values, per field
      event_type: {Open: opened, Closed: closed}

Fields not mapped take defaults: ``sequence`` 0, ``event_type`` ``opened``,
``reported_at`` = ``occurred_at``, ``source`` ``other``, and ``event_id``
``<incident_id>-<sequence>`` (deterministic, so loading a file twice adds nothing). An
empty cell is an absent field. One record per line: quoted fields may hold the delimiter
but not a line break.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from asvat.contracts import FieldError
from asvat.domain.timeutil import TimestampError, format_timestamp, parse_timestamp
from services.ingest.submission import SourceError

TARGETS = (
    "event_id",
    "incident_id",
    "sequence",
    "event_type",
    "occurred_at",
    "reported_at",
    "source",
    "opening_code",
    "closing_code",
    "caller.person_id",
    "caller.phone",
    "caller.name",
    "caller.date_of_birth",
    "caller.postcode",
    "location.lat",
    "location.lon",
    "location.easting",
    "location.northing",
    "location.uprn",
    "location.address",
    "vulnerability",
    "description",
)
_NUMBERS = frozenset({"location.lat", "location.lon", "location.easting", "location.northing"})
_TIMES = frozenset({"occurred_at", "reported_at"})


class MappingError(ValueError):
    """A mapping file, or a header, that cannot be used (the message says what and where)."""


@dataclass(frozen=True)
class CsvMapping:
    columns: dict[str, str]
    constants: dict[str, Any] = field(default_factory=dict)
    values: dict[str, dict[str, str]] = field(default_factory=dict)
    delimiter: str = ","
    timestamp_format: str | None = None
    timezone: str = "UTC"
    list_separator: str = ";"

    @classmethod
    def load(cls, path: Path) -> CsvMapping:
        try:
            document = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
            raise MappingError(f"{path}: cannot read the mapping: {exc}") from exc
        return cls.from_dict(document, str(path))

    @classmethod
    def from_dict(cls, document: Any, where: str = "mapping") -> CsvMapping:
        if not isinstance(document, Mapping):
            raise MappingError(f"{where}: expected a YAML mapping with a `columns` key")
        unknown = set(document) - {
            "columns",
            "constants",
            "values",
            "delimiter",
            "timestamp_format",
            "timezone",
            "list_separator",
        }
        if unknown:
            raise MappingError(f"{where}: unexpected key(s) {', '.join(sorted(unknown))}")
        columns = document.get("columns")
        if not isinstance(columns, Mapping) or not columns:
            raise MappingError(f"{where}: columns: expected a mapping of field: CSV header")
        constants = document.get("constants") or {}
        values = document.get("values") or {}
        for section, names in (("columns", columns), ("constants", constants), ("values", values)):
            if not isinstance(names, Mapping):
                raise MappingError(f"{where}: {section}: expected a mapping")
            for name in names:
                if name not in TARGETS:
                    raise MappingError(
                        f"{where}: {section}.{name}: not a field of incident.v1; expected one "
                        f"of {', '.join(TARGETS)}"
                    )
        for name, header in columns.items():
            if not isinstance(header, str) or not header:
                raise MappingError(f"{where}: columns.{name}: expected a CSV header name")
        headers = Counter(columns.values())
        twice = [h for h, n in headers.items() if n > 1]
        if twice:
            raise MappingError(f"{where}: columns: header(s) {twice} mapped to several fields")
        both = set(columns) & set(constants)
        if both:
            raise MappingError(f"{where}: {sorted(both)} given both as a column and a constant")
        given = set(columns) | set(constants)
        for needed in ("incident_id", "occurred_at", "opening_code"):
            if needed not in given:
                raise MappingError(f"{where}: columns.{needed}: required (a column or constant)")
        if not ({"location.lat", "location.lon"} <= given) and not (
            {"location.easting", "location.northing"} <= given
        ):
            raise MappingError(
                f"{where}: columns: expected location.lat and location.lon, or "
                "location.easting and location.northing"
            )
        timezone = str(document.get("timezone") or "UTC")
        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise MappingError(f"{where}: timezone: unknown time zone {timezone!r}") from exc
        delimiter = str(document.get("delimiter") or ",")
        if len(delimiter) != 1:
            raise MappingError(f"{where}: delimiter: expected one character, got {delimiter!r}")
        return cls(
            columns={str(k): str(v) for k, v in columns.items()},
            constants={str(k): v for k, v in constants.items()},
            values={
                str(k): {str(a): str(b) for a, b in dict(v).items()} for k, v in values.items()
            },
            delimiter=delimiter,
            timestamp_format=document.get("timestamp_format"),
            timezone=timezone,
            list_separator=str(document.get("list_separator") or ";"),
        )


def split_row(text: str, delimiter: str) -> list[str]:
    """One physical line as CSV cells."""
    return next(csv.reader([text], delimiter=delimiter, strict=False), [])


class CsvRows:
    """Rows of one CSV file under a mapping: check the header once, then convert rows."""

    def __init__(self, mapping: CsvMapping) -> None:
        self.mapping = mapping
        self.index: dict[str, int] = {}
        self.width = 0

    def header(self, text: str) -> None:
        """Check the header against the mapping (raises :class:`MappingError`)."""
        names = [name.strip() for name in split_row(text, self.mapping.delimiter)]
        self.width = len(names)
        counts = Counter(names)
        missing = [
            f"{header!r} (for {target})"
            for target, header in self.mapping.columns.items()
            if header not in counts
        ]
        if missing:
            raise MappingError(
                f"line 1: the header does not match the mapping: no column {', '.join(missing)}; "
                f"the header has {', '.join(repr(n) for n in names)}"
            )
        ambiguous = [h for h in self.mapping.columns.values() if counts[h] > 1]
        if ambiguous:
            raise MappingError(
                f"line 1: duplicate column(s) {', '.join(repr(h) for h in ambiguous)} in the "
                "header: the mapping cannot tell which to read"
            )
        self.index = {target: names.index(h) for target, h in self.mapping.columns.items()}

    def convert(self, text: str) -> tuple[dict[str, Any] | None, list[FieldError]]:
        """The incident record of one row, and what could not be converted."""
        cells = split_row(text, self.mapping.delimiter)
        if len(cells) != self.width:
            return None, [
                SourceError(
                    "(row)",
                    f"expected {self.width} columns as in the header, got {len(cells)}",
                    "bad_row",
                )
            ]
        values: dict[str, Any] = dict(self.mapping.constants)
        for target, position in self.index.items():
            cell = cells[position].strip()
            if cell:
                values[target] = self.mapping.values.get(target, {}).get(cell, cell)
        errors: list[FieldError] = []
        record: dict[str, Any] = {}
        for target, value in values.items():
            converted = self._value(target, value, errors)
            if converted is None:
                continue
            head, _, tail = target.partition(".")
            if tail:
                record.setdefault(head, {})[tail] = converted
            else:
                record[head] = converted
        record.setdefault("sequence", 0)
        record.setdefault("event_type", "opened")
        record.setdefault("source", "other")
        if "occurred_at" in record:
            record.setdefault("reported_at", record["occurred_at"])
        if "incident_id" in record:
            record.setdefault("event_id", f"{record['incident_id']}-{record['sequence']}")
        return record, errors

    def _value(self, target: str, value: Any, errors: list[FieldError]) -> Any:
        text = str(value)
        if target in _NUMBERS:
            try:
                return float(text)
            except ValueError:
                errors.append(FieldError(target, f"expected a number, got {_shown(text)}"))
                return None
        if target == "sequence":
            try:
                return int(text)
            except ValueError:
                errors.append(FieldError(target, f"expected a whole number, got {_shown(text)}"))
                return None
        if target in _TIMES:
            return self._time(target, text, errors)
        if target == "vulnerability":
            return [p.strip() for p in text.split(self.mapping.list_separator) if p.strip()]
        return text

    def _time(self, target: str, text: str, errors: list[FieldError]) -> str | None:
        mapping = self.mapping
        if mapping.timestamp_format is None:
            try:
                parse_timestamp(text)
            except TimestampError:
                if "T" not in text and "+" not in text and not text.endswith("Z"):
                    errors.append(
                        FieldError(
                            target,
                            f"expected an RFC 3339 time with an offset (or set timestamp_format "
                            f"in the mapping), got {_shown(text)}",
                        )
                    )
                    return None
            return text  # the contract names any remaining problem
        try:
            moment = datetime.strptime(text, mapping.timestamp_format)
        except ValueError:
            errors.append(
                FieldError(
                    target,
                    f"expected a time written {mapping.timestamp_format}, got {_shown(text)}",
                )
            )
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=ZoneInfo(mapping.timezone))
        return format_timestamp(int(moment.timestamp() * 1_000_000))


def _shown(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:37] + "...")
