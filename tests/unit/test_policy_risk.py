"""The policy's optional sections: risk, case_review, integrity, tasking.

A policy without them gets the shipped defaults; a section given is merged over the shipped
one; every bad entry stops loading with a message naming its key.
"""

from __future__ import annotations

import pytest

from asvat.domain.incident import VULNERABILITY_FACTORS
from asvat.domain.policy import (
    Policy,
    PolicyError,
    default_policy,
    load_policy_text,
    shipped_sections,
)
from asvat.domain.timeutil import parse_duration

MINIMAL = """
codes:
  ASBN: {class: asb, asb_category: nuisance}
  BURG: {class: crime, crime_type: burglary}
scope: [asb]
rules:
  - {id: victim-28d, subject: victim, window: 28d, threshold: 3}
"""


def load(extra: str) -> Policy:
    return load_policy_text(MINIMAL + extra, origin="my-policy.yaml")


def test_shipped_defaults_are_as_documented() -> None:
    policy = default_policy()
    weights = policy.risk.weights
    assert (weights.rule_met, weights.per_incident_over_threshold) == (6, 2)
    assert dict(weights.asb_category) == {"personal": 6, "nuisance": 3, "environmental": 1}
    assert set(weights.vulnerability) == set(VULNERABILITY_FACTORS) - {"hate_motivated"}
    assert dict(policy.risk.levels) == {"medium": 8, "high": 20}
    review = policy.case_review
    assert (review.complaints, review.count_by) == (3, "victim")
    assert review.window == parse_duration("183d")
    assert review.max_report_delay == parse_duration("31d")
    assert policy.integrity.finalised_as == frozenset({"asb"})
    assert policy.integrity.disclosing_codes is None
    assert set(policy.integrity.crime_types) == {
        "harassment",
        "criminal_damage",
        "public_order",
        "malicious_communications",
        "hate",
    }
    medium, high = policy.tasking.levels["medium"], policy.tasking.levels["high"]
    assert [(r.rank, r.every) for r in medium.reviews] == [
        ("sergeant", parse_duration("28d")),
        ("inspector", parse_duration("56d")),
    ]
    assert [(r.rank, r.every) for r in high.reviews] == [
        ("sergeant", parse_duration("14d")),
        ("inspector", parse_duration("28d")),
        ("chief_inspector", parse_duration("56d")),
    ]
    assert {a.id: a.within for a in medium.actions}["call_back"] == parse_duration("24h")
    assert {a.id: a.within for a in high.actions}["visit"] == parse_duration("4h")
    assert {"single_point_of_contact", "case_conference"} <= {a.id for a in high.actions}


def test_minimal_policy_gets_every_shipped_section() -> None:
    policy = load("")
    shipped = shipped_sections()
    assert policy.risk == shipped.risk
    assert policy.case_review == shipped.case_review
    assert policy.integrity == shipped.integrity
    assert policy.tasking == shipped.tasking
    assert policy.risk == default_policy().risk


def test_a_policy_built_in_code_gets_the_shipped_sections() -> None:
    base = load("")
    built = Policy(base.codes, base.scope, base.unknown_code, base.max_lateness, base.rules)
    assert built.risk == shipped_sections().risk
    assert built.tasking == shipped_sections().tasking


def test_a_section_given_is_merged_over_the_shipped_one() -> None:
    policy = load(
        """
risk:
  levels: {medium: 5}
  weights:
    vulnerability: {disability: 9}
    crime_type: {burglary: 2}
integrity:
  offences:
    harassment: [pestered]
tasking:
  medium:
    reviews: [{rank: sergeant, every: 7d}]
"""
    )
    shipped = shipped_sections()
    assert dict(policy.risk.levels) == {"medium": 5, "high": 20}
    assert policy.risk.weights.vulnerability["disability"] == 9
    assert policy.risk.weights.vulnerability["isolation"] == 3  # kept from the shipped
    assert policy.risk.weights.crime_type["burglary"] == 2  # a crime type its codes use
    assert policy.risk.weights.asb_category == shipped.risk.weights.asb_category
    harassment = [p.phrase for p in policy.integrity.phrases if p.offence == "harassment"]
    assert harassment == ["pestered"]  # a list replaces the shipped list whole
    assert any(p.offence == "criminal_damage" for p in policy.integrity.phrases)
    assert [r.rank for r in policy.tasking.levels["medium"].reviews] == ["sergeant"]
    assert policy.tasking.levels["high"] == shipped.tasking.levels["high"]
    assert policy.case_review == shipped.case_review


def test_an_empty_section_means_the_shipped_one() -> None:
    assert load("risk:\n").risk == shipped_sections().risk


def test_case_review_location_variant_and_no_report_delay() -> None:
    policy = load(
        "case_review: {count_by: location_distinct_reporters, max_report_delay: null, "
        "radius_m: 50}\n"
    )
    assert policy.case_review.count_by == "location_distinct_reporters"
    assert policy.case_review.max_report_delay is None
    assert policy.case_review.radius_m == 50.0


def test_negative_category_weight_is_allowed_in_order() -> None:
    policy = load("risk: {weights: {asb_category: {environmental: -2}}}\n")
    assert policy.risk.weights.asb_category["environmental"] == -2


def test_disclosing_codes_must_be_codes_of_the_policy() -> None:
    policy = load("integrity: {disclosing_codes: [BURG]}\n")
    assert policy.integrity.disclosing_codes == frozenset({"BURG"})


@pytest.mark.parametrize(
    ("extra", "key", "expected"),
    [
        # risk: unknown factors
        ("risk: {weights: {loudness: 3}}", "risk.weights.loudness", "one of rule_met"),
        (
            "risk: {weights: {vulnerability: {tall: 3}}}",
            "risk.weights.vulnerability.tall",
            "a vulnerability factor",
        ),
        (
            "risk: {weights: {vulnerability: {hate_motivated: 3}}}",
            "risk.weights.vulnerability.hate_motivated",
            "risk.weights.hate_motive",
        ),
        (
            "risk: {weights: {crime_type: {arson_typo: 3}}}",
            "risk.weights.crime_type.arson_typo",
            "a crime type",
        ),
        ("risk: {weights: {crime_type: {hate: 3}}}", "risk.weights.crime_type.hate", "hate_motive"),
        (
            "risk: {weights: {asb_category: {noisy: 3}}}",
            "risk.weights.asb_category.noisy",
            "one of personal",
        ),
        ("risk: {colour: red}", "risk.colour", "one of weights"),
        # risk: negative weights where none is allowed
        ("risk: {weights: {rule_met: -1}}", "risk.weights.rule_met", "negative"),
        (
            "risk: {weights: {per_incident_over_threshold: -1}}",
            "risk.weights.per_incident_over_threshold",
            "negative",
        ),
        ("risk: {weights: {repeat_location: -3}}", "risk.weights.repeat_location", "negative"),
        ("risk: {weights: {hate_motive: -3}}", "risk.weights.hate_motive", "negative"),
        (
            "risk: {weights: {vulnerability: {disability: -1}}}",
            "risk.weights.vulnerability.disability",
            "negative",
        ),
        (
            "risk: {weights: {crime_type: {harassment: -1}}}",
            "risk.weights.crime_type.harassment",
            "negative",
        ),
        ("risk: {weights: {rule_met: 2.5}}", "risk.weights.rule_met", "a whole number"),
        ("risk: {weights: {rule_met: true}}", "risk.weights.rule_met", "a whole number"),
        # risk: categories out of order, levels out of order
        (
            "risk: {weights: {asb_category: {environmental: 9}}}",
            "risk.weights.asb_category",
            "personal >= nuisance >= environmental",
        ),
        ("risk: {levels: {medium: 20, high: 8}}", "risk.levels", "increasing order"),
        ("risk: {levels: {medium: 20, high: 20}}", "risk.levels", "increasing order"),
        ("risk: {levels: {medium: 0}}", "risk.levels.medium", "at least 1"),
        ("risk: {levels: {critical: 40}}", "risk.levels.critical", "one of medium, high"),
        (
            "risk: {vulnerability_floor: {when: sometimes}}",
            "risk.vulnerability_floor.when",
            "one of never",
        ),
        (
            "risk: {vulnerability_floor: {level: standard}}",
            "risk.vulnerability_floor.level",
            "medium or high",
        ),
        # case_review
        ("case_review: {complaints: 0}", "case_review.complaints", "at least 1"),
        ("case_review: {window: six months}", "case_review.window", "a duration"),
        ("case_review: {max_report_delay: 0d}", "case_review.max_report_delay", "greater than"),
        ("case_review: {count_by: street}", "case_review.count_by", "location_distinct_reporters"),
        ("case_review: {classes: [asb, crimes]}", "case_review.classes[1]", "one of asb"),
        ("case_review: {classes: []}", "case_review.classes", "at least one class"),
        ("case_review: {radius_m: 0}", "case_review.radius_m", "greater than 0"),
        ("case_review: {rule: case-review}", "case_review.rule", "one of complaints"),
        # integrity
        ("integrity: {finalised_as: [crime]}", "integrity.finalised_as[0]", "other than crime"),
        ("integrity: {finalised_as: [asbx]}", "integrity.finalised_as[0]", "one of asb"),
        ("integrity: {disclosing_codes: [NOPE]}", "integrity.disclosing_codes[0]", "in codes"),
        ("integrity: {hate_motive: maybe}", "integrity.hate_motive", "true or false"),
        ("integrity: {offences: {arson_typo: [fire]}}", "integrity.offences.arson_typo", "offence"),
        ("integrity: {offences: {harassment: pest}}", "integrity.offences.harassment", "a list"),
        (
            "integrity: {offences: {harassment: ['']}}",
            "integrity.offences.harassment[0]",
            "non-empty",
        ),
        (
            "integrity: {offences: {harassment: ['!!']}}",
            "integrity.offences.harassment[0]",
            "a word",
        ),
        # tasking
        ("tasking: {review_notice: soon}", "tasking.review_notice", "a duration"),
        ("tasking: {critical: {}}", "tasking.critical", "one of review_notice"),
        (
            "tasking: {medium: {actions: [{id: call_back, within: 1y}]}}",
            "tasking.medium.actions[0].within",
            "a duration",
        ),
        (
            "tasking: {medium: {actions: [{id: a}, {id: a}]}}",
            "tasking.medium.actions[1].id",
            "not used before",
        ),
        (
            "tasking: {high: {actions: [{id: a, subjects: [street]}]}}",
            "tasking.high.actions[0].subjects[0]",
            "victim or location",
        ),
        (
            "tasking: {high: {reviews: [{rank: sergeant}]}}",
            "tasking.high.reviews[0].every",
            "a duration",
        ),
        (
            "tasking: {high: {reviews: [{rank: sergeant, every: 14d}, {rank: sergeant, "
            "every: 7d}]}}",
            "tasking.high.reviews[1].rank",
            "not used before",
        ),
        ("risk: [1, 2]", "risk", "a mapping"),
    ],
)
def test_bad_section_names_the_key(extra: str, key: str, expected: str) -> None:
    with pytest.raises(PolicyError) as caught:
        load(extra + "\n")
    assert caught.value.key == key
    message = str(caught.value)
    assert message.startswith(f"my-policy.yaml: {key}: expected")
    assert expected in message


def test_unknown_top_level_section_is_still_refused() -> None:
    with pytest.raises(PolicyError) as caught:
        load("riks: {}\n")
    assert caught.value.key == "riks"
    assert "risk" in str(caught.value)
