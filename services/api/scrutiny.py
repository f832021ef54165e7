"""Scrutiny reporting: the numbers a public performance meeting reviews, by district or
ward and month or quarter (UK time), as rows (JSON, CSV) and as charts (SVG drawn here).

Per area and period:

* incidents by class (``asb``, ``crime``, ``non_crime``, ``other``) and ASB category
  (``asb_personal``, ``asb_nuisance``, ``asb_environmental``), by occurrence time;
* ``repeat_victims`` / ``repeat_locations``: distinct victims (places) with an incident in
  the period that met a victim (location) rule;
* escalations raised by level (``escalations_high`` …, ``escalations_unrated``), and for
  those acknowledged the median and mean hours from raised to acknowledged;
* ``case_reviews``: distinct victims whose incident in the period met the case review
  threshold; ``integrity_flagged``: incidents whose current assessment carries an
  integrity flag (awaiting correction; corrections themselves are counted by the
  recording-quality report, which sees every version of an incident);
* plans opened in the period and, of the plans closed in it, each outcome.

Rows come first for every area and period with something counted, then the force as a
whole (``area_code`` ``all``). Periods use :func:`services.api.statistics.periods`.
"""

from __future__ import annotations

import statistics as stats
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime, time, timedelta
from functools import cache
from html import escape
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from asvat import charts
from asvat.domain.plans import OUTCOMES
from services.api import statistics
from services.api.areas import AreaIndex
from services.api.models import Assessment, Escalation, Plan

Period = Literal["month", "quarter"]
ALL = "all"
CLASSES = ("asb", "crime", "non_crime", "other")
CATEGORIES = ("personal", "nuisance", "environmental")
LEVELS = ("high", "medium", "standard", "unrated")
COUNTS = (
    "incidents",
    *CLASSES,
    *(f"asb_{c}" for c in CATEGORIES),
    "repeat_victims",
    "repeat_locations",
    *(f"escalations_{lv}" for lv in LEVELS),
    "acknowledged",
    "case_reviews",
    "integrity_flagged",
    "plans_opened",
    "plans_closed",
    *(f"outcome_{o}" for o in OUTCOMES),
)
COLUMNS = [
    "period",
    "area_level",
    "area_code",
    "area_name",
    *COUNTS,
    "ack_hours_median",
    "ack_hours_mean",
]


@cache
def _rule_subjects() -> dict[str, str]:
    from asvat.domain.policy import default_policy

    return {r.id: r.subject for r in default_policy().rules}


def rule_subject(rule_id: str) -> str | None:
    """victim or location for a rule of the shipped policy (else guessed from its name)."""
    known = _rule_subjects().get(rule_id)
    if known:
        return known
    for subject in ("victim", "location"):
        if rule_id.startswith(subject):
            return subject
    return None


def period_key(moment: datetime, period: Period) -> str:
    month = statistics.periods(moment)["month"]
    if period == "month":
        return month
    year, number = month.split("-")
    return f"{year}-Q{(int(number) - 1) // 3 + 1}"


def bounds(start: date, end: date) -> tuple[datetime, datetime]:
    """UK-local midnight of ``start`` to the midnight after ``end``."""
    return (
        datetime.combine(start, time(), tzinfo=statistics.LOCAL),
        datetime.combine(end + timedelta(days=1), time(), tzinfo=statistics.LOCAL),
    )


class _Cell:
    __slots__ = ("ack_hours", "counts", "locations", "reviews", "victims")

    def __init__(self) -> None:
        self.counts: dict[str, int] = dict.fromkeys(COUNTS, 0)
        self.victims: set[str] = set()
        self.locations: set[str] = set()
        self.reviews: set[str] = set()
        self.ack_hours: list[float] = []


def scrutiny(
    *,
    session: Session,
    areas: AreaIndex,
    level: Literal["district", "ward"],
    period: Period,
    start: date,
    end: date,
    district: str | None = None,
) -> list[dict[str, Any]]:
    """The rows of the module docstring for occurrences (raises, openings) in
    ``[start, end]`` (UK dates), ordered by period, then area (force-wide last)."""
    first, last = bounds(start, end)
    cells: dict[tuple[str, str], _Cell] = defaultdict(_Cell)

    def targets(moment: datetime, district_code: str, ward_code: str) -> list[_Cell]:
        if district is not None and district_code != district:
            return []
        key = period_key(moment, period)
        code = district_code if level == "district" else ward_code
        return [cells[(key, code)], cells[(key, ALL)]]

    rows = session.execute(
        select(
            Assessment.occurred_at,
            Assessment.district_code,
            Assessment.ward_code,
            Assessment.classification,
            Assessment.rules_met,
            Assessment.victim_key,
            Assessment.location_key,
            Assessment.case_review_threshold_met,
            Assessment.integrity_flag_count,
            Assessment.payload["asb_category"].as_string(),
        ).where(Assessment.occurred_at >= first, Assessment.occurred_at < last)
    )
    for occurred, d, w, cls, met, victim, place, review, flags, category in rows:
        subjects = {rule_subject(r) for r in met or ()}
        for cell in targets(occurred, d, w):
            counts = cell.counts
            counts["incidents"] += 1
            counts[cls if cls in CLASSES else "other"] += 1
            if cls == "asb" and category in CATEGORIES:
                counts[f"asb_{category}"] += 1
            if victim and "victim" in subjects:
                cell.victims.add(victim)
            if place and "location" in subjects:
                cell.locations.add(place)
            if victim and review:
                cell.reviews.add(victim)
            counts["integrity_flagged"] += flags > 0
    escalations = session.execute(
        select(
            Escalation.raised_at,
            Escalation.district_code,
            Escalation.ward_code,
            Escalation.level,
            Escalation.acknowledged_at,
        ).where(Escalation.raised_at >= first, Escalation.raised_at < last)
    )
    for raised, d, w, lv, acknowledged in escalations:
        for cell in targets(raised, d, w):
            cell.counts[f"escalations_{lv if lv in LEVELS else 'unrated'}"] += 1
            if acknowledged is not None:
                cell.counts["acknowledged"] += 1
                cell.ack_hours.append((acknowledged - raised).total_seconds() / 3600)
    plan_rows = session.execute(
        select(
            Plan.opened_at, Plan.closed_at, Plan.outcome, Plan.district_code, Plan.ward_code
        ).where(
            ((Plan.opened_at >= first) & (Plan.opened_at < last))
            | ((Plan.closed_at >= first) & (Plan.closed_at < last))
        )
    )
    for opened, closed, outcome, d, w in plan_rows:
        if first <= opened < last:
            for cell in targets(opened, d, w):
                cell.counts["plans_opened"] += 1
        if closed is not None and first <= closed < last:
            for cell in targets(closed, d, w):
                cell.counts["plans_closed"] += 1
                if outcome in OUTCOMES:
                    cell.counts[f"outcome_{outcome}"] += 1
    names = {code: areas.name(level, code) for code in {*areas.codes(level)}}
    out = []
    order = sorted(cells, key=lambda k: (k[0], k[1] == ALL, k[1]))
    for key in order:
        cell = cells[key]
        cell.counts["repeat_victims"] = len(cell.victims)
        cell.counts["repeat_locations"] = len(cell.locations)
        cell.counts["case_reviews"] = len(cell.reviews)
        hours = cell.ack_hours
        out.append(
            {
                "period": key[0],
                "area_level": level,
                "area_code": key[1],
                "area_name": "Force area" if key[1] == ALL else names.get(key[1], key[1]),
                **cell.counts,
                "ack_hours_median": round(stats.median(hours), 2) if hours else None,
                "ack_hours_mean": round(stats.fmean(hours), 2) if hours else None,
            }
        )
    return out


def as_csv(rows: Iterable[Mapping[str, Any]]) -> str:
    return statistics.as_csv(
        ({k: ("" if v is None else v) for k, v in r.items()} for r in rows), COLUMNS
    )


# -- charts -------------------------------------------------------------------------------


def chart_set(rows: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """SVG charts of the force-wide rows over periods, and of the areas over the range."""
    force = [r for r in rows if r["area_code"] == ALL]
    periods = [r["period"] for r in force]

    def series(*names: str, label: Mapping[str, str] | None = None) -> dict[str, list[float]]:
        return {
            (label or {}).get(n, n.replace("_", " ")): [float(r[n] or 0) for r in force]
            for n in names
        }

    areas = [r for r in rows if r["area_code"] != ALL]
    totals: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for r in areas:
        for name in ("incidents", "repeat_victims", "repeat_locations"):
            totals[str(r["area_name"])][name] += float(r[name])
    area_names = sorted(totals)
    return {
        "incidents": charts.bar_chart(
            "Incidents by class", periods, series(*CLASSES, label={"non_crime": "non-crime"})
        ),
        "asb-categories": charts.bar_chart(
            "ASB incidents by category", periods, series(*(f"asb_{c}" for c in CATEGORIES))
        ),
        "repeats": charts.line_chart(
            "Repeat victims and repeat locations",
            periods,
            series("repeat_victims", "repeat_locations"),
        ),
        "escalations": charts.bar_chart(
            "Escalations raised by level", periods, series(*(f"escalations_{lv}" for lv in LEVELS))
        ),
        "acknowledge": charts.line_chart(
            "Hours from escalation to acknowledgement (median)",
            periods,
            series("ack_hours_median"),
        ),
        "reviews-integrity": charts.bar_chart(
            "Case reviews due and integrity flags",
            periods,
            series("case_reviews", "integrity_flagged"),
        ),
        "plans": charts.bar_chart(
            "Problem-solving plans opened and their outcomes",
            periods,
            series("plans_opened", *(f"outcome_{o}" for o in OUTCOMES)),
        ),
        "areas": charts.bar_chart(
            "Incidents and repeats by area (whole range)",
            area_names,
            {
                n.replace("_", " "): [totals[a][n] for a in area_names]
                for n in ("incidents", "repeat_victims", "repeat_locations")
            },
        ),
    }


def charts_page(rows: Sequence[Mapping[str, Any]], *, title: str) -> str:
    """A self-contained HTML page: the charts and the force-wide table, no scripts."""
    force = [r for r in rows if r["area_code"] == ALL]
    shown = ["period", *COUNTS, "ack_hours_median"]
    table = ["<table><tr>" + "".join(f"<th>{escape(c.replace('_', ' '))}</th>" for c in shown)]
    for r in force:
        cells = "".join(f"<td>{escape('' if r[c] is None else str(r[c]))}</td>" for c in shown)
        table.append(f"<tr>{cells}</tr>")
    table.append("</table>")
    figures = "".join(f"<figure id='chart-{k}'>{v}</figure>" for k, v in chart_set(rows).items())
    return (
        "<!doctype html><html lang='en-GB'><head><meta charset='utf-8'>"
        f"<title>{escape(title)}</title><style>body{{font-family:sans-serif;margin:1em}}"
        "figure{display:inline-block;margin:.5em}table{border-collapse:collapse;"
        "font-size:12px}td,th{border:1px solid #999;padding:2px 4px}</style></head><body>"
        f"<h1>{escape(title)}</h1>{figures}<h2>Force area</h2>{''.join(table)}</body></html>"
    )
