"""The policy's optional ``retention:`` section: MoPI defaults, merging and validation."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from asvat.domain.policy import PolicyError, default_policy, load_policy_text
from asvat.domain.timeutil import parse_duration
from services.api.retention import cutoffs

MINIMAL = """
codes:
  ASBN: {class: asb, asb_category: nuisance}
scope: [asb]
max_lateness: 30d
rules:
  - {id: victim-28d, subject: victim, window: 28d, threshold: 3}
"""


def test_default_retention_follows_mopi_six_years() -> None:
    retention = default_policy().retention
    assert retention.incidents == parse_duration("2192d")  # six years
    assert retention.escalations == parse_duration("2192d")
    assert retention.audit == parse_duration("2557d")  # seven: outlives what it is about
    assert retention.every == parse_duration("1d")


def test_a_policy_without_the_section_gets_the_defaults() -> None:
    assert load_policy_text(MINIMAL).retention == default_policy().retention


def test_a_key_given_replaces_only_that_key() -> None:
    policy = load_policy_text(MINIMAL + "retention: {incidents: 400d, every: 6h}\n")
    assert policy.retention.incidents == parse_duration("400d")
    assert policy.retention.every == parse_duration("6h")
    assert policy.retention.audit == parse_duration("2557d")


@pytest.mark.parametrize(
    ("section", "key", "expected"),
    [
        ("retention: {incidents: 6y}", "retention.incidents", "a duration such as '28d'"),
        ("retention: {audit: 0d}", "retention.audit", "a duration greater than zero"),
        ("retention: {forever: 1d}", "retention.forever", "one of incidents, escalations"),
        ("retention: [1d]", "retention", "a mapping"),
        (
            "retention: {incidents: 3000d}",
            "retention.audit",
            "at least retention.incidents (3000d): the audit trail must outlive",
        ),
        (
            "retention: {incidents: 57d}",
            "retention.incidents",
            "at least the longest rule window plus max_lateness (58d)",
        ),
    ],
)
def test_bad_retention_names_the_key(section: str, key: str, expected: str) -> None:
    with pytest.raises(PolicyError) as caught:
        load_policy_text(MINIMAL + section + "\n", origin="force.yaml")
    assert caught.value.key == key
    assert expected in str(caught.value)
    assert str(caught.value).startswith(f"force.yaml: {key}: expected ")


def test_cutoffs_are_now_less_each_period() -> None:
    now = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    cut = cutoffs(default_policy().retention, now)
    assert cut == {
        "incidents": datetime(2020, 11, 25, 12, 0, tzinfo=UTC),
        "escalations": datetime(2020, 11, 25, 12, 0, tzinfo=UTC),
        "audit": datetime(2019, 11, 26, 12, 0, tzinfo=UTC),
    }
