"""Names normalised for case, spacing, accents, apostrophes and hyphens; free text cleared
of the caller's identifiers and of phone numbers before it leaves ingest."""

from __future__ import annotations

import json
from typing import Any

import phonenumbers
import pytest

from asvat.domain.identity import (
    national_number_of,
    normalise_name,
    pseudonymise_event,
    redact_free_text,
    victim_key,
)

KEY = b"unit-test-key-0123456789abcdef-0123"
CALLER = {
    "person_id": "NB-P-0012345",
    "phone": "07412 345678",
    "name": "José O'Brien-Quixote",
    "date_of_birth": "1971-08-09",
    "postcode": "NE99 9ZZ",
}


@pytest.mark.parametrize(
    "spelling",
    [
        "José  O'Brien",
        "jose o'brien",
        "JOSE O'BRIEN",
        "  José\tO’Brien ",  # right single quotation mark
        "José O´Brien",  # acute accent typed as an apostrophe
        "Jose O' Brien",
        "Jose\u0301 O'Brien",  # e + combining acute
    ],
)
def test_name_spellings_of_one_person(spelling: str) -> None:
    assert normalise_name(spelling) == "jose o'brien"


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("Smith-Jones", "Smith Jones"),
        ("Smith-Jones", "smith – jones"),  # en dash
        ("Zoë Ærøskøbing", "zoe ærøskøbing"),  # letters that are not accented stay
        ("ＳＡＭ", "sam"),  # full-width letters (NFKD)
    ],
)
def test_names_that_are_the_same(one: str, other: str) -> None:
    assert normalise_name(one) == normalise_name(other)


def test_a_name_without_its_apostrophe_is_another_spelling() -> None:
    # Deliberately not guessed: "OBrien" and "O Brien" may be other people.
    assert len({normalise_name(n) for n in ("O'Brien", "OBrien", "O Brien")}) == 3


def test_name_keys_link_across_accents_and_apostrophes() -> None:
    keys = {
        victim_key({"name": name, "date_of_birth": "1980-02-03"}, KEY)
        for name in ("José  O'Brien", "jose o’brien", "JOSE O' BRIEN")
    }
    assert len(keys) == 1


def test_free_text_loses_every_spelling_of_the_callers_identifiers() -> None:
    text = (
        "José O’Brien-Quixote (jose obrien? no: JOSE O'BRIEN QUIXOTE) rang from +44 (0)7412 "
        "345-678, also 7412345678 and 00447412345678; dob 9/8/1971 (1971-08-09), ref "
        "nb-p-0012345, home NE999ZZ. Mr Quixote says a neighbour on 0191 498 0123 shouts."
    )
    out = redact_free_text(text, CALLER)
    for raw in (
        "José",
        "JOSE",
        "O’Brien",
        "O'BRIEN",
        "Quixote",
        "QUIXOTE",
        "7412",
        "345-678",
        "345678",
        "9/8/1971",
        "1971-08-09",
        "nb-p-0012345",
        "NE999ZZ",
        "498 0123",
    ):
        assert raw not in out, (raw, out)
    assert "[name]" in out and "[phone]" in out and "[date_of_birth]" in out
    assert "[person_id]" in out and "[postcode]" in out
    assert "rang from" in out and "says a neighbour on" in out  # the rest is kept


def test_free_text_without_a_caller_still_loses_phone_numbers() -> None:
    assert redact_free_text("Bus stop, Palace Green; ring 07412 345678", None) == (
        "Bus stop, Palace Green; ring [phone]"
    )


def test_short_name_parts_and_other_words_are_kept() -> None:
    caller = {"name": "Al de Sam", "phone": "07412 345678"}
    out = redact_free_text("Al de Sam and Samantha met Al at the dealer's", caller)
    assert out == "[name] and Samantha met Al at the dealer's"


def test_pseudonymised_event_has_its_free_text_redacted_and_the_input_kept() -> None:
    event: dict[str, Any] = {
        "event_id": "e-1",
        "incident_id": "NB-1",
        "caller": dict(CALLER),
        "description": "Caller José O'Brien-Quixote, 07412 345678, kids kicking the door",
        "location": {"lat": 54.9, "lon": -1.6, "address": "12 Quixote Terrace, NE99 9ZZ"},
    }
    out = pseudonymise_event(event, KEY, "k1")
    text = json.dumps(out, ensure_ascii=False)
    for raw in (*CALLER.values(), "O'Brien", "Quixote", "7412"):
        assert raw not in text
    assert out["description"] == "Caller [name], [phone], kids kicking the door"
    assert out["location"] == {
        "lat": 54.9,
        "lon": -1.6,
        "address": "12 [name] Terrace, [postcode]",
    }
    assert event["location"]["address"] == "12 Quixote Terrace, NE99 9ZZ"  # input unchanged
    assert "Quixote" in event["description"]


def test_an_already_pseudonymised_event_is_left_alone() -> None:
    done = {"event_id": "e", "victim_key": "a" * 64, "description": "ring 07412 345678"}
    assert pseudonymise_event(done, KEY, "k1") == done


@pytest.mark.parametrize(
    "kind",
    [
        phonenumbers.PhoneNumberType.MOBILE,
        phonenumbers.PhoneNumberType.FIXED_LINE,
        phonenumbers.PhoneNumberType.TOLL_FREE,
    ],
)
def test_the_national_number_comes_from_the_e164_form_as_the_library_parses_it(
    kind: int,
) -> None:
    """Every region's example numbers (Italy's leading zero included), and the
    non-geographic ones: the country code found by prefix, not by parsing again."""
    regions = phonenumbers.SUPPORTED_REGIONS
    numbers = [phonenumbers.example_number_for_type(r, kind) for r in regions]
    numbers += [
        phonenumbers.example_number_for_non_geo_entity(code)
        for code in phonenumbers.COUNTRY_CODES_FOR_NON_GEO_REGIONS
    ]
    checked = 0
    for number in numbers:
        if number is None:
            continue
        e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
        assert national_number_of(e164) == str(phonenumbers.parse(e164).national_number), e164
        checked += 1
    assert checked > 150  # regions without an example of the kind are skipped
