"""data.police.uk street-level crime CSV files as incident events (``--format police-uk``).

The published columns are ``Crime ID, Month, Reported by, Falls within, Longitude,
Latitude, Location, LSOA code, LSOA name, Crime type, Last outcome category, Context``.
Only rows whose ``Crime type`` is ``Anti-social behaviour`` become incidents; other rows
are counted as skipped. The data are published, anonymised open data: there is no caller,
and the point is already snapped by police.uk to a nearby map point.

Rules, so that a load is deterministic and a second load of the same file adds nothing:

* **Ids.** ``incident_id`` is ``PUK-`` and the first 20 hex digits of the SHA-256 of the
  row's line number and its cells (ASB rows carry no Crime ID); ``event_id`` is
  ``<incident_id>-0``, ``sequence`` 0, ``event_type`` ``opened``, ``source`` ``other``.
* **Time.** police.uk gives the month only. ``occurred_at`` is the start of the month (UTC)
  plus a number of seconds taken from the same hash (hex digits 20–32, modulo the seconds
  in the month): spread evenly over the month, the same on every load. ``reported_at`` is
  the same instant (no reporting delay is published).
* **Code.** The policy's first code of class ``asb`` with category ``nuisance`` (``ASBN`` in
  the default policy); ``ASBN`` if it has none (then the policy refuses it, by reason).
* **Place.** ``Latitude``/``Longitude``, with ``Location`` (e.g. ``On or near Palace
  Green``) as the address. A row with no point is rejected (field ``location``).
"""

from __future__ import annotations

import calendar
import hashlib
from datetime import UTC, datetime
from typing import Any

from asvat.contracts import FieldError
from asvat.domain.policy import Policy
from asvat.domain.timeutil import MICROS_PER_SECOND, format_timestamp
from services.ingest.sources.csv_mapping import MappingError, split_row
from services.ingest.submission import SourceError

COLUMNS = (
    "Crime ID",
    "Month",
    "Reported by",
    "Falls within",
    "Longitude",
    "Latitude",
    "Location",
    "LSOA code",
    "LSOA name",
    "Crime type",
    "Last outcome category",
    "Context",
)
ASB = "Anti-social behaviour"
DEFAULT_CODE = "ASBN"


def nuisance_code(policy: Policy | None) -> str:
    """The policy's first ASB nuisance code, else :data:`DEFAULT_CODE`."""
    if policy is not None:
        for code, meaning in policy.codes.items():
            if meaning.cls == "asb" and meaning.asb_category == "nuisance":
                return code
    return DEFAULT_CODE


class PoliceUkRows:
    """Rows of one police.uk file: the header checked once, then each row converted."""

    def __init__(self, code: str) -> None:
        self.code = code
        self.index: dict[str, int] = {}

    def header(self, text: str) -> None:
        names = [name.strip() for name in split_row(text, ",")]
        missing = [c for c in COLUMNS if c not in names]
        if missing:
            raise MappingError(
                f"line 1: not a police.uk street-level CSV header: no column "
                f"{', '.join(repr(c) for c in missing)}"
            )
        twice = [c for c in COLUMNS if names.count(c) > 1]
        if twice:
            raise MappingError(f"line 1: duplicate column(s) {', '.join(map(repr, twice))}")
        self.index = {c: names.index(c) for c in COLUMNS}
        self.width = len(names)

    def convert(self, text: str, line: int) -> tuple[dict[str, Any] | None, list[FieldError], bool]:
        """``(record, errors, skipped)``: skipped is True for a row that is not ASB."""
        cells = split_row(text, ",")
        if len(cells) != self.width:
            problem = f"expected {self.width} columns as in the header, got {len(cells)}"
            return None, [SourceError("(row)", problem, "bad_row")], False
        row = {c: cells[i].strip() for c, i in self.index.items()}
        if row["Crime type"] != ASB:
            return None, [], True
        digest = hashlib.sha256(
            "\0".join([str(line), *(row[c] for c in COLUMNS)]).encode("utf-8")
        ).hexdigest()
        incident_id = f"PUK-{digest[:20]}"
        record: dict[str, Any] = {
            "event_id": f"{incident_id}-0",
            "incident_id": incident_id,
            "sequence": 0,
            "event_type": "opened",
            "source": "other",
            "opening_code": self.code,
        }
        errors: list[FieldError] = []
        try:
            month = datetime.strptime(row["Month"], "%Y-%m").replace(tzinfo=UTC)
        except ValueError:
            errors.append(
                FieldError("Month", f"expected a month written YYYY-MM, got {row['Month']!r}")
            )
        else:
            seconds = calendar.monthrange(month.year, month.month)[1] * 86_400
            offset = int(digest[20:32], 16) % seconds
            at = format_timestamp((int(month.timestamp()) + offset) * MICROS_PER_SECOND)
            record["occurred_at"] = record["reported_at"] = at
        if not row["Longitude"] or not row["Latitude"]:
            errors.append(
                FieldError(
                    "location", "expected a point (Latitude and Longitude); the row has none"
                )
            )
        else:
            try:
                location: dict[str, Any] = {
                    "lat": float(row["Latitude"]),
                    "lon": float(row["Longitude"]),
                }
            except ValueError:
                errors.append(FieldError("location", "expected Latitude and Longitude as numbers"))
            else:
                if row["Location"]:
                    location["address"] = row["Location"][:500]
                record["location"] = location
        return record, errors, False
