"""The demo data: the real Northumbria 2022 records with seeded synthetic callers and codes.

The published records carry only a month; ``asvat.demo`` spreads each one uniformly over
its month's seconds with a generator seeded by ``seed`` (and draws callers, codes and
vulnerability from seeded generators too), so every check below is exact for seed 2022.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest

from asvat.contracts import validate_incident
from asvat.demo import (
    NORTHUMBRIA_ROWS,
    FeedError,
    NorthumbriaRecord,
    demo_burst,
    feed,
    load_northumbria,
    northumbria_incidents,
    spell_phone,
)
from asvat.domain.identity import identity_basis, normalise_phone
from asvat.domain.location import wgs84_to_bng
from asvat.domain.timeutil import MICROS_PER_SECOND, parse_timestamp

SEED = 2022
DAY_US = 86_400 * MICROS_PER_SECOND
_ID = re.compile(r"^NB-2022-\d{6}$")


@pytest.fixture(scope="module")
def year() -> list[dict[str, Any]]:
    return northumbria_incidents(seed=SEED)


def _incidents(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each incident's current record: its highest-sequence event."""
    out: dict[str, dict[str, Any]] = {}
    for event in events:
        held = out.get(event["incident_id"])
        if held is None or event["sequence"] > held["sequence"]:
            out[event["incident_id"]] = event
    return out


# ------------------------------------------------------------------ the shipped records


def test_load_northumbria_reads_every_row() -> None:
    records = load_northumbria()
    assert len(records) == NORTHUMBRIA_ROWS == 39_706
    first = records[0]
    assert isinstance(first, NorthumbriaRecord)
    assert first.month.year == 2022 and first.month.day == 1
    assert 54.0 < first.lat < 56.0 and -3.0 < first.lon < -1.0
    assert first.location and first.lsoa_code.startswith("E0")


# ------------------------------------------------------------------ the seeded year


def test_one_incident_per_record_sorted_by_reported_at(year: list[dict[str, Any]]) -> None:
    incidents = _incidents(year)
    assert len(incidents) == NORTHUMBRIA_ROWS
    assert all(_ID.match(i) for i in incidents)
    assert len({e["event_id"] for e in year}) == len(year)
    reported = [parse_timestamp(e["reported_at"]) for e in year]
    assert reported == sorted(reported)
    for event in year:
        assert event["event_id"] == f"{event['incident_id']}-{event['sequence']}"
        assert parse_timestamp(event["occurred_at"]) <= parse_timestamp(event["reported_at"])
    # An incident is either one closed event (sequence 0) or opened (0) then closed (1).
    types: dict[str, list[str]] = defaultdict(list)
    for event in year:
        types[event["incident_id"]].append(event["event_type"])
    shapes = Counter(tuple(t) for t in types.values())
    assert set(shapes) == {("closed",), ("opened", "closed")}
    assert all(e["event_type"] == "closed" and e["closing_code"] for e in incidents.values())


def test_same_seed_same_events_other_seed_other_events(year: list[dict[str, Any]]) -> None:
    assert northumbria_incidents(seed=SEED, limit=500) == year[: _prefix_len(year, 500)]
    assert northumbria_incidents(seed=SEED, limit=500) == northumbria_incidents(
        seed=SEED, limit=500
    )
    assert northumbria_incidents(seed=SEED + 1, limit=500) != northumbria_incidents(
        seed=SEED, limit=500
    )


def _prefix_len(events: list[dict[str, Any]], incidents: int) -> int:
    seen: set[str] = set()
    for n, event in enumerate(events):
        seen.add(event["incident_id"])
        if len(seen) > incidents:
            return n
    return len(events)


def test_times_fall_within_each_records_month(year: list[dict[str, Any]]) -> None:
    months = Counter(e["occurred_at"][:7] for e in _incidents(year).values())
    shipped = Counter(r.month.isoformat()[:7] for r in load_northumbria())
    assert months == shipped


def test_every_event_validates_against_the_contract(year: list[dict[str, Any]]) -> None:
    now_us = int(time.time() * MICROS_PER_SECOND)
    invalid = {
        event["event_id"]: [str(error) for error in errors]
        for event in year
        if (errors := validate_incident(event, now_us=now_us, future_skew_us=0))
    }
    assert invalid == {}
    for event in demo_burst(SEED):
        assert validate_incident(event, now_us=now_us, future_skew_us=0) == []
    now = datetime.now(tz=UTC)
    now_us = int(now.timestamp() * MICROS_PER_SECOND)
    shifted = northumbria_incidents(seed=SEED, shift_to=now, limit=200)
    for event in shifted:  # a live demo's events are never in the future
        assert validate_incident(event, now_us=now_us, future_skew_us=0) == []


def test_synthetic_callers_look_like_a_control_rooms(year: list[dict[str, Any]]) -> None:
    incidents = list(_incidents(year).values())
    anonymous = sum(1 for e in incidents if "caller" not in e) / len(incidents)
    assert 0.27 < anonymous < 0.33
    calls = Counter(identity_basis(e["caller"]) for e in incidents if "caller" in e)
    assert None not in calls
    counts = sorted(calls.values(), reverse=True)
    # Most callers call once; a minority call again; a few call very many times.
    assert sum(1 for c in counts if c == 1) > 0.6 * len(counts)
    assert 0.1 * len(counts) < sum(1 for c in counts if c >= 2) < 0.4 * len(counts)
    assert counts[0] >= 20
    kinds = Counter(b.split(":", 1)[0] for b in calls)  # type: ignore[union-attr]
    assert set(kinds) == {"person", "phone", "namedob"}
    codes = Counter((e["opening_code"], e["closing_code"]) for e in incidents)
    opening = Counter(e["opening_code"] for e in incidents)
    assert set(opening) == {"ASBN", "ASBP", "ASBE", "HARS", "CDAM", "DISP", "NFA"}
    asb = sum(opening[c] for c in ("ASBN", "ASBP", "ASBE"))
    assert asb > 0.75 * len(incidents)
    reclassified = sum(n for (o, c), n in codes.items() if o != c)
    assert 0.03 * len(incidents) < reclassified < 0.12 * len(incidents)
    assert codes[("ASBN", "HARS")] > 0
    flagged = sum(1 for e in incidents if e["vulnerability"]) / len(incidents)
    assert 0.05 < flagged < 0.35
    assert {e["source"] for e in incidents} == {"999", "101", "online", "partner"}


def test_one_persons_phone_spellings_normalise_to_one_number(
    year: list[dict[str, Any]],
) -> None:
    spellings: dict[str, set[str]] = defaultdict(set)
    for event in year:
        phone = event.get("caller", {}).get("phone")
        if phone:
            spellings[re.sub(r"\D", "", phone)[-10:]].add(phone)
    many = {k: v for k, v in spellings.items() if len(v) == 3}
    assert len(many) > 100
    for national, written in many.items():
        styles = {"0" if p[0] == "0" else "+" if p[0] == "+" else "44" for p in written}
        assert styles == {"0", "+", "44"}
        assert {normalise_phone(p) for p in written} == {"+44" + national}
    for national in list(spellings)[:2000]:
        assert {normalise_phone(spell_phone(national, s)) for s in range(3)} == {"+44" + national}


def test_shift_to_moves_the_year_to_end_just_before_it(year: list[dict[str, Any]]) -> None:
    shift_to = datetime(2026, 3, 1, 12, 0, 0, 500_000, tzinfo=UTC)
    shifted = northumbria_incidents(seed=SEED, shift_to=shift_to)
    limit_us = int(shift_to.timestamp() * MICROS_PER_SECOND)
    occurred = [parse_timestamp(e["occurred_at"]) for e in shifted]
    reported = [parse_timestamp(e["reported_at"]) for e in shifted]
    assert max(occurred) < limit_us and max(reported) < limit_us
    assert limit_us - max(reported) <= 2 * MICROS_PER_SECOND
    # One offset for every time: order and spacing kept, everything else unchanged.
    offsets = {
        parse_timestamp(s[key]) - parse_timestamp(o[key])
        for s, o in zip(shifted, year, strict=True)
        for key in ("occurred_at", "reported_at")
    }
    assert len(offsets) == 1
    strip = ("occurred_at", "reported_at")
    assert [{k: v for k, v in e.items() if k not in strip} for e in shifted] == [
        {k: v for k, v in e.items() if k not in strip} for e in year
    ]
    with pytest.raises(ValueError, match="timezone-aware"):
        northumbria_incidents(shift_to=datetime(2026, 3, 1))


def test_shift_with_a_limit_ends_the_limited_set_before_shift_to() -> None:
    shift_to = datetime.now(tz=UTC)
    events = northumbria_incidents(seed=SEED, shift_to=shift_to, limit=50)
    assert len(_incidents(events)) == 50
    latest = max(parse_timestamp(e["reported_at"]) for e in events)
    assert latest < shift_to.timestamp() * MICROS_PER_SECOND
    assert northumbria_incidents(limit=0) == []


# ------------------------------------------------------------------ the scripted burst


def test_demo_burst_raises_a_repeat_victim_and_a_repeat_location() -> None:
    end = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    burst = demo_burst(SEED, end=end)
    assert burst == demo_burst(SEED, end=end)
    assert demo_burst(SEED + 1, end=end) != burst
    end_us = int(end.timestamp() * MICROS_PER_SECOND)
    reported = [parse_timestamp(e["reported_at"]) for e in burst]
    assert reported == sorted(reported) and max(reported) < end_us
    assert len({e["event_id"] for e in burst}) == len(burst)

    victim = [e for e in burst if "caller" in e]
    assert len(victim) == 3
    assert len({e["caller"]["phone"] for e in victim}) == 3  # three spellings
    assert len({identity_basis(e["caller"]) for e in victim}) == 1
    times = sorted(parse_timestamp(e["occurred_at"]) for e in victim)
    assert times[-1] - times[0] < 28 * DAY_US

    place = [e for e in burst if "caller" not in e]
    assert len(place) == 4
    points = [wgs84_to_bng(e["location"]["lat"], e["location"]["lon"]) for e in place]
    for a in points:
        for b in points:
            assert ((a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2) ** 0.5 < 100
    times = sorted(parse_timestamp(e["occurred_at"]) for e in place)
    assert times[-1] - times[0] < 7 * DAY_US


def test_demo_burst_defaults_to_ending_now() -> None:
    before = time.time()
    burst = demo_burst(SEED)
    latest = max(parse_timestamp(e["reported_at"]) for e in burst) / MICROS_PER_SECOND
    assert before - 2 * 3600 < latest < before - 59


# ------------------------------------------------------------------ feeding the ingest


class _Ingest(BaseHTTPRequestHandler):
    """A fake ingest: answers 503 to the first ``busy`` requests, then 202."""

    busy: ClassVar[int] = 0
    received: ClassVar[list[list[dict[str, Any]]]] = []
    content_types: ClassVar[list[str]] = []
    authorizations: ClassVar[list[str | None]] = []
    lock: ClassVar[threading.Lock] = threading.Lock()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with self.lock:
            if type(self).busy > 0:
                type(self).busy -= 1
                self._answer(503, {"error": "broker not ready"})
                return
            assert self.path == "/v1/incidents"
            lines = [json.loads(line) for line in body.decode().splitlines() if line]
            self.received.append(lines)
            self.content_types.append(self.headers["Content-Type"])
            self.authorizations.append(self.headers.get("Authorization"))
        self._answer(202, {"accepted": len(lines), "rejected": []})

    def _answer(self, status: int, doc: dict[str, Any]) -> None:
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _serve(port: int, busy: int = 0) -> Iterator[type[_Ingest]]:
    handler = type(
        "Ingest",
        (_Ingest,),
        {"busy": busy, "received": [], "content_types": [], "authorizations": []},
    )
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield handler
    finally:
        server.shutdown()
        server.server_close()


def test_feed_posts_ndjson_batches_and_retries_a_busy_ingest() -> None:
    port = _free_port()
    events = northumbria_incidents(seed=SEED, limit=60)
    lines: list[str] = []
    with _serve(port, busy=2) as handler:
        accepted = feed(
            f"http://127.0.0.1:{port}",
            events,
            rate_per_s=10_000,
            batch=25,
            log=lines.append,
            token="asvat_test-token",
        )
        assert accepted == len(events)
        assert set(handler.authorizations) == {"Bearer asvat_test-token"}
        assert [e for b in handler.received for e in b] == events
        assert max(len(b) for b in handler.received) == 25
        assert set(handler.content_types) == {"application/x-ndjson"}
    assert any("waiting for ingest" in line for line in lines)
    assert "done" in lines[-1]


def test_feed_waits_for_an_ingest_that_is_still_starting() -> None:
    port = _free_port()
    events = demo_burst(SEED)
    result: list[int] = []
    worker = threading.Thread(
        target=lambda: result.append(
            feed(f"http://127.0.0.1:{port}/v1/incidents", events, rate_per_s=1000, log=str)
        )
    )
    worker.start()
    time.sleep(0.8)  # connection refused meanwhile
    with _serve(port) as handler:
        worker.join(timeout=30)
        assert result == [len(events)]
        assert sum(len(b) for b in handler.received) == len(events)


def test_feed_paces_to_the_rate_and_stops_when_asked() -> None:
    port = _free_port()
    events = northumbria_incidents(seed=SEED, limit=40)
    with _serve(port) as handler:
        started = time.monotonic()
        feed(f"http://127.0.0.1:{port}", events[:30], rate_per_s=100, batch=10, log=str)
        assert time.monotonic() - started >= 0.19  # three batches of 10 at 100/s: 0, .1, .2 s
        stop = threading.Event()
        stop.set()
        assert feed(f"http://127.0.0.1:{port}", events, rate_per_s=100, stop=stop, log=str) == 0
        assert sum(len(b) for b in handler.received) == 30


def test_feed_gives_up_on_an_ingest_that_never_comes() -> None:
    port = _free_port()
    with pytest.raises(FeedError, match="unavailable"):
        feed(f"http://127.0.0.1:{port}", demo_burst(SEED), rate_per_s=10, retry_for_s=1.0, log=str)
    with pytest.raises(ValueError):
        feed("http://127.0.0.1:1", [], rate_per_s=0)
