"""Risk per incident: each factor, the documented worked examples, the explanation, and
that a vulnerability factor only ever raises a level."""

from __future__ import annotations

from itertools import combinations

import pytest

from asvat.domain.assessment import Assessment
from asvat.domain.engine import DetectionEngine
from asvat.domain.incident import VULNERABILITY_FACTORS, IncidentEvent
from asvat.domain.location import Place
from asvat.domain.policy import CodeClass, Policy, default_policy, load_policy_text
from asvat.domain.risk import (
    NO_RISK,
    RiskAssessment,
    level_rank,
    score_assessment,
    score_incident,
)

POLICY = default_policy()
NUISANCE = CodeClass("asb", asb_category="nuisance")
PERSONAL = CodeClass("asb", asb_category="personal")
ENVIRONMENTAL = CodeClass("asb", asb_category="environmental")
DISPUTE = CodeClass("non_crime", matter="dispute")


def ids(n: int) -> tuple[str, ...]:
    return tuple(f"I{i}" for i in range(1, n + 1))


def score(
    code_class: CodeClass = NUISANCE,
    vulnerability: tuple[str, ...] = (),
    met: dict[str, int] | None = None,
    *,
    policy: Policy = POLICY,
    repeat_location: bool | None = None,
) -> RiskAssessment:
    """Score with rules met given as {rule id: count}."""
    met = met or {}
    return score_incident(
        policy,
        code_class=code_class,
        vulnerability=vulnerability,
        rule_counts=met,
        contributing={rule: ids(count) for rule, count in met.items()},
        repeat_location=repeat_location,
    )


# The worked examples documented in asvat/policy/default.yaml, one per line there.
@pytest.mark.parametrize(
    ("name", "code_class", "vulnerability", "met", "expected_score", "expected_level"),
    [
        ("one nuisance report", NUISANCE, (), {}, 3, "standard"),
        ("one personal report", PERSONAL, (), {}, 6, "standard"),
        ("personal, disability", PERSONAL, ("disability",), {}, 10, "medium"),
        ("personal, hate motive", PERSONAL, ("hate_motivated",), {}, 14, "medium"),
        (
            "3rd nuisance in 28 days",
            NUISANCE,
            (),
            {"victim-28d": 3, "case-review": 3},
            15,
            "medium",
        ),
        (
            "3rd personal in 28 days, mental health",
            PERSONAL,
            ("mental_health",),
            {"victim-28d": 3, "case-review": 3},
            22,
            "high",
        ),
        (
            "5th nuisance in 28 days",
            NUISANCE,
            (),
            {"victim-28d": 5, "case-review": 5},
            23,
            "high",
        ),
        ("4th anonymous nuisance near", NUISANCE, (), {"location-7d-100m": 4}, 12, "medium"),
    ],
)
def test_documented_worked_examples(
    name: str,
    code_class: CodeClass,
    vulnerability: tuple[str, ...],
    met: dict[str, int],
    expected_score: int,
    expected_level: str,
) -> None:
    risk = score(code_class, vulnerability, met)
    assert (risk.score, risk.level) == (expected_score, expected_level), name
    assert sum(r.weight for r in risk.reasons) == risk.score


# One row per factor: the reason it gives and its weight under the default policy.
@pytest.mark.parametrize(
    ("code_class", "vulnerability", "met", "factor", "value", "weight"),
    [
        (PERSONAL, (), {}, "asb_category", "personal", 6),
        (NUISANCE, (), {}, "asb_category", "nuisance", 3),
        (ENVIRONMENTAL, (), {}, "asb_category", "environmental", 1),
        (CodeClass("crime", crime_type="harassment"), (), {}, "crime_type", "harassment", 6),
        (
            CodeClass("crime", crime_type="criminal_damage"),
            (),
            {},
            "crime_type",
            "criminal_damage",
            4,
        ),
        (CodeClass("crime", crime_type="public_order"), (), {}, "crime_type", "public_order", 4),
        (
            CodeClass("crime", crime_type="malicious_communications"),
            (),
            {},
            "crime_type",
            "malicious_communications",
            4,
        ),
        (CodeClass("crime", crime_type="hate"), (), {}, "hate_motive", "hate_motivated", 8),
        (DISPUTE, ("hate_motivated",), {}, "hate_motive", "hate_motivated", 8),
        (DISPUTE, ("disability",), {}, "vulnerability", "disability", 4),
        (DISPUTE, ("mental_health",), {}, "vulnerability", "mental_health", 4),
        (DISPUTE, ("age_elderly",), {}, "vulnerability", "age_elderly", 3),
        (DISPUTE, ("child",), {}, "vulnerability", "child", 4),
        (DISPUTE, ("isolation",), {}, "vulnerability", "isolation", 3),
        (DISPUTE, ("previous_victim",), {}, "vulnerability", "previous_victim", 2),
        (DISPUTE, ("self_identified",), {}, "vulnerability", "self_identified", 4),
        (DISPUTE, (), {"location-7d-100m": 4}, "repeat_location", None, 3),
    ],
)
def test_each_factor_gives_its_reason_and_weight(
    code_class: CodeClass,
    vulnerability: tuple[str, ...],
    met: dict[str, int],
    factor: str,
    value: str | None,
    weight: int,
) -> None:
    risk = score(code_class, vulnerability, met)
    found = [r for r in risk.reasons if r.factor == factor]
    assert len(found) == 1
    assert (found[0].value, found[0].weight) == (value, weight)
    assert found[0].detail


# Each rule of the default policy, at and over its threshold.
@pytest.mark.parametrize(
    ("rule_id", "count", "threshold", "weight"),
    [
        ("victim-28d", 3, 3, 6),
        ("victim-28d", 4, 3, 8),
        ("victim-28d", 7, 3, 14),
        ("case-review", 3, 3, 6),
        ("case-review", 5, 3, 10),
        ("location-7d-100m", 4, 4, 6),
        ("location-7d-100m", 6, 4, 10),
    ],
)
def test_each_rule_met_scores_with_how_far_over(
    rule_id: str, count: int, threshold: int, weight: int
) -> None:
    risk = score(DISPUTE, (), {rule_id: count}, repeat_location=False)
    (reason,) = risk.reasons
    assert reason.factor == "rule"
    assert (reason.rule_id, reason.count, reason.threshold, reason.weight) == (
        rule_id,
        count,
        threshold,
        weight,
    )
    assert reason.incident_ids == ids(count)
    assert rule_id in reason.detail and f"threshold {threshold}" in reason.detail
    if count > threshold:
        assert f"2 × {count - threshold} over the threshold" in reason.detail


def test_the_explanation_names_rules_incidents_and_factors_in_a_fixed_order() -> None:
    risk = score_incident(
        POLICY,
        code_class=CodeClass("asb", asb_category="personal", crime_type="harassment"),
        vulnerability=frozenset({"self_identified", "hate_motivated", "disability"}),
        rule_counts={"victim-28d": 4, "case-review": 4, "location-7d-100m": 4},
        contributing={
            "victim-28d": ("I9", "I2", "I5", "I7"),
            "case-review": ("I2", "I5", "I7", "I9"),
            "location-7d-100m": ("L1", "L2", "L3", "I9"),
        },
    )
    assert [(r.factor, r.rule_id or r.value) for r in risk.reasons] == [
        ("rule", "victim-28d"),
        ("rule", "case-review"),
        ("rule", "location-7d-100m"),
        ("repeat_location", None),
        ("asb_category", "personal"),
        ("crime_type", "harassment"),
        ("hate_motive", "hate_motivated"),
        ("vulnerability", "disability"),
        ("vulnerability", "self_identified"),
    ]
    first = risk.reasons[0]
    assert first.incident_ids == ("I2", "I5", "I7", "I9")  # sorted
    assert "4 incidents of this victim in 28d" in first.detail
    assert "within 100 m of this place in 7d" in risk.reasons[2].detail
    content = risk.content()
    assert content["risk_level"] == "high" and content["risk_score"] == risk.score
    assert content["reasons"][0] == {
        "factor": "rule",
        "weight": 8,
        "detail": first.detail,
        "rule_id": "victim-28d",
        "count": 4,
        "threshold": 3,
        "incident_ids": ["I2", "I5", "I7", "I9"],
    }
    assert content["reasons"][4] == {
        "factor": "asb_category",
        "weight": 6,
        "detail": "ASB category personal",
        "value": "personal",
    }
    # The same inputs in another order give the same explanation.
    again = score_incident(
        POLICY,
        code_class=CodeClass("asb", asb_category="personal", crime_type="harassment"),
        vulnerability=["disability", "hate_motivated", "self_identified"],
        rule_counts={"location-7d-100m": 4, "case-review": 4, "victim-28d": 4},
        contributing={
            "location-7d-100m": ("I9", "L3", "L2", "L1"),
            "case-review": ("I9", "I7", "I5", "I2"),
            "victim-28d": ("I2", "I5", "I7", "I9"),
        },
    )
    assert again == risk


def test_hate_is_weighed_once_whether_recorded_or_coded() -> None:
    both = score(CodeClass("crime", crime_type="hate"), ("hate_motivated",))
    assert [r.factor for r in both.reasons] == ["hate_motive"]
    assert both.score == 8
    assert "recorded as a vulnerability factor" in both.reasons[0].detail
    assert "crime type is hate" in both.reasons[0].detail


def test_an_unweighted_crime_type_gives_no_reason() -> None:
    assert score(CodeClass("crime", crime_type="burglary")).reasons == ()


def test_repeat_location_can_be_given_by_the_caller() -> None:
    assert [r.factor for r in score(DISPUTE, repeat_location=True).reasons] == ["repeat_location"]
    assert score(DISPUTE, (), {"location-7d-100m": 4}, repeat_location=False).score == 6


def test_an_unknown_rule_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="not in the policy"):
        score(met={"no-such-rule": 3})


ZERO_VULNERABILITY = load_policy_text(
    """
codes:
  ASBN: {class: asb, asb_category: nuisance}
scope: [asb]
rules:
  - {id: victim-28d, subject: victim, window: 28d, threshold: 3}
risk:
  weights:
    vulnerability: {disability: 0, isolation: 0}
"""
)


@pytest.mark.parametrize(
    ("floor", "met", "vulnerability", "expected"),
    [
        ("{when: rule_met, level: medium}", {"victim-28d": 3}, ("disability",), "medium"),
        ("{when: rule_met, level: medium}", {}, ("disability",), "standard"),
        ("{when: rule_met, level: medium}", {"victim-28d": 3}, (), "standard"),
        ("{when: rule_met, level: high}", {"victim-28d": 3}, ("isolation",), "high"),
        ("{when: always, level: medium}", {}, ("disability",), "medium"),
        ("{when: always, level: medium}", {}, ("hate_motivated",), "medium"),
        ("{when: never, level: high}", {"victim-28d": 3}, ("disability",), "standard"),
    ],
)
def test_vulnerability_floor(
    floor: str, met: dict[str, int], vulnerability: tuple[str, ...], expected: str
) -> None:
    # Weights low enough that the score alone stays standard: only the floor lifts it.
    policy = load_policy_text(
        """
codes:
  ASBN: {class: asb, asb_category: nuisance}
scope: [asb]
rules:
  - {id: victim-28d, subject: victim, window: 28d, threshold: 3}
risk:
  levels: {medium: 30, high: 60}
  vulnerability_floor: FLOOR
""".replace("FLOOR", floor)
    )
    risk = score(NUISANCE, vulnerability, met, policy=policy)
    assert risk.level == expected
    floors = [r for r in risk.reasons if r.factor == "vulnerability_floor"]
    if expected != "standard":
        (reason,) = floors
        assert reason.weight == 0 and reason.value == expected
        assert f"at least {expected}" in reason.detail
        assert "alone gives standard" in reason.detail
    else:
        assert floors == []


def test_the_floor_never_lowers_a_level_the_score_reached() -> None:
    risk = score(PERSONAL, ("disability",), {"victim-28d": 6, "case-review": 6})
    assert risk.level == "high"
    assert all(r.factor != "vulnerability_floor" for r in risk.reasons)


SCENARIOS = [
    (code_class, met)
    for code_class in (NUISANCE, PERSONAL, ENVIRONMENTAL, DISPUTE, CodeClass("crime", "h"))
    for met in ({}, {"victim-28d": 3}, {"victim-28d": 4, "case-review": 4}, {"location-7d-100m": 5})
]


@pytest.mark.parametrize("policy", [POLICY, ZERO_VULNERABILITY], ids=["default", "zero-weights"])
def test_a_vulnerability_factor_never_lowers_a_level(policy: Policy) -> None:
    """Every scenario, every set of factors, every factor added: the level never drops."""
    factors = VULNERABILITY_FACTORS
    subsets = [frozenset(c) for n in range(len(factors) + 1) for c in combinations(factors, n)]
    for code_class, met in SCENARIOS:
        met = met if set(met) <= {r.id for r in policy.rules} else {}
        levels = {
            s: level_rank(score(code_class, tuple(s), met, policy=policy).level) for s in subsets
        }
        for subset in subsets:
            for factor in set(factors) - subset:
                assert levels[subset | {factor}] >= levels[subset], (
                    code_class,
                    met,
                    subset,
                    factor,
                )


def test_score_assessment_reads_an_engine_assessment() -> None:
    engine = DetectionEngine(POLICY)
    base = 1_700_000_000_000_000
    day = 86_400_000_000
    last: Assessment | None = None
    for n in range(3):
        outcome = engine.apply(
            IncidentEvent(
                event_id=f"E{n}",
                incident_id=f"I{n}",
                sequence=0,
                event_type="opened",
                occurred_at=base + n * day,
                reported_at=base + n * day,
                source="101",
                opening_code="ASBN",
                closing_code=None,
                victim_key="v1",
                place=Place(430_000.0 + n * 1000, 560_000.0),
            )
        )
        last = outcome.assessments[0]
    assert last is not None
    risk = score_assessment(POLICY, last, code_class=NUISANCE, vulnerability={"isolation"})
    assert (risk.level, risk.score) == ("medium", 18)
    assert risk.reasons[0].incident_ids == ("I0", "I1", "I2")
    out_of_scope = Assessment("X", False, "cancelled", "nuisance", base, "v1", None, (), {}, {})
    assert score_assessment(POLICY, out_of_scope, code_class=NUISANCE) is NO_RISK
