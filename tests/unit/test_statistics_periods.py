"""``statistics.periods``: the day, ISO week and month in UK local time, remembered per hour."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from services.api.statistics import periods

LONDON = ZoneInfo("Europe/London")


def _direct(moment: datetime) -> dict[str, str]:
    local = moment.astimezone(LONDON)
    year, week, _ = local.isocalendar()
    return {
        "day": local.strftime("%Y-%m-%d"),
        "week": f"{year:04d}-W{week:02d}",
        "month": local.strftime("%Y-%m"),
    }


@pytest.mark.parametrize(
    ("moment", "day"),
    [
        # BST starts 01:00 UTC on 31 March 2024: 23:59 UTC the night before is still GMT.
        (datetime(2024, 3, 30, 23, 59, 59, tzinfo=UTC), "2024-03-30"),
        # In BST, 23:30 UTC is 00:30 the next local day (and month, and ISO week here).
        (datetime(2024, 6, 30, 23, 30, tzinfo=UTC), "2024-07-01"),
        (datetime(2024, 6, 30, 22, 59, 59, 999999, tzinfo=UTC), "2024-06-30"),
        # BST ends 01:00 UTC on 27 October 2024: 23:30 UTC on the 26th is 00:30 BST.
        (datetime(2024, 10, 26, 23, 30, tzinfo=UTC), "2024-10-27"),
        (datetime(2024, 10, 27, 23, 30, tzinfo=UTC), "2024-10-27"),
        # Another offset in the input changes nothing: the moment is what counts.
        (datetime(2024, 7, 1, 0, 30, tzinfo=timezone(timedelta(hours=2))), "2024-06-30"),
    ],
)
def test_local_day_at_the_edges(moment: datetime, day: str) -> None:
    assert periods(moment)["day"] == day
    assert dict(periods(moment)) == _direct(moment)


def test_same_as_computing_each_moment_afresh() -> None:
    rng = random.Random(7)
    start = datetime(2019, 1, 1, tzinfo=UTC)
    for _ in range(20_000):
        moment = start + timedelta(seconds=rng.randrange(8 * 365 * 86_400))
        assert dict(periods(moment)) == _direct(moment), moment


def test_the_remembered_answer_cannot_be_changed_by_a_caller() -> None:
    answer = periods(datetime(2024, 5, 5, 12, tzinfo=UTC))
    with pytest.raises(TypeError):
        answer["day"] = "changed"  # type: ignore[index]
