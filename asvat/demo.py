"""Demo and replay data: the real Northumbria 2022 ASB records as ``incident.v1`` events.

The shipped records (``asvat/reference/northumbria``, see its README for provenance and
licence) carry a month, a point and a street description only. Everything else on the
events made here is synthetic and comes from seeded generators, so the same seed always
gives the same events:

* **Time.** Each record's ``occurred_at`` is drawn uniformly over the seconds of its month
  (UTC), from a generator seeded with ``seed``. (The shipped file holds January to
  November 2022: there are no December records.) ``reported_at`` follows after a delay that
  depends on the source (999 minutes, 101 hours, online and partner reports days).
* **Callers.** About 30 % of reports are anonymous. The rest come from a synthetic
  population that lives in the record's LSOA: a caller who reported something in the last
  eight weeks is likely to call again, in proportion to how often they already have, so a
  minority calls many times (a heavy tail) and repeat calls cluster in time, as repeat
  victimisation does. Each person is identified the same way on every call (a police
  person reference, a mobile number, or name with date of birth), but the mobile number is
  written in varied spellings (``07412 345678``, ``+44 7412 345678``, ``447412345678``) and
  names in varied case, as call handlers type them.
* **Codes.** Mostly ASBN/ASBP/ASBE with some HARS, CDAM, DISP and NFA; about 7 % of incidents
  are reclassified on closure (e.g. opened ASBN, closed HARS).
* **Events.** Each record is one incident: usually a single ``closed`` event (sequence 0)
  carrying both codes; about 20 % arrive as an ``opened`` event (closing code null)
  followed by a ``closed`` one (sequence 1).

Ids are ``NB-2022-000001`` (numbered in order of ``reported_at``) with event ids
``NB-2022-000001-0``. The module also holds a small hand-made burst that makes escalations
appear within the first minute of a live demo, and :func:`feed`, which posts events to
the ingest service as NDJSON at a steady rate (standard library only).
"""

from __future__ import annotations

import calendar
import csv
import io
import json
import math
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from importlib import resources
from typing import Any

import phonenumbers

from asvat.domain.timeutil import MICROS_PER_SECOND, format_timestamp

#: Package-relative path of the shipped records.
NORTHUMBRIA_TSV = ("reference", "northumbria", "asb_2022.tsv")
#: Rows in the shipped file.
NORTHUMBRIA_ROWS = 39_706

ANONYMOUS_SHARE = 0.30
PAIR_SHARE = 0.20
RECLASSIFY_SHARE = 0.07

_SOURCES = (("101", 0.50), ("999", 0.20), ("online", 0.20), ("partner", 0.10))
#: Mean report delay in seconds by source (exponential), and the cap.
_MEAN_DELAY_S = {"999": 5 * 60, "101": 2 * 3600, "online": 18 * 3600, "partner": 3 * 86400}
_MAX_DELAY_S = 14 * 86400

_OPENING_CODES = (
    ("ASBN", 0.44),
    ("ASBP", 0.24),
    ("ASBE", 0.16),
    ("HARS", 0.05),
    ("CDAM", 0.04),
    ("DISP", 0.05),
    ("NFA", 0.02),
)
#: Plausible reclassifications on closure: opening code -> closing codes.
_RECLASSIFY = {
    "ASBN": ("HARS", "DISP", "NFA", "ASBP"),
    "ASBP": ("HARS", "ASBN", "DISP"),
    "ASBE": ("CDAM", "ASBN"),
    "HARS": ("ASBP",),
    "CDAM": ("ASBE",),
    "DISP": ("ASBP", "HARS"),
    "NFA": ("ASBN",),
}
_DESCRIPTIONS = {
    "ASBN": (
        "Loud music and shouting from a neighbouring property late at night.",
        "Group of youths gathering, drinking and being rowdy.",
        "Off-road motorbikes being ridden dangerously on the footpath.",
        "Fireworks being let off in the street.",
        "Persistent noise and banging at all hours.",
    ),
    "ASBP": (
        "Caller reports being verbally abused by a neighbour.",
        "Caller feels targeted: youths knocking on the door and running off.",
        "Caller reports being intimidated outside their home.",
        "Caller reports items thrown at their windows by a known group.",
    ),
    "ASBE": (
        "Fly-tipping on the back lane.",
        "Graffiti on walls and bus shelter.",
        "Abandoned vehicle left for several weeks.",
        "Litter and drug paraphernalia left in the park.",
    ),
    "HARS": (
        "Caller reports repeated threatening messages and visits.",
        "Caller reports being followed and harassed by an ex-partner's associate.",
    ),
    "CDAM": (
        "Car windscreen smashed overnight.",
        "Fence and garden plants damaged.",
    ),
    "DISP": (
        "Ongoing dispute between neighbours over parking.",
        "Argument between neighbours over a boundary fence.",
    ),
    "NFA": (
        "Concern raised; no offence or ASB identified on attendance.",
        "Caller wanted advice only.",
    ),
}
_PERSON_FACTORS = ("disability", "mental_health", "age_elderly", "isolation", "child")
_FIRST_NAMES = (
    "Aisha", "Alan", "Amy", "Andrew", "Beth", "Callum", "Chloe", "Connor", "Dawn", "Declan",
    "Elaine", "Emma", "Gary", "Hannah", "Ian", "Jack", "Jade", "Janet", "Karen", "Kyle",
    "Leanne", "Liam", "Lisa", "Mark", "Megan", "Michael", "Nicola", "Paul", "Rachel", "Ryan",
    "Sarah", "Sean", "Sophie", "Stephen", "Tracey", "Wayne", "Zoë", "Siobhán", "Ahmed", "Priya",
)  # fmt: skip
_LAST_NAMES = (
    "Anderson", "Armstrong", "Bell", "Brown", "Charlton", "Clark", "Dixon", "Elliott",
    "Fenwick", "Graham", "Hall", "Harrison", "Henderson", "Hussain", "Jackson", "Johnson",
    "Kerr", "Lee", "Milburn", "Moore", "O'Neil", "Patel", "Robson", "Scott", "Smith",
    "Stephenson", "Taylor", "Thompson", "Walker", "Wilson", "Wood", "Young",
)  # fmt: skip
#: First digits after ``07`` of UK mobile ranges (076 pagers and 07624 Isle of Man avoided).
_MOBILE_PREFIXES = ("71", "72", "73", "74", "75", "77", "78", "79")

#: A caller who called within this many seconds is "active" and may call again.
_ACTIVE_S = 56 * 86400
#: Chance that an identified report comes from an active caller of the same LSOA.
_REPEAT_SHARE = 0.42


@dataclass(frozen=True, slots=True)
class NorthumbriaRecord:
    """One published ASB record: the first day of its month, a WGS84 point, a street."""

    month: date
    lon: float
    lat: float
    location: str
    lsoa_code: str


@lru_cache(maxsize=1)
def _records() -> tuple[NorthumbriaRecord, ...]:
    text = resources.files("asvat").joinpath(*NORTHUMBRIA_TSV).read_text(encoding="utf-8")
    out = []
    for row in csv.DictReader(io.StringIO(text), delimiter="\t"):
        out.append(
            NorthumbriaRecord(
                month=date.fromisoformat(row["month"]),
                lon=round(float(row["longitude"]), 6),
                lat=round(float(row["latitude"]), 6),
                location=row["location"].strip(),
                lsoa_code=row["lsoa_code"].strip(),
            )
        )
    return tuple(out)


def load_northumbria() -> list[NorthumbriaRecord]:
    """Every record of the shipped ``asb_2022.tsv``, in file order (39,706 rows)."""
    return list(_records())


# --------------------------------------------------------------------------- callers


@dataclass(slots=True)
class _Person:
    person_id: str | None
    national: str | None  # mobile without the leading 0, e.g. "7412345678"
    name: str | None
    date_of_birth: str | None
    postcode: str | None
    factors: tuple[str, ...]
    calls: int = 0
    last_call_s: int = 0


def spell_phone(national: str, style: int) -> str:
    """A UK mobile ``7xxxxxxxxx`` (national number without 0) in one of three spellings.

    ``0``: ``07412 345678``; ``1``: ``+44 7412 345678``; ``2``: ``447412345678``.
    """
    if style == 0:
        return f"0{national[:4]} {national[4:]}"
    if style == 1:
        return f"+44 {national[:4]} {national[4:]}"
    return f"44{national}"


def _random_mobile(rng: random.Random) -> str:
    """A valid UK mobile number (national, without the 0): ``+44`` and it is its E.164."""
    while True:
        national = rng.choice(_MOBILE_PREFIXES) + f"{rng.randrange(10**8):08d}"
        if phonenumbers.is_valid_number(phonenumbers.PhoneNumber(44, int(national))):
            return national


def _spell_name(name: str, rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.10:
        return name.upper()
    if roll < 0.18:
        return name.lower()
    if roll < 0.24:
        return "  " + name.replace(" ", "  ")
    return name


class _Population:
    """Synthetic callers, LSOA by LSOA (see the module docstring)."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._by_lsoa: dict[str, list[_Person]] = defaultdict(list)
        self._phones: set[str] = set()
        self._count = 0

    def _new_mobile(self) -> str:
        while True:
            national = _random_mobile(self._rng)
            if national not in self._phones:
                self._phones.add(national)
                return national

    def _new_person(self) -> _Person:
        rng = self._rng
        self._count += 1
        kind = rng.random()
        name = f"{rng.choice(_FIRST_NAMES)} {rng.choice(_LAST_NAMES)}"
        born = date(1938, 1, 1) + timedelta(days=rng.randrange(70 * 365))
        factors: tuple[str, ...] = ()
        if rng.random() < 0.15:
            factors = tuple(sorted(set(rng.sample(_PERSON_FACTORS, rng.choice((1, 1, 2))))))
        if born.year < 1950 and rng.random() < 0.5:
            factors = tuple(sorted({*factors, "age_elderly"}))
        postcode = None
        if rng.random() < 0.4:
            postcode = (
                f"NE{rng.randrange(1, 67)} {rng.randrange(10)}"
                f"{rng.choice('ABDEFGHJLNPQRSTUWXYZ')}{rng.choice('ABDEFGHJLNPQRSTUWXYZ')}"
            )
        if kind < 0.20:  # known to the force: a person reference (plus what they give)
            return _Person(
                person_id=f"NPP{self._count:07d}",
                national=self._new_mobile() if rng.random() < 0.7 else None,
                name=name if rng.random() < 0.6 else None,
                date_of_birth=born.isoformat() if rng.random() < 0.6 else None,
                postcode=postcode,
                factors=factors,
            )
        if kind < 0.82:  # a mobile number, sometimes a name
            return _Person(
                person_id=None,
                national=self._new_mobile(),
                name=name if rng.random() < 0.5 else None,
                date_of_birth=None,
                postcode=postcode,
                factors=factors,
            )
        return _Person(  # name and date of birth only (e.g. a report made in person)
            person_id=None,
            national=None,
            name=name,
            date_of_birth=born.isoformat(),
            postcode=postcode,
            factors=factors,
        )

    def caller_for(self, lsoa: str, at_s: int) -> _Person:
        """The person behind an identified report in ``lsoa`` at ``at_s`` (epoch seconds)."""
        rng = self._rng
        pool = self._by_lsoa[lsoa]
        active = [p for p in pool if at_s - p.last_call_s <= _ACTIVE_S]
        if active and rng.random() < _REPEAT_SHARE:
            person = rng.choices(active, weights=[p.calls for p in active])[0]
        else:
            person = self._new_person()
            pool.append(person)
        person.calls += 1
        person.last_call_s = max(person.last_call_s, at_s)
        return person

    def caller_fields(self, person: _Person) -> dict[str, str]:
        """The caller object as a call handler typed it this time."""
        rng = self._rng
        out: dict[str, str] = {}
        if person.person_id is not None:
            out["person_id"] = person.person_id
        if person.national is not None:
            out["phone"] = spell_phone(person.national, rng.randrange(3))
        if person.name is not None:
            out["name"] = _spell_name(person.name, rng)
        if person.date_of_birth is not None:
            out["date_of_birth"] = person.date_of_birth
        if person.postcode is not None:
            out["postcode"] = person.postcode
        return out


# --------------------------------------------------------------------------- incidents


@dataclass(slots=True)
class _Draft:
    index: int
    record: NorthumbriaRecord
    source: str
    occurred_s: int
    reported_s: int
    extra: dict[str, Any] = field(default_factory=dict)


def _weighted(rng: random.Random, table: tuple[tuple[str, float], ...]) -> str:
    return rng.choices([k for k, _ in table], weights=[w for _, w in table])[0]


def _month_bounds(month: date) -> tuple[int, int]:
    start = datetime(month.year, month.month, 1, tzinfo=UTC)
    days = calendar.monthrange(month.year, month.month)[1]
    return int(start.timestamp()), days * 86400


def _ts(seconds: int) -> str:
    return format_timestamp(seconds * MICROS_PER_SECOND)


def _epoch_s(moment: datetime, name: str) -> float:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got the naive datetime {moment!r}")
    return moment.timestamp()


def _events_for(
    incident_id: str,
    occurred_s: int,
    reported_s: int,
    source: str,
    opening: str,
    closing: str,
    caller: dict[str, str] | None,
    location: dict[str, Any],
    vulnerability: list[str],
    description: str,
    pair: bool,
) -> list[dict[str, Any]]:
    def event(sequence: int, event_type: str, closing_code: str | None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "event_id": f"{incident_id}-{sequence}",
            "incident_id": incident_id,
            "sequence": sequence,
            "event_type": event_type,
            "occurred_at": _ts(occurred_s),
            "reported_at": _ts(reported_s),
            "source": source,
            "opening_code": opening,
            "closing_code": closing_code,
        }
        if caller is not None:
            out["caller"] = dict(caller)
        out["location"] = dict(location)
        out["vulnerability"] = list(vulnerability)
        out["description"] = description
        return out

    if pair:
        return [event(0, "opened", None), event(1, "closed", closing)]
    return [event(0, "closed", closing)]


def northumbria_incidents(
    *, seed: int = 2022, shift_to: datetime | None = None, limit: int | None = None
) -> list[dict[str, Any]]:
    """Raw ``incident.v1`` events, one incident per shipped record, sorted by ``reported_at``.

    ``limit`` keeps the first ``limit`` incidents (in order of ``reported_at``; an opened +
    closed pair counts once), so a smaller run is a prefix of the full one. ``shift_to`` (a
    timezone-aware datetime) moves every time of the returned events by one whole-second
    offset so that the latest ``reported_at`` falls one second before it: relative order
    and spacing are kept, nothing lies in the future. The same ``seed`` gives the same
    events (see the module docstring for how they are made).
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be at least 0, got {limit}")
    records = _records()
    rng_time = random.Random(f"asvat-demo:{seed}:time")
    drafts: list[_Draft] = []
    for index, record in enumerate(records):
        start_s, span_s = _month_bounds(record.month)
        occurred = start_s + rng_time.randrange(span_s)  # uniform over the month's seconds
        source = _weighted(rng_time, _SOURCES)
        delay = min(_MAX_DELAY_S, int(rng_time.expovariate(1.0 / _MEAN_DELAY_S[source])))
        drafts.append(_Draft(index, record, source, occurred, occurred + max(delay, 30)))
    drafts.sort(key=lambda d: (d.reported_s, d.occurred_s, d.index))

    rng_caller = random.Random(f"asvat-demo:{seed}:callers")
    rng_code = random.Random(f"asvat-demo:{seed}:codes")
    population = _Population(rng_caller)
    year = records[0].month.year if records else 2022
    width = max(6, len(str(len(drafts))))
    chosen = drafts if limit is None else drafts[:limit]
    for number, draft in enumerate(chosen, start=1):
        # Drawn incident by incident in report order: the first n incidents come out the
        # same whatever the limit.
        vulnerability: set[str] = set()
        caller: dict[str, str] | None = None
        if rng_caller.random() >= ANONYMOUS_SHARE:
            person = population.caller_for(draft.record.lsoa_code, draft.occurred_s)
            caller = population.caller_fields(person)
            if person.factors and rng_caller.random() < 0.8:
                vulnerability.update(person.factors)
            if person.calls > 1 and rng_caller.random() < 0.3:
                vulnerability.add("previous_victim")
        elif rng_caller.random() < 0.04:
            vulnerability.add(rng_caller.choice(("self_identified", "age_elderly", "isolation")))
        # A fixed number of draws per incident keeps codes independent of the callers.
        opening = _weighted(rng_code, _OPENING_CODES)
        reclassify, other, hate, self_identified = (rng_code.random() for _ in range(4))
        closing = opening
        if reclassify < RECLASSIFY_SHARE:
            choices = _RECLASSIFY[opening]
            closing = choices[int(other * len(choices))]
        if closing in ("ASBP", "HARS") and hate < 0.06:
            vulnerability.add("hate_motivated")
        if vulnerability and self_identified < 0.1:
            vulnerability.add("self_identified")
        draft.extra = {
            "incident_id": f"NB-{year}-{number:0{width}d}",
            "opening": opening,
            "closing": closing,
            "caller": caller,
            "vulnerability": sorted(vulnerability),
            "description": rng_code.choice(_DESCRIPTIONS[closing]),
            "pair": rng_code.random() < PAIR_SHARE,
        }

    offset = 0
    if shift_to is not None and chosen:
        target = math.floor(_epoch_s(shift_to, "shift_to"))
        offset = (target - 1) - max(d.reported_s for d in chosen)

    events: list[dict[str, Any]] = []
    for draft in chosen:
        x = draft.extra
        location = {
            "lat": draft.record.lat,
            "lon": draft.record.lon,
            "address": draft.record.location,
        }
        events.extend(
            _events_for(
                x["incident_id"],
                draft.occurred_s + offset,
                draft.reported_s + offset,
                draft.source,
                x["opening"],
                x["closing"],
                x["caller"],
                location,
                x["vulnerability"],
                x["description"],
                x["pair"],
            )
        )
    return events


def demo_burst(seed: int = 2022, *, end: datetime | None = None) -> list[dict[str, Any]]:
    """A hand-made scenario that escalates at once, for the first minute of a live demo.

    * one caller (a mobile number written three ways, flagged vulnerable) reports personal
      ASB three times over four days: the repeat-victim rule (3 in 28 days) fires;
    * four anonymous reports within about 40 m of one point (Northumberland Street,
      Newcastle) over five days: the repeat-location rule (4 within 100 m in 7 days) fires.

    Everything happens in the six days before ``end`` (default: now): the last report
    comes in between one and about 70 minutes before it. ``seed`` picks the phone number
    and the exact times; ids are ``DEMO-<seed>-001``…, numbered in order of
    ``reported_at``, which the events are sorted by.
    """
    rng = random.Random(f"asvat-demo:{seed}:burst")
    end_s = math.floor(_epoch_s(end, "end") if end is not None else time.time())
    national = _random_mobile(rng)
    day = 86400
    victim_home = {"lat": 54.97094, "lon": -1.60655, "address": "Shieldfield Road"}
    hotspot = (54.97613, -1.61185)  # Northumberland Street
    jitter = rng.randrange(3600)
    plan: list[dict[str, Any]] = []
    for n, (days_ago, style) in enumerate(((6, 0), (4, 1), (2, 2))):
        plan.append(
            {
                "occurred_s": end_s - days_ago * day - jitter - 3600 * n,
                "source": ("999", "101", "online")[n],
                "opening": "ASBP",
                "closing": "HARS" if n == 2 else "ASBP",
                "caller": {"phone": spell_phone(national, style), "name": "Jane Example"},
                "location": dict(victim_home),
                "vulnerability": [
                    "isolation",
                    "mental_health",
                    *(["previous_victim"] if n else []),
                ],
                "description": _DESCRIPTIONS["ASBP"][n],
            }
        )
    for n, days_ago in enumerate((5, 3, 1, 0)):
        plan.append(
            {
                "occurred_s": end_s - days_ago * day - rng.randrange(3600) - 600,
                "source": ("101", "online", "partner", "999")[n],
                "opening": "ASBN",
                "closing": "ASBN",
                "caller": None,
                "location": {
                    "lat": round(hotspot[0] + rng.uniform(-0.0002, 0.0002), 6),
                    "lon": round(hotspot[1] + rng.uniform(-0.0003, 0.0003), 6),
                    "address": "Northumberland Street",
                },
                "vulnerability": [],
                "description": _DESCRIPTIONS["ASBN"][n],
            }
        )
    for item in plan:  # reported a few minutes after the behaviour, all before `end`
        item["reported_s"] = min(item["occurred_s"] + 120 + rng.randrange(600), end_s - 60)
    plan.sort(key=lambda item: (item["reported_s"], item["occurred_s"]))
    events: list[dict[str, Any]] = []
    for number, item in enumerate(plan, start=1):
        events.extend(
            _events_for(
                f"DEMO-{seed}-{number:03d}",
                item["occurred_s"],
                item["reported_s"],
                item["source"],
                item["opening"],
                item["closing"],
                item["caller"],
                item["location"],
                item["vulnerability"],
                item["description"],
                pair=False,
            )
        )
    return events


# --------------------------------------------------------------------------- feeding


class FeedError(RuntimeError):
    """The ingest service stayed unreachable, or refused a batch outright."""


def _incidents_url(ingest_url: str) -> str:
    parts = urllib.parse.urlsplit(ingest_url)
    if parts.path in ("", "/"):
        parts = parts._replace(path="/v1/incidents")
    return urllib.parse.urlunsplit(parts)


def _batches(events: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    chunk: list[dict[str, Any]] = []
    for event in events:
        chunk.append(event)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _accepted_from(body: bytes, sent: int) -> int:
    """How many events a 2xx answer accepted: its ``accepted`` count or list, else all."""
    try:
        doc = json.loads(body or b"null")
    except ValueError:
        return sent
    if isinstance(doc, dict):
        accepted = doc.get("accepted")
        if isinstance(accepted, bool):
            return sent if accepted else 0
        if isinstance(accepted, int):
            return accepted
        if isinstance(accepted, list):
            return len(accepted)
        rejected = doc.get("rejected")
        if isinstance(rejected, int):
            return sent - rejected
        if isinstance(rejected, list):
            return sent - len(rejected)
    return sent


def _accepted_count(body: bytes) -> int:
    """The ``accepted`` count of a refusal's body (a partly accepted batch), else 0."""
    try:
        doc = json.loads(body or b"null")
    except ValueError:
        return 0
    accepted = doc.get("accepted") if isinstance(doc, dict) else None
    if isinstance(accepted, int) and not isinstance(accepted, bool):
        return accepted
    return len(accepted) if isinstance(accepted, list) else 0


def feed(
    ingest_url: str,
    events: Iterable[dict[str, Any]],
    *,
    rate_per_s: float,
    batch: int = 50,
    stop: threading.Event | None = None,
    log: Callable[[str], object] = print,
    retry_for_s: float = 120.0,
    timeout_s: float = 30.0,
    token: str | None = None,
) -> int:
    """POST ``events`` to the ingest service as NDJSON batches, about ``rate_per_s`` a second.

    ``ingest_url`` is the service's base URL (``http://127.0.0.1:8001``; ``/v1/incidents`` is
    added) or the full endpoint. A batch that meets 503, 429, a refused connection or a
    timeout (the service may be starting, or the broker slow) is retried with backoff from
    0.5 s to 10 s for up to ``retry_for_s`` seconds, then :class:`FeedError` is raised. A
    batch refused with another 4xx/5xx is logged and skipped: its events are counted as not
    accepted. ``stop`` ends the feed early (between batches and during waits). Returns the
    number of events the service accepted; logs a progress line about every 5 seconds and a
    summary at the end. ``token`` (role ingest) is sent as ``Authorization: Bearer``.
    """
    if not rate_per_s > 0:
        raise ValueError(f"rate_per_s must be positive, got {rate_per_s}")
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    stop = stop or threading.Event()
    url = _incidents_url(ingest_url)
    size = max(1, min(batch, math.ceil(rate_per_s))) if math.isfinite(rate_per_s) else batch
    started = time.monotonic()
    last_log = started
    sent = accepted = 0

    for chunk in _batches(events, size):
        if stop.is_set():
            break
        # Pace: batch k may go once k events' worth of time has passed.
        due = started + sent / rate_per_s
        delay = due - time.monotonic()
        if delay > 0 and stop.wait(delay):
            break
        body = "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in chunk).encode()
        got = _post_with_retry(url, body, len(chunk), stop, log, retry_for_s, timeout_s, token)
        if got is None:  # stopped while retrying
            break
        sent += len(chunk)
        accepted += got
        now = time.monotonic()
        if now - last_log >= 5.0:
            last_log = now
            log(
                f"demo feed: {sent:,} sent, {accepted:,} accepted "
                f"({sent / max(now - started, 1e-9):.0f}/s)"
            )
    elapsed = time.monotonic() - started
    log(f"demo feed: done, {accepted:,} of {sent:,} accepted in {elapsed:.1f}s")
    return accepted


def _post_with_retry(
    url: str,
    body: bytes,
    count: int,
    stop: threading.Event,
    log: Callable[[str], object],
    retry_for_s: float,
    timeout_s: float,
    token: str | None = None,
) -> int | None:
    deadline = time.monotonic() + retry_for_s
    backoff = 0.5
    warned = False
    while True:
        request = urllib.request.Request(
            url,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/x-ndjson",
                "Accept": "application/json",
                **({"Authorization": f"Bearer {token}"} if token else {}),
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                return _accepted_from(response.read(), count)
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            if exc.code not in (429, 503):
                detail = raw[:500].decode("utf-8", "replace")
                log(f"demo feed: batch of {count} refused with HTTP {exc.code}: {detail}")
                return _accepted_count(raw)
            reason = f"HTTP {exc.code}"
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            reason = str(getattr(exc, "reason", exc))
        if time.monotonic() + backoff > deadline:
            raise FeedError(f"ingest at {url} unavailable for {retry_for_s:.0f}s ({reason})")
        if not warned:
            log(f"demo feed: waiting for ingest at {url} ({reason}); retrying")
            warned = True
        if stop.wait(backoff):
            return None
        backoff = min(backoff * 2, 10.0)
