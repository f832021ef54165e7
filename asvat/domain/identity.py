"""Victim identity: the strongest caller identifier, pseudonymised with a keyed HMAC.

The raw identifiers (person reference, phone, name, date of birth, postcode) never leave
the ingest boundary: only ``victim_key`` does. The same person gives the same key whether
the phone is written ``07412 345678``, ``+44 7412 345678`` or ``447412345678``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import phonenumbers

DEFAULT_REGION = "GB"

#: Caller fields that are personal data and are removed at the ingest boundary.
CALLER_FIELDS = ("person_id", "phone", "name", "date_of_birth", "postcode")


class IdentityError(ValueError):
    """A caller identifier that cannot be normalised (the message names the field)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


_PLAIN_NUMBER = re.compile(r"^\+?[\d\s().-]+$")


def normalise_phone(raw: str, region: str = DEFAULT_REGION) -> str:
    """Return the phone number in E.164 (``+447412345678``).

    A number written without a country code is read in ``region``; ``447412345678``
    (a country code without the plus) is read as international when it is not a valid
    national number.
    """
    text = str(raw).strip()
    # Fast path: the spellings of one number usually differ only in spacing, a leading 0
    # (GB's national prefix) or "+"/"00". Bring them to one +CC form first, so the
    # expensive validation below runs once per number, not once per spelling.
    if region == "GB" and _PLAIN_NUMBER.match(text):
        digits = re.sub(r"\D", "", text)
        if text.startswith("+"):
            canonical = "+" + digits
        elif digits.startswith("00"):
            canonical = "+" + digits[2:]
        elif digits.startswith("0"):
            canonical = "+44" + digits[1:]
        else:
            canonical = "+" + digits
        found = _valid_e164(canonical, region)
        if found is not None:
            return found
    candidates = [text]
    digits = re.sub(r"\D", "", text)
    if not text.startswith("+") and not text.startswith("0") and digits:
        candidates.append("+" + digits)
    for candidate in candidates:
        found = _valid_e164(candidate, region)
        if found is not None:
            return found
    raise IdentityError(
        "caller.phone", f"expected a valid phone number, got {len(text)} characters"
    )


@lru_cache(maxsize=131_072)
def _valid_e164(candidate: str, region: str) -> str | None:
    """E.164 form of ``candidate`` if phonenumbers calls it a valid number, else None."""
    try:
        number = phonenumbers.parse(candidate, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))


def normalise_name(raw: str) -> str:
    """Case, spacing and accents ignored: ``"  Zoë  O'Neil"`` → ``"zoe o'neil"``."""
    decomposed = unicodedata.normalize("NFKD", str(raw))
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return " ".join(stripped.casefold().split())


def identity_basis(caller: Mapping[str, Any], region: str = DEFAULT_REGION) -> str | None:
    """The strongest identifier as a normalised string, or ``None`` for an anonymous caller.

    Order: ``person_id``, else the phone in E.164, else name with date of birth.
    """
    person_id = caller.get("person_id")
    if isinstance(person_id, str) and person_id.strip():
        return "person:" + person_id.strip()
    phone = caller.get("phone")
    if isinstance(phone, str) and phone.strip():
        return "phone:" + normalise_phone(phone, region)
    name, dob = caller.get("name"), caller.get("date_of_birth")
    if isinstance(name, str) and name.strip() and isinstance(dob, str) and dob.strip():
        return "namedob:" + normalise_name(name) + "|" + dob.strip()
    return None


def victim_key(
    caller: Mapping[str, Any] | None, key: bytes, region: str = DEFAULT_REGION
) -> str | None:
    """Keyed HMAC-SHA256 (hex) of the caller's strongest identifier; ``None`` if anonymous."""
    if not caller:
        return None
    basis = identity_basis(caller, region)
    if basis is None:
        return None
    return hmac.new(key, basis.encode("utf-8"), hashlib.sha256).hexdigest()


def pseudonymise_event(
    event: Mapping[str, Any], key: bytes, key_id: str, region: str = DEFAULT_REGION
) -> dict[str, Any]:
    """Return a copy of a raw incident event with ``caller`` replaced by ``victim_key``.

    The copy carries ``victim_key`` (hex or null) and ``victim_key_id`` (which HMAC key made
    it). No raw caller field survives. An event that already carries a ``victim_key`` and no
    ``caller`` is returned unchanged apart from the copy.
    """
    out = {k: v for k, v in event.items() if k != "caller"}
    if "caller" in event or "victim_key" not in out:
        caller = event.get("caller")
        out["victim_key"] = victim_key(caller if isinstance(caller, Mapping) else None, key, region)
        out["victim_key_id"] = key_id
    return out
