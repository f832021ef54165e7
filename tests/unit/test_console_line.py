"""The console line ``asvat up`` prints for each escalation: why it was raised."""

from __future__ import annotations

from typing import Any

from asvat.domain.detector import Detector
from asvat.domain.policy import default_policy
from asvat.supervisor import escalation_line
from services.repeat_detector.messages import escalation_message
from tests.unit.test_detector import event


def escalations(*events: Any) -> list[dict[str, Any]]:
    detector = Detector(default_policy())
    found = []
    for incident in events:
        found += [escalation_message(e, 0) for e in detector.apply(incident).escalations]
    return found


def test_a_single_report_escalated_by_its_risk_names_the_score_and_factors() -> None:
    (raised,) = escalations(event(1, 0, code="ASBP", vulnerability=frozenset({"disability"})))
    assert raised.get("rule_id") is None  # no repeat: the risk of this one report
    # The default policy's own example: one personal report, a victim with a disability,
    # 6 + 4 = 10 -> medium.
    assert escalation_line(raised) == (
        f"ESCALATION medium: victim {'a' * 16} incident I1 (no repeat rule met; risk score 10"
        " from asb_category personal +6, vulnerability disability +4)"
    )


def test_a_repeat_names_the_rules_met() -> None:
    found = escalations(*(event(n, n * 0.5, code="ASBN") for n in range(1, 6)))
    line = escalation_line(found[-1])
    rules = sorted({r["rule_id"] for r in found[-1]["reasons"] if r.get("rule_id")})
    assert rules, "five reports in three days meet a victim rule"
    assert line.endswith(f"(rules met: {', '.join(rules)})")
