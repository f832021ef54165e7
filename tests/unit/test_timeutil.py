"""Event time: RFC 3339 with an offset in, epoch microseconds inside, UTC ``Z`` out."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asvat.domain.timeutil import (
    MICROS_PER_SECOND,
    DayIndex,
    TimestampError,
    format_timestamp,
    now_micros,
    parse_duration,
    parse_timestamp,
)

HOUR = 3600 * MICROS_PER_SECOND
DAY = 24 * HOUR
#: 1900-01-01 to 2199-12-31: the range incident times can sensibly take.
REALISTIC = st.integers(
    min_value=-2_208_988_800 * MICROS_PER_SECOND, max_value=7_258_118_399 * MICROS_PER_SECOND
)


def test_epoch_and_a_known_instant() -> None:
    assert parse_timestamp("1970-01-01T00:00:00Z") == 0
    expected = int(datetime(2024, 3, 1, 21, 15, tzinfo=UTC).timestamp()) * MICROS_PER_SECOND
    assert parse_timestamp("2024-03-01T21:15:00Z") == expected


def test_offsets_name_the_same_instant() -> None:
    utc = parse_timestamp("2024-07-01T21:15:00Z")
    assert parse_timestamp("2024-07-01T22:15:00+01:00") == utc
    assert parse_timestamp("2024-07-01T16:15:00-05:00") == utc
    assert parse_timestamp("2024-07-01T21:15:00+00:00") == utc
    assert parse_timestamp("2024-07-01t21:15:00z") == utc


def test_fractions_are_microseconds_and_extra_digits_truncated() -> None:
    base = parse_timestamp("2024-03-01T21:15:00Z")
    assert parse_timestamp("2024-03-01T21:15:00.5Z") == base + 500_000
    assert parse_timestamp("2024-03-01T21:15:00.000001Z") == base + 1
    assert parse_timestamp("2024-03-01T21:15:00.1234569Z") == base + 123_456


@pytest.mark.parametrize(
    "text",
    [
        "2024-03-01T21:15:00",  # no offset: ambiguous, refused
        "2024-03-01",
        "21:15:00Z",
        "2024-03-01T21:15Z",
        "2024-13-01T21:15:00Z",
        "2024-02-30T21:15:00Z",
        "2024-03-01T24:00:01Z",
        "2024-03-01T21:15:00+25:00",
        "yesterday",
        "",
    ],
)
def test_what_is_not_a_timestamp_with_an_offset(text: str) -> None:
    with pytest.raises(TimestampError):
        parse_timestamp(text)


def test_the_error_says_what_was_expected() -> None:
    with pytest.raises(TimestampError, match="with an offset such as '2024-03-01T21:15:00Z'"):
        parse_timestamp("2024-03-01T21:15:00")


def test_non_strings_are_refused() -> None:
    with pytest.raises(TimestampError):
        parse_timestamp(1709327700)  # type: ignore[arg-type]


def test_format_is_utc_z_with_trimmed_fraction() -> None:
    base = parse_timestamp("2024-03-01T21:15:00Z")
    assert format_timestamp(base) == "2024-03-01T21:15:00Z"
    assert format_timestamp(base + 120_000) == "2024-03-01T21:15:00.12Z"
    assert format_timestamp(base + 1) == "2024-03-01T21:15:00.000001Z"
    assert format_timestamp(-1) == "1969-12-31T23:59:59.999999Z"


#: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999Z: everything RFC 3339 can write.
ALL_YEARS = st.integers(
    min_value=-62_135_596_800 * MICROS_PER_SECOND, max_value=253_402_300_800 * MICROS_PER_SECOND - 1
)


@given(ALL_YEARS)
def test_format_then_parse_is_the_identity(micros: int) -> None:
    assert parse_timestamp(format_timestamp(micros)) == micros


def test_years_before_1000_are_written_with_four_digits() -> None:
    assert format_timestamp(parse_timestamp("0999-06-01T00:00:00Z")) == "0999-06-01T00:00:00Z"


@given(REALISTIC, st.integers(min_value=-23 * 60, max_value=23 * 60))
def test_any_offset_spelling_parses_to_the_same_instant(micros: int, offset_min: int) -> None:
    local = micros + offset_min * 60 * MICROS_PER_SECOND
    text = format_timestamp(local)[:-1]  # drop the Z
    sign = "+" if offset_min >= 0 else "-"
    hours, minutes = divmod(abs(offset_min), 60)
    assert parse_timestamp(f"{text}{sign}{hours:02d}:{minutes:02d}") == micros


def test_exactly_28_days_is_an_integer_equality() -> None:
    start = parse_timestamp("2024-02-01T00:00:00Z")
    assert parse_timestamp("2024-02-29T00:00:00Z") - start == 28 * DAY == parse_duration("28d")


@pytest.mark.parametrize(
    ("text", "micros"),
    [
        ("90s", 90 * MICROS_PER_SECOND),
        ("15m", 15 * 60 * MICROS_PER_SECOND),
        ("4h", 4 * HOUR),
        ("28d", 28 * DAY),
        ("2w", 14 * DAY),
        (" 7 d ", 7 * DAY),
        ("0s", 0),
    ],
)
def test_durations(text: str, micros: int) -> None:
    assert parse_duration(text) == micros


@pytest.mark.parametrize("text", ["28", "d", "1.5d", "-1d", "28 days", "P28D", ""])
def test_bad_durations_say_what_was_expected(text: str) -> None:
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(text)


def test_now_is_the_wall_clock() -> None:
    before = int(datetime.now(tz=UTC).timestamp() * MICROS_PER_SECOND)
    now = now_micros()
    after = int(datetime.now(tz=UTC).timestamp() * MICROS_PER_SECOND)
    assert before <= now <= after


def test_a_day_index_gives_back_the_items_of_the_days_a_horizon_has_passed() -> None:
    index: DayIndex[str] = DayIndex()
    assert index.pop_before(10 * DAY) == []
    index.add(5 * DAY + HOUR, "a")
    index.add(3 * DAY, "b")
    index.add(5 * DAY + 2 * HOUR, "c")
    index.add(9 * DAY, "d")
    assert len(index) == 4
    assert index.pop_before(3 * DAY + HOUR) == []  # day 3 is the horizon's own day
    assert index.pop_before(5 * DAY + 3 * HOUR) == ["b"]  # day 5 stays whole
    assert index.pop_before(6 * DAY) == ["a", "c"]
    index.add(2 * DAY, "late")  # an old time added after the horizon passed it
    assert index.pop_before(6 * DAY) == ["late"]
    assert index.pop_before(20_000 * DAY) == ["d"]  # a long jump reads only the days kept
    assert len(index) == 0


@given(
    st.lists(st.tuples(st.integers(min_value=0, max_value=400 * DAY), st.integers()), max_size=60),
    st.lists(st.integers(min_value=0, max_value=500 * DAY), max_size=8),
)
def test_a_day_index_returns_every_item_once_and_only_when_its_day_is_passed(
    items: list[tuple[int, int]], horizons: list[int]
) -> None:
    index: DayIndex[int] = DayIndex()
    for at, item in items:
        index.add(at, item)
    returned: list[int] = []
    for horizon in sorted(horizons):
        popped = index.pop_before(horizon)
        assert all(any(i == p and at // DAY < horizon // DAY for at, i in items) for p in popped)
        returned += popped
    passed = max(horizons, default=0) // DAY
    assert sorted(returned) == sorted(i for at, i in items if at // DAY < passed)
