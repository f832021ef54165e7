"""`asvat backtest` on a small history whose differences between two policies are known:
the default (third incident in 28 days) against the shipped example (second in 21 days)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from asvat.backtest import ANY_VICTIM_RULE, compare, reviews_falling_due, run_policy
from asvat.cli import main
from asvat.domain.identity import pseudonymise_event
from asvat.domain.incident import IncidentEvent
from asvat.policy import load_policy

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = ROOT / "asvat" / "policy" / "default.yaml"
EXAMPLE = ROOT / "asvat" / "policy" / "examples" / "victim-21d-threshold-2.yaml"
START = datetime(2024, 1, 1, 20, tzinfo=UTC)
KEY = b"test-only-hmac-key-0123456789abcdef"

#: victim -> days of their incidents. Under the default (3 in 28 days) V2 meets the rule
#: on day 8 and V3 on day 27; under the example (2 in 21 days) V1 on day 10, V2 earlier
#: (day 5) and V3 on the same incident (day 25 and day 0 are 25 days apart). V4 never.
HISTORY = {"V1": [0, 10], "V2": [0, 5, 8], "V3": [0, 25, 27], "V4": [0, 30]}


def events() -> list[dict[str, Any]]:
    out = []
    n = 0
    for v, (victim, days) in enumerate(HISTORY.items()):
        for day in days:
            n += 1
            at = START + timedelta(days=day)
            out.append(
                {
                    "event_id": f"E-{n}",
                    "incident_id": f"I-{n}",
                    "sequence": 0,
                    "event_type": "opened",
                    "occurred_at": at.isoformat(),
                    "reported_at": (at + timedelta(minutes=10)).isoformat(),
                    "source": "101",
                    "opening_code": "ASBP",
                    "caller": {"person_id": victim},
                    # every incident 1 km from every other: no location rule is met
                    "location": {"easting": 420000 + 1000 * n, "northing": 560000 + 1000 * v},
                }
            )
    out.sort(key=lambda e: str(e["reported_at"]))
    return out


def decoded() -> list[IncidentEvent]:
    return [IncidentEvent.from_wire(pseudonymise_event(e, KEY, "k")) for e in events()]


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    runs = [
        run_policy("default", load_policy(DEFAULT), decoded()),
        run_policy("21d-2", load_policy(EXAMPLE), decoded()),
    ]
    return compare(runs)


def rule_row(doc: dict[str, Any], rule: str) -> dict[str, Any]:
    return next(r for r in doc["comparisons"][0]["rules"] if r["rule"] == rule)


def test_victims_meeting_each_rule_earlier_later_or_under_one_policy(doc: dict[str, Any]) -> None:
    assert rule_row(doc, "victim-28d") | {} == {
        "rule": "victim-28d",
        "baseline": 2,
        "other": 0,
        "both": 0,
        "earlier": 0,
        "later": 0,
        "same": 0,
        "only_baseline": 2,
        "only_other": 0,
    }
    assert rule_row(doc, "victim-21d")["other"] == 3
    # V2 earlier, V3 the same incident, V1 only under the example
    anyrule = rule_row(doc, ANY_VICTIM_RULE)
    assert (anyrule["baseline"], anyrule["other"], anyrule["both"]) == (2, 3, 2)
    assert (anyrule["earlier"], anyrule["same"], anyrule["later"]) == (1, 1, 0)
    assert (anyrule["only_baseline"], anyrule["only_other"]) == (0, 1)
    # the case-review rule (3 in 183 days) is the same under both: V2 and V3
    review = rule_row(doc, "case-review")
    assert (review["baseline"], review["other"], review["same"]) == (2, 2, 2)


def test_escalations_workload_case_reviews_and_overlap(doc: dict[str, Any]) -> None:
    base, other = doc["policies"]
    assert base["raised_by_subject"] == {"victim": 2, "location": 0}
    assert other["raised_by_subject"] == {"victim": 3, "location": 0}
    assert base["case_reviews"] == other["case_reviews"] == 2
    comparison = doc["comparisons"][0]
    assert (comparison["subjects_both"], comparison["subjects_only_other"]) == (2, 1)
    assert comparison["subjects_only_baseline"] == 0
    assert comparison["jaccard"] == round(2 / 3, 4)
    assert comparison["case_review_subjects_both"] == 2
    assert other["actions_due"] > base["actions_due"] > 0
    # every escalation event counted once per week, whatever its level
    for policy in doc["policies"]:
        weekly = doc["weekly"][policy["policy"]]
        total = sum(sum(values) for values in weekly.values())
        assert total == policy["escalations_raised"] + policy["escalations_upgraded"]


def test_reviews_falling_due_are_counted_until_the_end_of_the_history() -> None:
    run = run_policy("default", load_policy(DEFAULT), decoded())
    day = 86_400 * 1_000_000
    for record in run.escalations:
        for every, first_due in record.reviews:
            assert every >= 14 * day and first_due > record.at
    # the history spans 30 days: no 28-day (or longer) review falls due after a day-8 raise
    # beyond the end, so the count equals reviews whose first date is before the end
    expected = sum(
        1 for r in run.escalations for every, first_due in r.reviews if first_due <= run.end
    )
    assert reviews_falling_due(run) == expected


def test_the_command_writes_the_report_and_says_where(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "events.jsonl"
    source.write_text("".join(json.dumps(e) + "\n" for e in events()) + "{bad\n")
    monkeypatch.setenv("ASVAT_DATA_DIR", str(tmp_path / "data"))
    out = tmp_path / "report"
    args = ["backtest", "--policy", str(DEFAULT), "--policy", str(EXAMPLE)]
    code = main([*args, "--input", str(source), "--output", str(out)])
    assert code == 0
    printed = capsys.readouterr()
    assert str(out / "report.md") in printed.out and str(out / "report.html") in printed.out
    assert "events.jsonl:11: not valid JSON" in printed.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["events"] == 10 and summary["invalid_lines"] == 1
    assert [p["policy"] for p in summary["policies"]] == ["default", "victim-21d-threshold-2"]
    markdown = (out / "report.md").read_text()
    assert "| victim-21d | 0 | 3 |" in markdown
    assert "![escalations-per-week.svg](escalations-per-week.svg)" in markdown
    html = (out / "report.html").read_text()
    assert html.count("<svg") == 4 and (out / "workload.svg").read_text().startswith("<svg")


def test_one_policy_is_not_a_comparison(tmp_path: Path) -> None:
    assert main(["backtest", "--policy", str(DEFAULT), "--input", "x", "--output", "y"]) == 2
