"""Area statistics and hotspots.

``area_counts`` holds, for every district and ward and every day, ISO week and month (UK
local time, as forces report), the number of incidents by class, in scope, meeting a
rule, and escalations raised there. The consumer keeps it current in the same transaction
as the rows it counts, by the *difference* each write makes (an assessment re-issued with a
new class moves one count from the old class to the new), so a redelivered message changes
nothing and statistics are a read of a few hundred rows, however many incidents there are.
:func:`recount` rebuilds it from the rows (after a boundary change; tests compare both).
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import cache, lru_cache
from types import MappingProxyType
from typing import Any, Literal
from zoneinfo import ZoneInfo

from sqlalchemy import Table, delete, func, select, update
from sqlalchemy.orm import Session

from services.api import grid
from services.api.areas import UNASSIGNED, AreaIndex, Located, parse_location_key
from services.api.db import insert_on_conflict
from services.api.models import AreaCount, Assessment, DataVersion, Escalation

LOCAL = ZoneInfo("Europe/London")
AreaLevel = Literal["district", "ward"]
PeriodKind = Literal["day", "week", "month"]
AREA_LEVELS: tuple[AreaLevel, ...] = ("district", "ward")
PERIOD_KINDS: tuple[PeriodKind, ...] = ("day", "week", "month")
CLASSES = ("asb", "crime", "non_crime", "other", "cancelled")
COUNTS = ("incidents", "in_scope", *CLASSES, "repeats", "escalations")


@cache
def default_areas() -> AreaIndex:
    """The shipped boundaries (used when no index is passed, e.g. in tests)."""
    return AreaIndex.from_settings(None, None)


def periods(moment: datetime) -> Mapping[str, str]:
    """The day, ISO week and month of ``moment`` in UK local time."""
    # UK local time differs from UTC by whole hours, so the periods are those of the UTC
    # hour: remembered per hour (the consumer asks twice per stored assessment).
    return _periods_of_hour(moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0))


@lru_cache(maxsize=4096)
def _periods_of_hour(hour: datetime) -> Mapping[str, str]:
    local = hour.astimezone(LOCAL)
    year, week, _ = local.isocalendar()
    return MappingProxyType(
        {
            "day": local.strftime("%Y-%m-%d"),
            "week": f"{year:04d}-W{week:02d}",
            "month": local.strftime("%Y-%m"),
        }
    )


def period_of(day: date, kind: str) -> str:
    """The period key of kind ``kind`` holding ``day``."""
    if kind == "day":
        return day.isoformat()
    if kind == "month":
        return f"{day.year:04d}-{day.month:02d}"
    year, week, _ = day.isocalendar()
    return f"{year:04d}-W{week:02d}"


def grid_point(location_key: str | None) -> tuple[int, int] | None:
    return parse_location_key(location_key)


@dataclass(frozen=True, slots=True)
class AssessmentFacts:
    """What an assessment row contributes to the counts."""

    occurred_at: datetime
    classification: str
    in_scope: bool
    repeat: bool
    district_code: str
    ward_code: str

    @classmethod
    def of_row(cls, row: Any) -> AssessmentFacts:
        """From an Assessment or a row of its columns."""
        return cls(
            row.occurred_at,
            row.classification,
            bool(row.in_scope),
            bool(row.rules_met),
            row.district_code,
            row.ward_code,
        )

    @classmethod
    def of_dict(cls, row: Mapping[str, Any]) -> AssessmentFacts:
        return cls(
            row["occurred_at"],
            row["classification"],
            bool(row["in_scope"]),
            bool(row["rules_met"]),
            row["district_code"],
            row["ward_code"],
        )


#: The columns :meth:`AssessmentFacts.of_row` reads, in a query's select list.
FACT_COLUMNS = (
    Assessment.occurred_at,
    Assessment.classification,
    Assessment.in_scope,
    Assessment.rules_met,
    Assessment.district_code,
    Assessment.ward_code,
)

Key = tuple[str, str, str, str]  # area_level, period_kind, period, area_code


class Deltas:
    """Count changes collected over a transaction, written at once in key order (so two
    writers lock the same rows in the same order and never deadlock)."""

    def __init__(self) -> None:
        self.changes: dict[Key, dict[str, int]] = defaultdict(lambda: dict.fromkeys(COUNTS, 0))

    def _add(self, moment: datetime, district: str, ward: str, counts: dict[str, int]) -> None:
        for kind, period in periods(moment).items():
            for level, code in (("district", district), ("ward", ward)):
                target = self.changes[(level, kind, period, code)]
                for name, n in counts.items():
                    target[name] += n

    def add_assessment(self, facts: AssessmentFacts, sign: int) -> None:
        counts = {"incidents": sign, "in_scope": sign if facts.in_scope else 0}
        if facts.classification in CLASSES:
            counts[facts.classification] = sign
        if facts.repeat:
            counts["repeats"] = sign
        self._add(facts.occurred_at, facts.district_code, facts.ward_code, counts)

    def add_escalation(self, raised_at: datetime, district: str, ward: str, sign: int) -> None:
        self._add(raised_at, district, ward, {"escalations": sign})

    def write(self, session: Session) -> None:
        rows = [
            {
                "area_level": key[0],
                "period_kind": key[1],
                "period": key[2],
                "area_code": key[3],
                **counts,
            }
            for key, counts in sorted(self.changes.items())
            if any(counts.values())
        ]
        self.changes.clear()
        if not rows:
            return
        session.execute(_area_counts_upsert(session.get_bind().dialect.name), rows)
        bump_version(session)


@lru_cache(maxsize=4)
def _area_counts_upsert(dialect: str) -> Any:
    """INSERT … ON CONFLICT DO UPDATE adding to the counts. Built once: building it cost
    more per transaction than running it when the live feed comes a few messages a batch."""
    table: Table = AreaCount.__table__  # type: ignore[assignment]
    insert = insert_on_conflict(dialect, table)
    if insert is None:
        raise ValueError(f"area counts need INSERT … ON CONFLICT, which {dialect} lacks "
                         "(use SQLite or PostgreSQL)")
    return insert.on_conflict_do_update(
        index_elements=["area_level", "period_kind", "period", "area_code"],
        set_={name: table.c[name] + insert.excluded[name] for name in COUNTS},
    )


_BUMP_VERSION = (
    update(DataVersion)
    .where(DataVersion.name == "area_counts")
    .values(version=DataVersion.version + 1)
)


def bump_version(session: Session) -> None:
    """Note that ``area_counts`` changed (in the same transaction as the change)."""
    session.execute(_BUMP_VERSION)


def counts_version(session: Session) -> int:
    """The version of ``area_counts``: answers made from it may be reused until it moves."""
    return int(
        session.scalar(select(DataVersion.version).where(DataVersion.name == "area_counts"))
        or 0
    )


def recount(session: Session) -> int:
    """Rebuild ``area_counts`` from the assessments and escalations; returns rows written."""
    session.execute(delete(AreaCount))
    bump_version(session)
    deltas = Deltas()
    for row in session.execute(select(*FACT_COLUMNS)):
        deltas.add_assessment(AssessmentFacts.of_row(row), +1)
    for raised_at, district, ward in session.execute(
        select(Escalation.raised_at, Escalation.district_code, Escalation.ward_code)
    ):
        deltas.add_escalation(raised_at, district, ward, +1)
    written = len(deltas.changes)
    deltas.write(session)
    return written


def place_columns(where: Located) -> dict[str, Any]:
    """The columns an assessment's place is stored in, its grid cell with its point: every
    write of a point goes through here, so that radius scans (by cell) see every row."""
    return {
        "easting": where.easting,
        "northing": where.northing,
        "lat": where.lat,
        "lon": where.lon,
        "grid_cell": grid.cell_of(where.easting, where.northing),
        "district_code": where.district_code,
        "ward_code": where.ward_code,
    }


def locate_unplaced(session: Session, areas: AreaIndex, batch: int = 2000) -> int:
    """Place assessments stored before places were kept (grid key, no point), then recount.

    Returns how many were placed; 0 (and no recount) when there were none.
    """
    placed = 0
    while True:
        rows = session.execute(
            select(Assessment.incident_id, Assessment.location_key)
            .where(Assessment.easting.is_(None), Assessment.location_key.like("bng:%"))
            .limit(batch)
        ).all()
        if not rows:
            break
        for (incident_id, _), where in zip(
            rows, areas.locate_keys([r.location_key for r in rows]), strict=True
        ):
            session.execute(
                update(Assessment)
                .where(Assessment.incident_id == incident_id)
                .values(place_columns(where))
            )
        placed += len(rows)
    if placed:
        recount(session)
    return placed


# -- reading ----------------------------------------------------------------------------


def area_statistics(
    *,
    session: Session,
    areas: AreaIndex,
    level: AreaLevel,
    period: PeriodKind,
    start: date,
    end: date,
    district: str | None = None,
) -> list[dict[str, Any]]:
    """Counts per area and period for the periods holding ``start`` to ``end`` (inclusive),
    in period then area order. Only areas and periods with something counted are listed."""
    table = AreaCount.__table__
    columns = [table.c.period, table.c.area_code, *(table.c[name] for name in COUNTS)]
    query = select(*columns).where(
        table.c.area_level == level,
        table.c.period_kind == period,
        table.c.period >= period_of(start, period),
        table.c.period <= period_of(end, period),
    )
    if district is not None:
        if level == "district":
            query = query.where(table.c.area_code == district)
        else:
            wards = [a.code for a in areas.wards.areas if a.district_code == district]
            query = query.where(table.c.area_code.in_(wards))
    names = {code: areas.name(level, code) for code in {*areas.codes(level), UNASSIGNED}}
    ward_district = {a.code: a.district_code for a in areas.wards.areas}
    out = []
    # Plain rows, not ORM objects: a year of wards by week is thousands of rows.
    for row in session.execute(query.order_by(table.c.period, table.c.area_code)):
        period_key, code, *counts = row
        if not any(counts):
            continue
        item: dict[str, Any] = {
            "period": period_key,
            "area_level": level,
            "area_code": code,
            "area_name": names.get(code) or areas.name(level, code),
        }
        if level == "ward":
            item["district_code"] = ward_district.get(code)
        item.update(zip(COUNTS, counts, strict=True))
        out.append(item)
    return out


def as_csv(rows: Iterable[Mapping[str, Any]], columns: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    return buffer.getvalue()


def hotspots(
    *,
    session: Session,
    areas: AreaIndex,
    start: datetime,
    end: datetime,
    cell_m: int,
    min_incidents: int,
    district: str | None = None,
    in_scope_only: bool = True,
    limit: int = 200,
) -> dict[str, Any]:
    """Grid cells of ``cell_m`` metres holding at least ``min_incidents`` incidents that
    occurred in [start, end), busiest first, as a GeoJSON FeatureCollection of cell centres."""
    from asvat.domain.location import Place

    cell_e = (Assessment.easting // cell_m).label("cell_e")
    cell_n = (Assessment.northing // cell_m).label("cell_n")
    count = func.count().label("incidents")
    query = (
        select(cell_e, cell_n, count)
        .where(
            Assessment.occurred_at >= start,
            Assessment.occurred_at < end,
            Assessment.easting.is_not(None),
        )
        .group_by(cell_e, cell_n)
        .having(func.count() >= min_incidents)
        .order_by(count.desc(), cell_e, cell_n)
        .limit(limit)
    )
    if in_scope_only:
        query = query.where(Assessment.in_scope.is_(True))
    if district is not None:
        query = query.where(Assessment.district_code == district)
    features = []
    cells = session.execute(query).all()
    centres = [
        Place((int(c.cell_e) + 0.5) * cell_m, (int(c.cell_n) + 0.5) * cell_m).to_wgs84()
        for c in cells
    ]
    located = areas.locate_points(centres) if centres else []
    for cell, (lat, lon), (district_code, ward_code) in zip(cells, centres, located, strict=True):
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": [round(lon, 6), round(lat, 6)]},
                "properties": {
                    "incidents": int(cell.incidents),
                    "cell_m": cell_m,
                    "cell": f"{int(cell.cell_e) * cell_m}:{int(cell.cell_n) * cell_m}",
                    "district": district_code,
                    "ward": ward_code,
                },
            }
        )
    return {
        "type": "FeatureCollection",
        "features": features,
        "properties": {
            "from": start.isoformat(),
            "to": end.isoformat(),
            "cell_m": cell_m,
            "min_incidents": min_incidents,
        },
    }


def default_range(today: date, days: int = 365) -> tuple[date, date]:
    return today - timedelta(days=days), today
