"""Problem-solving plans in the SARA form: scanning, analysis, response, assessment.

HMICFRS (2024) found plans that lacked detail, were not supervised and were never
evaluated. The rules here make each of those a precondition:

* a plan cannot be **submitted** for supervision until it fully specifies the problem
  (:func:`missing_fields`: a problem statement, an analysis, at least one response with an
  owner and a date, and a success measure), and once submitted an edit may not make it
  incomplete again;
* only a **supervisor** signs it off (and records later reviews, each with the next date);
* it cannot be **closed** without an outcome (:data:`OUTCOMES`) and a written evaluation;
  the place's or victim's incidents are then counted over equal periods before and after
  it opened (:func:`before_after`).

The state machine (:func:`transition`) is ``draft → submitted → signed_off → closed``; a
supervisor may return a submitted plan to draft. Pure: no HTTP, no database.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Literal

PlanStatus = Literal["draft", "submitted", "signed_off", "closed"]
PlanAction = Literal["update", "submit", "return", "sign_off", "close"]
STATUSES: tuple[str, ...] = ("draft", "submitted", "signed_off", "closed")
OUTCOMES: tuple[str, ...] = ("resolved", "reduced", "displaced", "no_change")
#: Roles in increasing order of what they may do (as asvat.auth).
_ROLE_ORDER = ("viewer", "operator", "supervisor", "admin")
#: Who may take each action, and from which states.
_ALLOWED: dict[str, tuple[str, tuple[str, ...]]] = {
    "update": ("operator", ("draft", "submitted", "signed_off")),
    "submit": ("operator", ("draft",)),
    "return": ("supervisor", ("submitted",)),
    "sign_off": ("supervisor", ("submitted", "signed_off")),
    "close": ("supervisor", ("signed_off",)),
}
_NEXT: dict[str, str | None] = {
    "update": None,  # stays where it is
    "submit": "submitted",
    "return": "draft",
    "sign_off": "signed_off",
    "close": "closed",
}
DEFAULT_REVIEW_DAYS = 28


class PlanRefused(ValueError):
    """An action the plan's state or content does not allow.

    ``kind``: ``incomplete`` (fields missing: ``missing`` names them), ``forbidden`` (the
    role may not), ``conflict`` (not in this state).
    """

    def __init__(
        self,
        kind: Literal["incomplete", "forbidden", "conflict"],
        message: str,
        missing: Sequence[str] = (),
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.missing = list(missing)


def _blank(value: Any) -> bool:
    return not isinstance(value, str) or not value.strip()


def missing_fields(plan: Mapping[str, Any]) -> list[str]:
    """The fields a plan still lacks before it may be submitted (empty: complete).

    ``responses`` must hold at least one item, and every item needs ``action``, ``owner``
    and ``due_date`` (an ISO date); missing parts are named ``responses[i].owner`` etc.
    """
    missing = [name for name in ("problem_statement", "analysis") if _blank(plan.get(name))]
    responses = plan.get("responses")
    if not isinstance(responses, list) or not responses:
        missing.append("responses")
    else:
        for index, item in enumerate(responses):
            item = item if isinstance(item, Mapping) else {}
            for part in ("action", "owner"):
                if _blank(item.get(part)):
                    missing.append(f"responses[{index}].{part}")
            if not _is_date(item.get("due_date")):
                missing.append(f"responses[{index}].due_date")
    if _blank(plan.get("success_measure")):
        missing.append("success_measure")
    return missing


def _is_date(value: Any) -> bool:
    if isinstance(value, date):
        return True
    if not isinstance(value, str):
        return False
    try:
        date.fromisoformat(value)
    except ValueError:
        return False
    return True


def role_allows(role: str, needed: str) -> bool:
    if role not in _ROLE_ORDER:
        return False
    return _ROLE_ORDER.index(role) >= _ROLE_ORDER.index(needed)


def transition(
    status: str,
    action: PlanAction,
    *,
    role: str,
    plan: Mapping[str, Any],
    outcome: str | None = None,
    evaluation: str | None = None,
) -> str:
    """The status after ``action`` by a token of ``role``, or :class:`PlanRefused`."""
    needed, states = _ALLOWED[action]
    if not role_allows(role, needed):
        raise PlanRefused(
            "forbidden", f"only a {needed} (or above) may {action.replace('_', ' ')} a plan"
        )
    if status not in states:
        raise PlanRefused(
            "conflict",
            f"a {status.replace('_', ' ')} plan cannot be {_PAST[action]} "
            f"(only when {' or '.join(s.replace('_', ' ') for s in states)})",
        )
    if action == "submit" or (action == "update" and status != "draft"):
        # a submitted or signed-off plan stays complete: edits may not empty it again
        missing = missing_fields(plan)
        if missing:
            raise PlanRefused(
                "incomplete",
                "the plan does not yet fully specify the problem; missing: " + ", ".join(missing),
                missing,
            )
    if action == "close":
        missing = []
        if outcome not in OUTCOMES:
            missing.append("outcome")
        if _blank(evaluation):
            missing.append("evaluation")
        if missing:
            raise PlanRefused(
                "incomplete",
                f"closing needs an outcome ({', '.join(OUTCOMES)}) and a written evaluation; "
                "missing: " + ", ".join(missing),
                missing,
            )
    return _NEXT[action] or status


_PAST = {
    "update": "updated",
    "submit": "submitted",
    "return": "returned",
    "sign_off": "signed off",
    "close": "closed",
}


# -- before and after ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BeforeAfter:
    """Incidents in the plan's open period and in the equal period just before it opened."""

    before_start: datetime
    opened_at: datetime
    closed_at: datetime
    before: int
    after: int

    @property
    def change(self) -> int:
        return self.after - self.before

    def content(self) -> dict[str, Any]:
        return {
            "before_from": self.before_start.isoformat(),
            "opened_at": self.opened_at.isoformat(),
            "closed_at": self.closed_at.isoformat(),
            "period_days": round((self.closed_at - self.opened_at).total_seconds() / 86400, 2),
            "before": self.before,
            "after": self.after,
            "change": self.change,
        }


def comparison_window(opened_at: datetime, closed_at: datetime) -> tuple[datetime, datetime]:
    """``(before_start, closed_at)``: the before period is ``[before_start, opened_at)`` and as
    long as the open period ``[opened_at, closed_at)``."""
    if closed_at < opened_at:
        raise ValueError("a plan cannot close before it opened")
    return opened_at - (closed_at - opened_at), closed_at


def before_after(
    occurred: Iterable[datetime], *, opened_at: datetime, closed_at: datetime
) -> BeforeAfter:
    """Count incident times in ``[opened − (closed − opened), opened)`` and
    ``[opened, closed)``; times outside both are ignored."""
    before_start, _ = comparison_window(opened_at, closed_at)
    before = after = 0
    for moment in occurred:
        if before_start <= moment < opened_at:
            before += 1
        elif opened_at <= moment < closed_at:
            after += 1
    return BeforeAfter(before_start, opened_at, closed_at, before, after)


# -- overdue ------------------------------------------------------------------------------


def attention(plan: Mapping[str, Any], *, now: datetime) -> list[str]:
    """Why a plan needs attention (for the report): ``missing_detail`` (a draft that could
    not yet be submitted), ``awaiting_supervision`` (submitted, not signed off),
    ``overdue_for_evaluation`` (signed off, its review or evaluation date passed)."""
    status = plan.get("status")
    reasons = []
    if status == "draft" and missing_fields(plan):
        reasons.append("missing_detail")
    if status == "submitted":
        reasons.append("awaiting_supervision")
    if status == "signed_off":
        due = [d for d in (plan.get("review_due_at"), plan.get("evaluation_due")) if d]
        if any(_as_datetime(d, now) < now for d in due):
            reasons.append("overdue_for_evaluation")
    return reasons


def _as_datetime(value: Any, like: datetime) -> datetime:
    if isinstance(value, datetime):
        return value
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=like.tzinfo) + timedelta(
            days=1
        )  # a date is due by its end
    text = str(value)
    if len(text) == 10:
        return _as_datetime(date.fromisoformat(text), like)
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=like.tzinfo)


# -- scanning: a map extract --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MapPoint:
    easting: float
    northing: float
    label: str


def map_extract_svg(
    points: Sequence[MapPoint],
    *,
    centre: tuple[float, float] | None = None,
    radius_m: float | None = None,
    size: int = 320,
) -> str:
    """A small SVG of incident points on British National Grid metres (north up), with the
    rule's radius around ``centre`` and a scale bar. Drawn locally: no map tiles."""
    xs = [p.easting for p in points] + ([centre[0]] if centre else [])
    ys = [p.northing for p in points] + ([centre[1]] if centre else [])
    if not xs:
        return (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size}" '
            f'viewBox="0 0 {size} {size}"><text x="10" y="20">no located incidents</text></svg>'
        )
    reach = radius_m or 0.0
    if centre:
        span = max(max(abs(x - centre[0]) for x in xs), max(abs(y - centre[1]) for y in ys), reach)
        cx, cy = centre
    else:
        cx, cy = (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2
        span = max(max(xs) - min(xs), max(ys) - min(ys)) / 2
    span = max(span * 1.2, 50.0)
    scale = (size / 2 - 10) / span

    def at(x: float, y: float) -> tuple[float, float]:
        return size / 2 + (x - cx) * scale, size / 2 - (y - cy) * scale

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size}" '
        f'viewBox="0 0 {size} {size}" role="img" aria-label="map extract: '
        f'{len(points)} incidents">',
        f'<rect width="{size}" height="{size}" fill="#f4f4f0" stroke="#888"/>',
    ]
    if centre and radius_m:
        x, y = at(*centre)
        parts.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{radius_m * scale:.1f}" fill="none" '
            'stroke="#1d70b8" stroke-dasharray="4 3"/>'
        )
    for point in points:
        x, y = at(point.easting, point.northing)
        parts.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="#d4351c" fill-opacity="0.7">'
            f"<title>{_escape(point.label)}</title></circle>"
        )
    bar = _nice_length(span / 2)
    parts.append(
        f'<line x1="10" y1="{size - 12}" x2="{10 + bar * scale:.1f}" y2="{size - 12}" '
        'stroke="#000" stroke-width="2"/>'
        f'<text x="10" y="{size - 16}" font-size="10">{bar:g} m</text>'
        f'<text x="{size - 14}" y="16" font-size="12">N</text></svg>'
    )
    return "".join(parts)


def _nice_length(metres: float) -> float:
    for step in (10, 20, 50, 100, 200, 500, 1000, 2000, 5000):
        if step >= metres:
            return float(step)
    return 10000.0


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
