"""Victim identity: one person, one victim_key, however the call handler spelt them."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from asvat.domain.identity import (
    IdentityError,
    identity_basis,
    normalise_name,
    normalise_phone,
    pseudonymise_event,
    victim_key,
)

KEY = b"unit-test-key-0123456789abcdef-0123"
OTHER_KEY = b"another-unit-test-key-0123456789ab"
HEX64 = re.compile(r"^[0-9a-f]{64}$")


@pytest.mark.parametrize("spelling", ["07412 345678", "+44 7412 345678", "447412345678"])
def test_phone_spellings_normalise_to_e164(spelling: str) -> None:
    assert normalise_phone(spelling) == "+447412345678"


def test_the_three_phone_spellings_give_one_victim_key() -> None:
    keys = {
        victim_key({"phone": spelling}, KEY)
        for spelling in ("07412 345678", "+44 7412 345678", "447412345678")
    }
    assert len(keys) == 1
    [only] = keys
    assert only is not None and HEX64.match(only)


@given(st.from_regex(r"7[1-57-9][0-9]{8}", fullmatch=True))
def test_any_valid_uk_mobile_links_across_spellings(national: str) -> None:
    try:
        e164 = normalise_phone("0" + national)
    except IdentityError:
        assume(False)
        raise
    assert normalise_phone("+44 " + national[:4] + " " + national[4:]) == e164
    assert normalise_phone("44" + national) == e164
    assert victim_key({"phone": "0" + national}, KEY) == victim_key({"phone": "44" + national}, KEY)


def test_different_numbers_give_different_keys() -> None:
    assert victim_key({"phone": "07412 345678"}, KEY) != victim_key({"phone": "07412 345679"}, KEY)


def test_an_invalid_phone_is_an_error_that_does_not_repeat_it() -> None:
    with pytest.raises(IdentityError) as caught:
        normalise_phone("12345")
    assert caught.value.field == "caller.phone"
    assert "12345" not in str(caught.value)
    assert caught.value.reason.startswith("expected a valid phone number")


def test_name_and_dob_ignore_case_spacing_and_accents() -> None:
    spellings = ["Zoë O'Neil", "  zoe   o'neil ", "ZOE O'NEIL", "Zoe\tO'Neil"]
    keys = {victim_key({"name": name, "date_of_birth": "1968-05-17"}, KEY) for name in spellings}
    assert len(keys) == 1 and None not in keys
    assert normalise_name("  Zoë  O'Neil") == "zoe o'neil"


def test_name_with_another_date_of_birth_is_another_person() -> None:
    one = victim_key({"name": "Zoe O'Neil", "date_of_birth": "1968-05-17"}, KEY)
    two = victim_key({"name": "Zoe O'Neil", "date_of_birth": "1968-05-18"}, KEY)
    assert one != two


def test_person_id_wins_over_phone_and_phone_over_name() -> None:
    by_person = victim_key({"person_id": "NB-P-1"}, KEY)
    assert victim_key({"person_id": "NB-P-1", "phone": "07412 345678"}, KEY) == by_person
    assert victim_key({"person_id": "NB-P-1", "phone": "0191 498 0123"}, KEY) == by_person
    assert by_person != victim_key({"phone": "07412 345678"}, KEY)
    by_phone = victim_key({"phone": "07412 345678"}, KEY)
    with_name = {"phone": "07412 345678", "name": "Sam", "date_of_birth": "1990-01-01"}
    assert victim_key(with_name, KEY) == by_phone
    assert identity_basis({"person_id": " NB-P-1 ", "phone": "07412 345678"}) == "person:NB-P-1"


@pytest.mark.parametrize(
    "caller",
    [
        None,
        {},
        {"postcode": "NE1 4XX"},
        {"name": "Sam Example"},  # a name alone is not an identity
        {"date_of_birth": "1990-01-01"},
        {"person_id": "   ", "phone": ""},
    ],
)
def test_anonymous_callers_have_no_key(caller: dict[str, str] | None) -> None:
    assert victim_key(caller, KEY) is None


def test_the_key_is_keyed() -> None:
    caller = {"phone": "07412 345678"}
    assert victim_key(caller, KEY) != victim_key(caller, OTHER_KEY)


def test_pseudonymised_event_carries_no_raw_caller_value() -> None:
    caller = {
        "person_id": "NB-P-0012345",
        "phone": "07412 345678",
        "name": "Quentin Raw-Caller",
        "date_of_birth": "1971-08-09",
        "postcode": "NE99 9ZZ",
    }
    event = {
        "event_id": "e-1",
        "incident_id": "NB-1",
        "sequence": 0,
        "caller": dict(caller),
        "location": {"lat": 54.9, "lon": -1.6},
    }
    out = pseudonymise_event(event, KEY, "k7")

    assert "caller" not in out
    assert out["victim_key"] == victim_key(caller, KEY)
    assert out["victim_key_id"] == "k7"
    assert {k: v for k, v in out.items() if not k.startswith("victim_key")} == {
        k: v for k, v in event.items() if k != "caller"
    }
    text = json.dumps(out)
    for raw in (*caller.values(), "7412345678", "+447412345678", "Raw-Caller", "0012345"):
        assert raw not in text
    assert event["caller"] == caller  # the input is not changed


def test_pseudonymising_an_anonymous_event_gives_a_null_key() -> None:
    out = pseudonymise_event({"event_id": "e", "incident_id": "i"}, KEY, "k1")
    assert out["victim_key"] is None
    assert out["victim_key_id"] == "k1"


def test_pseudonymising_twice_changes_nothing() -> None:
    once = pseudonymise_event({"event_id": "e", "caller": {"phone": "07412 345678"}}, KEY, "k1")
    assert pseudonymise_event(once, OTHER_KEY, "k2") == once
