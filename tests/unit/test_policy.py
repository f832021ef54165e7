"""The policy file: the shipped default loads, and every bad policy names its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from asvat.domain.policy import PolicyError, default_policy, load_policy_text
from asvat.domain.timeutil import parse_duration
from asvat.policy import load_policy

MINIMAL = """
codes:
  ASBN: {class: asb, asb_category: nuisance}
scope: [asb]
rules:
  - {id: victim-28d, subject: victim, window: 28d, threshold: 3}
"""


def test_default_policy_has_the_documented_rules() -> None:
    policy = default_policy()
    rules = {rule.id: rule for rule in policy.rules}
    assert set(rules) == {"victim-28d", "case-review", "location-7d-100m"}
    assert rules["victim-28d"].window == parse_duration("28d")
    assert rules["case-review"].max_report_delay == parse_duration("31d")
    assert rules["location-7d-100m"].radius_m == 100.0
    assert policy.scope == frozenset({"asb", "crime", "non_crime"})
    assert policy.unknown_code == "reject"
    assert policy.max_lateness == parse_duration("400d")
    assert (
        policy.classify("ASBP") is not None and policy.classify("ASBP").asb_category == "personal"
    )  # type: ignore[union-attr]
    assert policy.classify("NOPE") is None


def test_minimal_policy_gets_defaults_for_optional_keys() -> None:
    policy = load_policy_text(MINIMAL)
    assert policy.unknown_code == "reject"
    assert policy.max_lateness == parse_duration("400d")
    assert policy.location_rules == ()


def test_unknown_code_other_classifies_as_other() -> None:
    policy = load_policy_text(MINIMAL + "unknown_code: other\n")
    found = policy.classify("ZZZ")
    assert found is not None and found.cls == "other"


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        ("codes: {}\nscope: [asb]\nrules: []", "codes", "at least one code"),
        (MINIMAL.replace("class: asb,", "class: asbx,"), "codes.ASBN.class", "one of asb"),
        (
            MINIMAL.replace("asb_category: nuisance", "asb_category: loud"),
            "codes.ASBN.asb_category",
            "personal",
        ),
        (MINIMAL.replace("scope: [asb]", "scope: [asb, crimes]"), "scope[1]", "one of asb"),
        (MINIMAL.replace("window: 28d", "window: 28x"), "rules[0].window", "a duration"),
        (MINIMAL.replace("window: 28d", "window: 0d"), "rules[0].window", "greater than zero"),
        (MINIMAL.replace("threshold: 3", "threshold: 0"), "rules[0].threshold", "at least 1"),
        (MINIMAL.replace("threshold: 3", "threshold: three"), "rules[0].threshold", "whole number"),
        (
            MINIMAL.replace("subject: victim", "subject: street"),
            "rules[0].subject",
            "victim or location",
        ),
        (
            MINIMAL.replace("subject: victim,", "subject: location,"),
            "rules[0].radius_m",
            "metres greater than 0",
        ),
        (
            MINIMAL + "  - {id: victim-28d, subject: victim, window: 1d, threshold: 2}\n",
            "rules[1].id",
            "not used before",
        ),
        (
            MINIMAL.replace("threshold: 3}", "threshold: 3, colour: red}"),
            "rules[0].colour",
            "one of",
        ),
        (MINIMAL + "max_lateness: soon\n", "max_lateness", "a duration"),
        (MINIMAL + "unknown_code: ignore\n", "unknown_code", "reject or other"),
        (MINIMAL + "extras: 1\n", "extras", "one of the sections"),
        ("codes: [1, 2\n", "(file)", "valid YAML"),
        (MINIMAL.replace("scope: [asb]\n", ""), "scope", "present"),
    ],
)
def test_bad_policy_names_the_key_and_what_was_expected(text: str, key: str, expected: str) -> None:
    with pytest.raises(PolicyError) as caught:
        load_policy_text(text, origin="my-policy.yaml")
    assert caught.value.key == key
    message = str(caught.value)
    assert message.startswith(f"my-policy.yaml: {key}: expected")
    assert expected in message


def test_load_policy_from_file_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(MINIMAL)
    assert [r.id for r in load_policy(path).rules] == ["victim-28d"]
    with pytest.raises(PolicyError, match="readable policy file"):
        load_policy(tmp_path / "missing.yaml")
