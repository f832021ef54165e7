"""`asvat replay` over the real Northumbria 2022 ASB year (synthetic callers layered on by
the seeded demo generator): it runs end to end, and shuffling and redelivering the same
events changes nothing in its output."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from asvat.cli import main
from asvat.demo import northumbria_incidents

RULES = ("victim-28d", "case-review", "location-7d-100m")


@pytest.fixture(scope="module")
def year(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return [json.dumps(e) for e in northumbria_incidents(seed=2022)]


def run_replay(tmp: Path, lines: list[str], name: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    source = tmp / f"{name}.jsonl"
    source.write_text("\n".join(lines) + "\n")
    output = tmp / f"{name}.out.jsonl"
    monkeypatch.setenv("ASVAT_DATA_DIR", str(tmp / "data"))  # same generated HMAC key
    code = main(["replay", "--input", str(source), "--output", str(output), "--no-progress"])
    assert code == 0
    return output


def test_the_real_year_replays_end_to_end(
    year: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    in_order = run_replay(tmp_path, year, "in-order", monkeypatch).read_text().splitlines()
    assessments = [json.loads(line) for line in in_order]
    ids = [a["incident_id"] for a in assessments]
    assert ids == sorted(ids) and len(ids) == len(set(ids))
    # every incident generated from the 39,706 records is there unless it ended out of scope
    incidents = {json.loads(line)["incident_id"] for line in year}
    assert 30_000 < len(assessments) <= len(incidents) == 39_706
    met = {rule: sum(rule in a["rules_met"] for a in assessments) for rule in RULES}
    assert all(n > 100 for n in met.values()), met
    for a in assessments:
        assert set(a["rule_counts"]) == set(RULES)
        assert a["rules_met"] == sorted(a["contributing"])
        for rule, contributors in a["contributing"].items():
            assert a["incident_id"] in contributors or rule == "case-review"
            assert len(contributors) == a["rule_counts"][rule]
        assert a["victim_key"] is None or len(a["victim_key"]) == 64

    levels = {a["risk_level"] for a in assessments}
    assert levels == {"standard", "medium", "high"}
    assert any(a["case_review_threshold_met"] for a in assessments)
    assert any(a["integrity_flags"] for a in assessments)


def test_shuffled_and_redelivered_history_gives_the_same_output(
    year: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A quarter of the year (the full year takes minutes on a loaded 2-core machine; the
    detector's own tests shuffle real data too)."""
    part = year[:10_000]
    in_order = run_replay(tmp_path, part, "in-order", monkeypatch).read_text()
    rng = random.Random(7)
    shuffled = part + rng.sample(part, len(part) // 20)  # 5 % delivered twice
    rng.shuffle(shuffled)
    assert run_replay(tmp_path, shuffled, "shuffled", monkeypatch).read_text() == in_order


def test_bad_lines_are_reported_with_numbers_and_fail_the_run(
    year: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    lines = [*year[:50], "{not json", json.dumps({"event_id": "x"}), *year[50:100]]
    source = tmp_path / "bad.jsonl"
    source.write_text("\n".join(lines) + "\n")
    output = tmp_path / "bad.out.jsonl"
    monkeypatch.setenv("ASVAT_DATA_DIR", str(tmp_path / "data"))
    args = ["replay", "--input", str(source), "--output", str(output), "--no-progress"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert f"{source}:51: not valid JSON" in err
    assert f"{source}:52: " in err and "incident_id: required but missing" in err
    assert "2 invalid" in err
    assert output.exists()  # the valid part is still written
    assert main([*args, "--skip-invalid"]) == 0
