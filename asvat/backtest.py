"""``asvat backtest``: replay one history under two or more policies and compare them.

The events are read once (validated and pseudonymised as :mod:`asvat.replay` does) and
applied, in file order, to one :class:`~asvat.domain.detector.Detector` per policy. For
each policy :func:`run_policy` keeps what the force would have seen: escalations raised
and upgraded (with the tasking they carry), case reviews triggered, and when each victim
first met each victim rule. :func:`compare` sets every other policy against the first
(the baseline): escalations per ISO week by level, the workload they create (actions, and
supervisory reviews falling due before the end of the history), victims who meet each rule
earlier, later, at the same incident or under one policy only, case reviews, and the
overlap of escalated subjects. :func:`write_report` writes ``report.md``, ``report.html``
(charts inline), the charts as ``.svg`` beside them and ``summary.json``.

Times are event times (an escalation is raised at its incident's ``reported_at``), so a
backtest gives the same report every run.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import IO, Any

from asvat import charts
from asvat.domain.detector import Detector
from asvat.domain.incident import IncidentEvent
from asvat.domain.policy import Policy

ANY_VICTIM_RULE = "any victim rule"
LEVELS = ("medium", "high")


@dataclass(frozen=True, slots=True)
class EscalationRecord:
    escalation_id: str
    event: str  # raised or upgraded
    subject_type: str
    subject_key: str
    level: str
    at: int
    actions: int
    reviews: tuple[tuple[int, int], ...]  # (every, first_due_at) per rank


@dataclass
class PolicyRun:
    """What one policy made of the history."""

    name: str
    victim_rules: tuple[str, ...]
    escalations: list[EscalationRecord] = field(default_factory=list)
    case_reviews: list[tuple[str, int]] = field(default_factory=list)  # (subject, occurred)
    #: rule id -> victim key -> occurrence time of the first incident meeting the rule
    first_met: dict[str, dict[str, int]] = field(default_factory=dict)
    start: int = 0
    end: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0


def run_policy(name: str, policy: Policy, events: Iterable[IncidentEvent]) -> PolicyRun:
    """Apply ``events`` in order to a fresh detector under ``policy``."""
    began, cpu = time.perf_counter(), time.process_time()
    detector = Detector(policy, forget=False)
    run = PolicyRun(name, tuple(r.id for r in policy.victim_rules))
    start = end = None
    for event in events:
        start = event.occurred_at if start is None else min(start, event.occurred_at)
        end = event.reported_at if end is None else max(end, event.reported_at)
        outcome = detector.apply(event)
        for e in outcome.escalations:
            if e.event not in ("raised", "upgraded"):
                continue
            tasking = e.tasking
            run.escalations.append(
                EscalationRecord(
                    e.escalation_id,
                    e.event,
                    e.subject_type,
                    e.subject_key,
                    e.level,
                    e.at,
                    len(tasking.actions) if tasking else 0,
                    tuple((r.every, r.first_due_at) for r in tasking.reviews) if tasking else (),
                )
            )
        run.case_reviews.extend((c.subject_key, c.occurred_at) for c in outcome.case_reviews)
    run.start, run.end = start or 0, end or 0
    first: dict[str, dict[str, int]] = {rule: {} for rule in (*run.victim_rules, ANY_VICTIM_RULE)}
    victim_rules = set(run.victim_rules)
    for assessment in detector.final_assessments().values():
        victim = assessment.victim_key
        if victim is None:
            continue
        for rule in assessment.rules_met:
            if rule in victim_rules:
                for key in (rule, ANY_VICTIM_RULE):
                    seen = first[key].get(victim)
                    if seen is None or assessment.occurred_at < seen:
                        first[key][victim] = assessment.occurred_at
    run.first_met = first
    run.seconds = time.perf_counter() - began
    run.cpu_seconds = time.process_time() - cpu
    return run


# -- comparison (pure) --------------------------------------------------------------------


def week_of(micros: int) -> str:
    year, week, _ = datetime.fromtimestamp(micros / 1e6, tz=UTC).isocalendar()
    return f"{year:04d}-W{week:02d}"


def reviews_falling_due(run: PolicyRun) -> int:
    """Supervisory reviews that fall due before the end of the history, assuming each is
    done on time and no escalation is closed; an upgrade replaces the schedule."""
    by_escalation: dict[str, list[EscalationRecord]] = defaultdict(list)
    for record in run.escalations:
        by_escalation[record.escalation_id].append(record)
    total = 0
    for records in by_escalation.values():
        records.sort(key=lambda r: r.at)
        for index, record in enumerate(records):
            until = records[index + 1].at if index + 1 < len(records) else run.end
            for every, first_due in record.reviews:
                if first_due <= until and every > 0:
                    total += (until - first_due) // every + 1
    return total


def summary_of(run: PolicyRun) -> dict[str, Any]:
    raised = [r for r in run.escalations if r.event == "raised"]
    return {
        "policy": run.name,
        "escalations_raised": len(raised),
        "escalations_upgraded": sum(r.event == "upgraded" for r in run.escalations),
        "raised_by_level": {lv: sum(r.level == lv for r in raised) for lv in LEVELS},
        "raised_by_subject": {
            s: sum(r.subject_type == s for r in raised) for s in ("victim", "location")
        },
        "actions_due": sum(r.actions for r in run.escalations),
        "reviews_due": reviews_falling_due(run),
        "case_reviews": len(run.case_reviews),
        "victims_meeting": {rule: len(v) for rule, v in run.first_met.items()},
        "seconds": round(run.seconds, 2),
        "cpu_seconds": round(run.cpu_seconds, 2),
    }


def weekly(runs: Sequence[PolicyRun]) -> tuple[list[str], dict[str, dict[str, list[int]]]]:
    """ISO weeks spanning every run, and per policy and level the escalations raised or
    upgraded to that level each week."""
    counts: dict[str, Counter[tuple[str, str]]] = {}
    weeks: set[str] = set()
    for run in runs:
        counter: Counter[tuple[str, str]] = Counter()
        for record in run.escalations:
            week = week_of(record.at)
            weeks.add(week)
            counter[(week, record.level)] += 1
        counts[run.name] = counter
    ordered = sorted(weeks)
    return ordered, {
        name: {lv: [c[(w, lv)] for w in ordered] for lv in LEVELS} for name, c in counts.items()
    }


def compare_rules(base: PolicyRun, other: PolicyRun) -> list[dict[str, Any]]:
    """For each victim rule id of either policy (and any victim rule): victims meeting it
    under both (earlier, later, the same incident under ``other``), or one only."""
    rows = []
    rules = list(dict.fromkeys([*base.victim_rules, *other.victim_rules, ANY_VICTIM_RULE]))
    for rule in rules:
        a, b = base.first_met.get(rule, {}), other.first_met.get(rule, {})
        both = a.keys() & b.keys()
        rows.append(
            {
                "rule": rule,
                "baseline": len(a),
                "other": len(b),
                "both": len(both),
                "earlier": sum(b[v] < a[v] for v in both),
                "later": sum(b[v] > a[v] for v in both),
                "same": sum(b[v] == a[v] for v in both),
                "only_baseline": len(a.keys() - b.keys()),
                "only_other": len(b.keys() - a.keys()),
            }
        )
    return rows


def overlap(base: PolicyRun, other: PolicyRun) -> dict[str, Any]:
    """Subjects escalated under both policies or one only, and case-review victims."""
    a = {(r.subject_type, r.subject_key) for r in base.escalations if r.event == "raised"}
    b = {(r.subject_type, r.subject_key) for r in other.escalations if r.event == "raised"}
    union = a | b
    ca = {s for s, _ in base.case_reviews}
    cb = {s for s, _ in other.case_reviews}
    return {
        "subjects_both": len(a & b),
        "subjects_only_baseline": len(a - b),
        "subjects_only_other": len(b - a),
        "jaccard": round(len(a & b) / len(union), 4) if union else 1.0,
        "case_review_subjects_both": len(ca & cb),
        "case_review_subjects_only_baseline": len(ca - cb),
        "case_review_subjects_only_other": len(cb - ca),
    }


def compare(runs: Sequence[PolicyRun]) -> dict[str, Any]:
    """Every policy's summary, and each other policy against the first."""
    if len(runs) < 2:
        raise ValueError("a backtest compares at least two policies")
    base = runs[0]
    weeks, series = weekly(runs)
    return {
        "baseline": base.name,
        "policies": [summary_of(r) for r in runs],
        "weeks": weeks,
        "weekly": series,
        "comparisons": [
            {"policy": other.name, "rules": compare_rules(base, other), **overlap(base, other)}
            for other in runs[1:]
        ],
    }


# -- the report -----------------------------------------------------------------------------


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def _sections(doc: dict[str, Any]) -> list[tuple[str, list[str], list[list[Any]]]]:
    """(title, header, rows) of every table in the report."""
    policies = doc["policies"]
    names = [p["policy"] for p in policies]
    summary_rows = [
        ["escalations raised", *(p["escalations_raised"] for p in policies)],
        *[[f"raised at {lv}", *(p["raised_by_level"][lv] for p in policies)] for lv in LEVELS],
        *[
            [f"raised for a {s}", *(p["raised_by_subject"][s] for p in policies)]
            for s in ("victim", "location")
        ],
        ["escalations upgraded", *(p["escalations_upgraded"] for p in policies)],
        ["actions tasked", *(p["actions_due"] for p in policies)],
        ["supervisory reviews falling due", *(p["reviews_due"] for p in policies)],
        ["case reviews triggered", *(p["case_reviews"] for p in policies)],
        ["run time (s, wall)", *(p["seconds"] for p in policies)],
        ["run time (s, CPU)", *(p["cpu_seconds"] for p in policies)],
    ]
    out = [("Summary and workload", ["", *names], summary_rows)]
    for comparison in doc["comparisons"]:
        other = comparison["policy"]
        out.append(
            (
                f"Victims meeting each rule: {other} against {doc['baseline']}",
                [
                    "rule",
                    doc["baseline"],
                    other,
                    "both",
                    f"earlier under {other}",
                    f"later under {other}",
                    "same incident",
                    f"only {doc['baseline']}",
                    f"only {other}",
                ],
                [
                    [
                        r["rule"],
                        r["baseline"],
                        r["other"],
                        r["both"],
                        r["earlier"],
                        r["later"],
                        r["same"],
                        r["only_baseline"],
                        r["only_other"],
                    ]
                    for r in comparison["rules"]
                ],
            )
        )
        out.append(
            (
                f"Overlap: {other} against {doc['baseline']}",
                ["", "both", f"only {doc['baseline']}", f"only {other}"],
                [
                    [
                        "escalated subjects",
                        comparison["subjects_both"],
                        comparison["subjects_only_baseline"],
                        comparison["subjects_only_other"],
                    ],
                    [
                        "case-review victims",
                        comparison["case_review_subjects_both"],
                        comparison["case_review_subjects_only_baseline"],
                        comparison["case_review_subjects_only_other"],
                    ],
                ],
            )
        )
    return out


def _charts(doc: dict[str, Any]) -> dict[str, str]:
    weeks = doc["weeks"]
    total = {
        name: [sum(v) for v in zip(*levels.values(), strict=True)] if weeks else []
        for name, levels in doc["weekly"].items()
    }
    made = {
        "escalations-per-week.svg": charts.line_chart(
            "Escalations raised or upgraded per week", weeks, total
        )
    }
    for level in LEVELS:
        made[f"escalations-per-week-{level}.svg"] = charts.line_chart(
            f"Escalations to {level} per week",
            weeks,
            {name: levels[level] for name, levels in doc["weekly"].items()},
        )
    names = [p["policy"] for p in doc["policies"]]
    made["workload.svg"] = charts.bar_chart(
        "Workload over the whole history",
        ["escalations raised", "actions tasked", "reviews falling due", "case reviews"],
        {
            p["policy"]: [
                p["escalations_raised"],
                p["actions_due"],
                p["reviews_due"],
                p["case_reviews"],
            ]
            for p in doc["policies"]
        },
        description="Per policy: " + ", ".join(names),
    )
    return made


def write_report(doc: dict[str, Any], output: Path, *, source: str = "") -> tuple[Path, Path]:
    """Write report.md, report.html, the charts and summary.json into ``output``."""
    output.mkdir(parents=True, exist_ok=True)
    made = _charts(doc)
    for name, drawing in made.items():
        (output / name).write_text(drawing, encoding="utf-8")
    (output / "summary.json").write_text(json.dumps(doc, indent=2), encoding="utf-8")
    title = "ASVAT policy backtest: " + " vs ".join(p["policy"] for p in doc["policies"])
    intro = (
        f"The same history{' (' + source + ')' if source else ''} replayed under each policy; "
        f"every other policy is compared with the baseline, {doc['baseline']}. Weeks are ISO "
        "weeks of the escalating incident's report time. Reviews falling due assume each "
        "review is done on time and no escalation is closed before the end of the history."
    )
    md = [f"# {title}", "", intro, ""]
    html = [
        "<!doctype html><html lang='en-GB'><head><meta charset='utf-8'>",
        f"<title>{escape(title)}</title><style>body{{font-family:sans-serif;max-width:60em;"
        "margin:2em auto}table{border-collapse:collapse}td,th{border:1px solid #999;"
        "padding:.2em .5em;text-align:right}td:first-child{text-align:left}</style></head>"
        f"<body><h1>{escape(title)}</h1><p>{escape(intro)}</p>",
    ]
    for heading, header, rows in _sections(doc):
        md += [f"## {heading}", "", *_table(header, rows), ""]
        html.append(f"<h2>{escape(heading)}</h2><table><tr>")
        html += [f"<th>{escape(str(h))}</th>" for h in header]
        html.append("</tr>")
        for row in rows:
            html.append("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>")
        html.append("</table>")
    md += ["## Charts", ""]
    html.append("<h2>Charts</h2>")
    for name, drawing in made.items():
        md += [f"![{name}]({name})", ""]
        html.append(f"<figure>{drawing}</figure>")
    html.append("</body></html>")
    md_path, html_path = output / "report.md", output / "report.html"
    md_path.write_text("\n".join(md), encoding="utf-8")
    html_path.write_text("".join(html), encoding="utf-8")
    return md_path, html_path


def _parse_chunk(
    chunk: list[tuple[int, str]], key: bytes, key_id: str, now_us: int
) -> tuple[list[IncidentEvent], list[tuple[int, str]]]:
    """Validate and pseudonymise lines as ``asvat replay`` does, except that the free text is
    not redacted: a backtest keeps events in memory only and writes counts, never text."""
    from asvat.contracts import validate_against, validate_incident
    from asvat.domain.identity import IdentityError, victim_key

    events: list[IncidentEvent] = []
    problems: list[tuple[int, str]] = []
    for number, text in chunk:
        try:
            obj: Any = json.loads(text)
        except json.JSONDecodeError as exc:
            problems.append((number, f"not valid JSON ({exc.msg})"))
            continue
        if isinstance(obj, dict) and "caller" not in obj and "victim_key" in obj:
            errors = validate_against("incident.pseudonymised.v1", obj)
        else:
            errors = validate_incident(obj, now_us=now_us, future_skew_us=_FUTURE_SKEW_US)
        if errors:
            problems.append((number, "; ".join(f"{e.field}: {e.reason}" for e in errors)))
            continue
        if "caller" in obj or "victim_key" not in obj:
            caller = obj.pop("caller", None)
            try:
                obj["victim_key"] = victim_key(caller if isinstance(caller, dict) else None, key)
            except IdentityError as exc:
                problems.append((number, str(exc)))
                continue
            obj["victim_key_id"] = key_id
        events.append(IncidentEvent.from_wire(obj))
    return events, problems


_FUTURE_SKEW_US = 10 * 365 * 86_400 * 1_000_000


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished child processes (the workers)."""
    import resource

    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _workers(wanted: int | None) -> int:
    import os

    if wanted is not None:
        return max(1, wanted)
    return max(1, min(len(os.sched_getaffinity(0)), 8))


def read_events(
    source: Path,
    *,
    key: bytes,
    key_id: str,
    err: IO[str] | None = None,
    workers: int | None = None,
) -> tuple[list[IncidentEvent], int]:
    """The valid events of an NDJSON file, in file order (parsed by ``workers`` processes);
    bad lines are counted and the first ten reported on ``err``."""
    from asvat.domain.timeutil import now_micros

    err = err if err is not None else sys.stderr
    with source.open("r", encoding="utf-8") as stream:
        lines = [(n, t) for n, t in enumerate(stream, start=1) if t.strip()]
    count = _workers(workers)
    size = max(1, -(-len(lines) // count))
    chunks = [lines[i : i + size] for i in range(0, len(lines), size)]
    args = [(c, key, key_id, now_micros()) for c in chunks]
    if count > 1 and len(chunks) > 1:
        import multiprocessing

        with multiprocessing.get_context("fork").Pool(count) as pool:
            parts = pool.starmap(_parse_chunk, args)
    else:
        parts = [_parse_chunk(*a) for a in args]
    events = [e for part, _ in parts for e in part]
    problems = [p for _, part in parts for p in part]
    for number, problem in problems[:10]:
        print(f"{source}:{number}: {problem}", file=err)
    return events, len(problems)


_SHARED: tuple[Sequence[tuple[str, Policy]], Sequence[IncidentEvent]] = ((), ())


def _run_shared(index: int) -> PolicyRun:
    policies, events = _SHARED
    name, policy = policies[index]
    return run_policy(name, policy, events)


def run_policies(
    policies: Sequence[tuple[str, Policy]],
    events: Sequence[IncidentEvent],
    *,
    workers: int | None = None,
) -> list[PolicyRun]:
    """:func:`run_policy` for each policy, in parallel processes when there are cores."""
    global _SHARED
    count = min(_workers(workers), len(policies))
    if count <= 1:
        return [run_policy(name, policy, events) for name, policy in policies]
    import multiprocessing

    _SHARED = (policies, events)  # inherited by the forked workers, not pickled
    try:
        with multiprocessing.get_context("fork").Pool(count) as pool:
            return pool.map(_run_shared, range(len(policies)))
    finally:
        _SHARED = ((), ())


def backtest(
    policies: Sequence[tuple[str, Policy]],
    source: Path,
    output: Path,
    *,
    key: bytes,
    key_id: str,
    err: IO[str] | None = None,
    workers: int | None = None,
) -> tuple[dict[str, Any], Path, Path]:
    """Run every policy over ``source`` and write the report into ``output``."""
    err = err if err is not None else sys.stderr
    began, cpu = time.perf_counter(), _cpu_seconds()
    events, bad = read_events(source, key=key, key_id=key_id, err=err, workers=workers)
    read_s = time.perf_counter() - began
    print(f"backtest: {len(events)} events read ({bad} invalid) in {read_s:.1f} s", file=err)
    runs = run_policies(policies, events, workers=workers)
    for run in runs:
        print(
            f"backtest: {run.name}: {len(run.escalations)} escalation events in "
            f"{run.seconds:.1f} s ({run.cpu_seconds:.1f} s of CPU)",
            file=err,
        )
    doc = compare(runs)
    doc["events"] = len(events)
    doc["invalid_lines"] = bad
    doc["seconds_total"] = round(time.perf_counter() - began, 2)
    doc["cpu_seconds_total"] = round(_cpu_seconds() - cpu, 2)  # this process and its workers
    md, html = write_report(doc, output, source=source.name)
    return doc, md, html
