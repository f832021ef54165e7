"""Crime data integrity: each reason a finalised ASB incident is flagged, and when none is."""

from __future__ import annotations

import json

import pytest

from asvat.domain.incident import IncidentEvent
from asvat.domain.integrity import IntegrityFinding, IntegrityFlag, check_integrity
from asvat.domain.policy import Policy, default_policy, load_policy_text

POLICY = default_policy()
MINIMAL = """
codes:
  ASBN: {class: asb, asb_category: nuisance}
scope: [asb]
rules:
  - {id: victim-28d, subject: victim, window: 28d, threshold: 3}
"""
# An ASB code that carries an associated crime type, and a code for a dispute.
WITH_CRIME_TYPE = load_policy_text(
    """
codes:
  ASBN: {class: asb, asb_category: nuisance}
  ASBD: {class: asb, asb_category: environmental, crime_type: criminal_damage}
  HARS: {class: crime, crime_type: harassment}
  SUSP: {class: other, crime_type: public_order}
  DISP: {class: non_crime, matter: dispute}
scope: [asb, crime, non_crime]
rules:
  - {id: victim-28d, subject: victim, window: 28d, threshold: 3}
"""
)


def event(
    *,
    opening: str = "ASBN",
    closing: str | None = "ASBN",
    event_type: str = "closed",
    vulnerability: frozenset[str] = frozenset(),
    description: str | None = None,
) -> IncidentEvent:
    return IncidentEvent(
        event_id="E1",
        incident_id="I1",
        sequence=1,
        event_type=event_type,
        occurred_at=1_700_000_000_000_000,
        reported_at=1_700_000_000_000_000,
        source="101",
        opening_code=opening,
        closing_code=closing,
        victim_key="v1",
        place=None,
        vulnerability=vulnerability,
        description=description,
    )


def check(e: IncidentEvent, policy: Policy = POLICY) -> tuple[IntegrityFlag, ...]:
    closing = policy.classify(e.closing_code) if e.closing_code else None
    return check_integrity(e, closing, policy.classify(e.opening_code), policy)


def summary(flags: tuple[IntegrityFlag, ...]) -> list[tuple[str, str | None]]:
    return [(f.reason, f.offence) for f in flags]


# One row per reason.
@pytest.mark.parametrize(
    ("e", "policy", "expected"),
    [
        (event(opening="HARS"), POLICY, [("opening_code", "harassment")]),
        (event(opening="CDAM"), POLICY, [("opening_code", "criminal_damage")]),
        (event(opening="PORD"), POLICY, [("opening_code", "public_order")]),
        (event(opening="MCOM"), POLICY, [("opening_code", "malicious_communications")]),
        (event(opening="HATE"), POLICY, [("opening_code", "hate")]),
        (event(closing="ASBD"), WITH_CRIME_TYPE, [("crime_type", "criminal_damage")]),
        (event(opening="SUSP"), WITH_CRIME_TYPE, [("crime_type", "public_order")]),
        (
            event(vulnerability=frozenset({"hate_motivated", "disability"})),
            POLICY,
            [("hate_motive", "hate")],
        ),
        (
            event(description="Windows SMASHED at no 4"),
            POLICY,
            [("description", "criminal_damage")],
        ),
        (
            event(description="Neighbour keeps harassing her"),
            POLICY,
            [("description", "harassment")],
        ),
        (event(description="a fight, then an affray"), POLICY, [("description", "public_order")]),
        (
            event(description="Receiving abusive   messages daily"),
            POLICY,
            [("description", "malicious_communications")],
        ),
        (event(description="shouted racist abuse"), POLICY, [("description", "hate")]),
    ],
)
def test_each_reason(e: IncidentEvent, policy: Policy, expected: list[tuple[str, str]]) -> None:
    flags = check(e, policy)
    assert summary(flags) == expected
    assert all(flag.detail for flag in flags)


# No flag: not finalised, finalised as a crime, cancelled, or nothing disclosed.
@pytest.mark.parametrize(
    ("e", "why"),
    [
        (event(opening="HARS", closing=None, event_type="updated"), "not finalised yet"),
        (event(opening="HARS", closing=None, event_type="closed"), "closed without a code"),
        (event(opening="ASBN", closing="HARS", description="smashed"), "finalised as a crime"),
        (event(opening="HARS", closing="CDAM"), "finalised as another crime"),
        (event(opening="HARS", event_type="cancelled"), "cancelled (duplicate or hoax)"),
        (event(opening="ASBN", description="Youths loud in the park"), "nothing disclosed"),
        (event(opening="DISP", closing="DISP", description="smashed"), "finalised as non-crime"),
        (event(opening="ASBN", closing="NFA", description="smashed"), "finalised as other"),
    ],
)
def test_no_flag(e: IncidentEvent, why: str) -> None:
    assert check(e) == (), why


# Whole words, any case: the phrase matched, never a word that merely contains it.
@pytest.mark.parametrize(
    ("description", "phrases"),
    [
        ("GRAFFITI on the wall", ("graffiti",)),
        ("graffiti, smashed and damaged", ("smashed", "graffiti", "damaged")),
        ("a smashedpotato stall", ()),
        ("graffitist convention", ()),
        ("he was harassed.", ()),  # "harassed" is harassment, not criminal damage
        ("they SET\n FIRE to the bin", ("set fire",)),
        ("settle fire-safety questions", ()),
    ],
)
def test_description_phrases_are_whole_words_any_case(
    description: str, phrases: tuple[str, ...]
) -> None:
    flags = [f for f in check(event(description=description)) if f.offence == "criminal_damage"]
    if phrases:
        (flag,) = flags
        assert flag.reason == "description"
        assert flag.phrases == phrases
    else:
        assert flags == []


def test_one_flag_per_offence_and_the_description_is_never_copied() -> None:
    text = "Victim threatened and harassed; car keyed the car door smashed"
    flags = check(event(description=text))
    assert summary(flags) == [("description", "harassment"), ("description", "criminal_damage")]
    assert flags[0].phrases == ("harassed", "threatened")  # in the policy's order
    wire = json.dumps([f.content() for f in flags])
    assert text not in wire
    assert "Victim" not in wire and "car door" not in wire


def test_reasons_combine_in_a_fixed_order_without_repeating_an_offence() -> None:
    e = event(
        opening="HARS",
        closing="ASBD",
        vulnerability=frozenset({"hate_motivated"}),
        description="harassing and racist",
    )
    flags = check(e, WITH_CRIME_TYPE)
    assert summary(flags) == [
        ("opening_code", "harassment"),
        ("crime_type", "criminal_damage"),
        ("hate_motive", "hate"),
        ("description", "harassment"),
        ("description", "hate"),
    ]
    assert flags[0].code == "HARS" and flags[1].code == "ASBD"


def test_disclosing_codes_can_be_listed() -> None:
    policy = load_policy_text(
        """
codes:
  ASBN: {class: asb, asb_category: nuisance}
  HARS: {class: crime, crime_type: harassment}
  WELF: {class: other}
scope: [asb, crime]
rules:
  - {id: victim-28d, subject: victim, window: 28d, threshold: 3}
integrity: {disclosing_codes: [WELF]}
"""
    )
    assert summary(check(event(opening="WELF"), policy)) == [("opening_code", None)]
    # HARS is not listed, but its crime type still discloses harassment.
    assert summary(check(event(opening="HARS"), policy)) == [("crime_type", "harassment")]


def test_hate_motive_reason_can_be_switched_off() -> None:
    policy = load_policy_text(
        MINIMAL + "integrity: {hate_motive: false}\n",
    )
    assert check(event(vulnerability=frozenset({"hate_motivated"})), policy) == ()


def test_a_force_can_flag_finalised_non_crime_too() -> None:
    policy = load_policy_text(
        """
codes:
  ASBN: {class: asb, asb_category: nuisance}
  DISP: {class: non_crime, matter: dispute}
scope: [asb, non_crime]
rules:
  - {id: victim-28d, subject: victim, window: 28d, threshold: 3}
integrity: {finalised_as: [asb, non_crime]}
"""
    )
    flags = check(event(opening="DISP", closing="DISP", description="smashed"), policy)
    assert summary(flags) == [("description", "criminal_damage")]


def test_finding_has_a_deterministic_id_and_no_description() -> None:
    e = event(opening="HARS", description="she was threatened")
    flags = check(e)
    finding = IntegrityFinding.of(e, flags)
    again = IntegrityFinding.of(event(opening="HARS", description="He THREATENED her"), check(e))
    assert finding.finding_id == again.finding_id and len(finding.finding_id) == 64
    content = finding.content()
    assert content["incident_id"] == "I1" and content["closing_code"] == "ASBN"
    assert [f["reason"] for f in content["flags"]] == ["opening_code", "description"]
    assert "she was threatened" not in json.dumps(content)
    other = IntegrityFinding.of(e, flags[:1])
    assert other.finding_id != finding.finding_id
