"""The detector searches a description only for the integrity phrases it can match
(``_PhraseFilter``): the flags are exactly those of searching every phrase."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from asvat.domain.detector import _PhraseFilter
from asvat.domain.incident import IncidentEvent
from asvat.domain.integrity import check_integrity
from asvat.domain.policy import default_policy, load_policy_text

POLICY = default_policy()
WORDS = sorted({word for p in POLICY.integrity.phrases for word in p.phrase.split()})
# Case and look-alike traps: the long s and the Kelvin sign match s and k in a
# case-insensitive pattern, dotted capital I lower-cases to two characters.
PIECES = [*WORDS, "threat", "harassments", "ſtalking", "\u212aeyed", "İ", "é", "_", "'", "-"]
SEPARATORS = [" ", "  ", "\t", "\n", ", ", ".", "-", "_", "", "\u00a0", "\u2003"]


@st.composite
def descriptions(draw: st.DrawFn) -> str:
    parts = []
    for _ in range(draw(st.integers(0, 8))):
        word = draw(st.sampled_from(PIECES))
        case = draw(st.sampled_from(["lower", "upper", "title", "same"]))
        word = {"lower": word.lower(), "upper": word.upper(), "title": word.title()}.get(
            case, word
        )
        parts.append(word)
        parts.append(draw(st.sampled_from(SEPARATORS)))
    return "".join(parts)


def flags_both_ways(description: str, policy: object = POLICY) -> tuple[object, object]:
    assert policy is POLICY or hasattr(policy, "integrity")
    event = IncidentEvent(
        event_id="E", incident_id="I", sequence=1, event_type="closed", occurred_at=0,
        reported_at=0, source="101", opening_code="ASBN", closing_code="ASBN",
        victim_key=None, place=None, description=description,
    )
    cls = POLICY.classify("ASBN")
    full = check_integrity(event, cls, cls, POLICY)
    filtered = check_integrity(event, cls, cls, _PhraseFilter(POLICY).policy_for(description))
    return full, filtered


@settings(max_examples=300, deadline=None)
@given(descriptions())
def test_filtered_flags_equal_searching_every_phrase(description: str) -> None:
    full, filtered = flags_both_ways(description)
    assert filtered == full


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=60))
def test_any_text(description: str) -> None:
    full, filtered = flags_both_ways(description)
    assert filtered == full


def test_the_usual_phrases_are_found_and_others_skipped() -> None:
    phrases = _PhraseFilter(POLICY).policy_for("Youths SMASHED the  window; graffiti").integrity
    found = {p.phrase for p in phrases.phrases}
    assert {"smashed", "graffiti"} <= found
    assert "harass" not in found
    assert _PhraseFilter(POLICY).policy_for("Noise from a party.").integrity.phrases in [
        (),
        tuple(p for p in POLICY.integrity.phrases if "'" in p.phrase),
    ]


def test_a_policy_with_unusual_phrases_still_flags_exactly() -> None:
    policy = load_policy_text(
        "codes: {ASBN: {class: asb, asb_category: nuisance}}\nscope: [asb]\n"
        "rules: [{id: v, subject: victim, window: 28d, threshold: 3}]\n"
        "integrity: {finalised_as: [asb], disclosing_codes: null, hate_motive: true,\n"
        "  offences: {criminal_damage: [\"café window\", \"won't stop\", \"x-ray\"]}}\n"
    )
    for text in ["The CAFÉ  window", "he won't stop", "X-RAY", "cafe window", "xray"]:
        event = IncidentEvent(
            event_id="E", incident_id="I", sequence=1, event_type="closed", occurred_at=0,
            reported_at=0, source="101", opening_code="ASBN", closing_code="ASBN",
            victim_key=None, place=None, description=text,
        )
        cls = policy.classify("ASBN")
        assert check_integrity(
            event, cls, cls, _PhraseFilter(policy).policy_for(text)
        ) == check_integrity(event, cls, cls, policy), text
