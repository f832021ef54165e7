"""Event time: RFC 3339 timestamps with an offset, and policy durations.

Times inside the domain are integers: microseconds since the Unix epoch (UTC). Integers
make window boundaries exact ("exactly 28 days apart" is an equality, not a float
comparison).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Generic, TypeVar

MICROS_PER_SECOND = 1_000_000
#: One day in microseconds.
DAY_MICROS = 86_400 * MICROS_PER_SECOND

T = TypeVar("T")

_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$"
)
#: Whole seconds with "Z" or "+hh:mm": fromisoformat reads these exactly as RFC 3339 does.
_PLAIN = re.compile(
    r"^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])T([01]\d|2[0-3]):[0-5]\d:[0-5]\d(Z|[+-]\d{2}:\d{2})$"
)
_EXPECTED_TIMESTAMP = (
    "expected an RFC 3339 timestamp with an offset such as "
    "'2024-03-01T21:15:00Z' or '2024-03-01T22:15:00+01:00'"
)
_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class TimestampError(ValueError):
    """A timestamp that is not RFC 3339 with an explicit offset."""


def parse_timestamp(text: object) -> int:
    """Parse an RFC 3339 timestamp that carries an offset (``Z`` or ``±hh:mm``).

    Returns microseconds since the epoch. Fractions beyond microseconds are truncated.
    """
    if not isinstance(text, str):
        raise TimestampError(_EXPECTED_TIMESTAMP + f", got {text!r}")
    # Fast path for the common shape: whole seconds, "Z" or "+hh:mm".
    if len(text) in (20, 25) and _PLAIN.match(text):
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            pass  # e.g. 30 February or offset +25:00: the full path below says why
        else:
            delta = moment - _EPOCH
            return (delta.days * 86400 + delta.seconds) * MICROS_PER_SECOND + delta.microseconds
    if not _RFC3339.match(text):
        raise TimestampError(_EXPECTED_TIMESTAMP + f", got {text!r}")
    normalised = text.replace("z", "Z").replace("t", "T")
    if normalised.endswith("Z"):
        normalised = normalised[:-1] + "+00:00"
    match = re.match(r"^(.*?)(\.\d+)?([+-]\d{2}:\d{2})$", normalised)
    assert match is not None  # guaranteed by _RFC3339
    head, fraction, offset = match.groups()
    if fraction:
        normalised = f"{head}.{(fraction[1:] + '000000')[:6]}{offset}"
    try:
        moment = datetime.fromisoformat(normalised)
    except ValueError as exc:  # e.g. month 13
        raise TimestampError(f"not a valid date and time: {text!r} ({exc})") from exc
    delta = moment - _EPOCH
    return (delta.days * 86400 + delta.seconds) * MICROS_PER_SECOND + delta.microseconds


def format_timestamp(micros: int) -> str:
    """Render epoch microseconds as RFC 3339 in UTC (``Z``)."""
    seconds, fraction = divmod(micros, MICROS_PER_SECOND)
    moment = datetime.fromtimestamp(seconds, tz=UTC)
    # Not strftime("%Y"): glibc does not zero-pad years before 1000 ("999-06-01...").
    text = (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"
        f"T{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}"
    )
    if fraction:
        text += f".{fraction:06d}".rstrip("0")
    return text + "Z"


def parse_duration(text: str) -> int:
    """Parse a policy duration (``90s``, ``15m``, ``4h``, ``28d``, ``2w``) to microseconds."""
    match = _DURATION.match(str(text))
    if not match:
        raise ValueError(
            f"expected a duration: a whole number followed by s, m, h, d or w (e.g. '28d'), "
            f"got {text!r}"
        )
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)] * MICROS_PER_SECOND


def now_micros() -> int:
    """Wall-clock time in epoch microseconds (adapters only; the engine never reads a clock)."""
    return int(datetime.now(tz=UTC).timestamp() * MICROS_PER_SECOND)


class DayIndex(Generic[T]):
    """Items by the UTC day of a time, so that the items of times before a horizon are
    found by reading only the days the horizon has passed, not every item kept.

    :meth:`pop_before` returns the items of every day that ends at or before the horizon;
    those of the horizon's own day stay until a later horizon passes that day, so callers
    treat what it returns as "these may now be forgotten" and keep what is still needed.
    """

    def __init__(self) -> None:
        self._days: dict[int, list[T]] = {}
        self._low: int | None = None  # no day below this one holds items

    def add(self, at: int, item: T) -> None:
        day = at // DAY_MICROS
        found = self._days.get(day)
        if found is None:
            self._days[day] = [item]
        else:
            found.append(item)
        if self._low is None or day < self._low:
            self._low = day

    def pop_before(self, horizon: int) -> list[T]:
        """Remove and return the items of the days before ``horizon``'s day."""
        limit = horizon // DAY_MICROS
        low = self._low
        if low is None or low >= limit:
            return []
        days = self._days
        if limit - low <= len(days):
            passed: list[int] = list(range(low, limit))
        else:  # a long jump (the first horizon, or a burst of history): read the days kept
            passed = sorted(day for day in days if day < limit)
        popped: list[T] = []
        for day in passed:
            items = days.pop(day, None)
            if items is not None:
                popped.extend(items)
        self._low = limit
        return popped

    def export_state(self) -> tuple[dict[int, list[T]], int | None]:
        """The items by day and the lowest day: what :meth:`import_state` takes back."""
        return self._days, self._low

    def import_state(self, state: tuple[dict[int, list[T]], int | None]) -> None:
        self._days, self._low = state

    def __len__(self) -> int:
        return sum(len(items) for items in self._days.values())
