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
from collections.abc import Iterable, Mapping, Sequence
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


#: Apostrophe look-alikes call handlers type (right and left single quotes, modifier
#: letter apostrophe, prime, grave and acute accents): all read as ``'``.
_APOSTROPHES = str.maketrans(dict.fromkeys("\u2019\u2018\u02bc\u2032`\u00b4", "'"))
#: Hyphens and dashes: a double-barrelled name is one person however it is joined.
_HYPHENS = re.compile(r"[-\u2010\u2011\u2012\u2013\u2014\u2015\u2212]")


def normalise_name(raw: str) -> str:
    """Case, spacing, accents and joining ignored: ``"  José  O’Brien"`` → ``"jose o'brien"``.

    NFKD, then combining marks removed, then casefold. Every apostrophe look-alike becomes
    ``'`` and the spaces beside it go (``O' Brien`` = ``O'Brien``); a name spelt without one
    (``OBrien``) is a different spelling and stays different. Hyphens and dashes are read
    as spaces (``Smith-Jones`` = ``Smith Jones`` = ``Smith – Jones``).
    """
    text = str(raw).translate(_APOSTROPHES)  # before NFKD, which splits the acute accent
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    spaced = _HYPHENS.sub(" ", stripped.casefold())
    return re.sub(r"\s*'\s*", "'", " ".join(spaced.split()))


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
    return _hmac_hex(key, basis)


def _hmac_hex(key: bytes, basis: str) -> str:
    return hmac.new(key, basis.encode("utf-8"), hashlib.sha256).hexdigest()


# -- free text ------------------------------------------------------------------------------

#: What a redacted identifier is replaced with in free text, by caller field.
REDACTED = {
    "phone": "[phone]",
    "name": "[name]",
    "person_id": "[person_id]",
    "date_of_birth": "[date_of_birth]",
    "postcode": "[postcode]",
}
#: Free-text fields of an incident event that ingest redacts: (path of keys) pairs.
FREE_TEXT_FIELDS: tuple[tuple[str, ...], ...] = (("description",), ("location", "address"))
#: A name part shorter than this is not redacted on its own (``Al``, ``de``, ``O``).
MIN_NAME_PART = 3


#: ASCII folding that keeps every character's position (the usual case: no accents).
_ASCII_FOLD = str.maketrans(
    {**{chr(c): chr(c + 32) for c in range(ord("A"), ord("Z") + 1)}, "-": " ", "`": "'"}
)


def _folded(text: str) -> tuple[str, list[int] | None]:
    """``text`` folded as names are (accents, case, apostrophes, hyphens) and, for each
    folded character, the index of the original character it came from (``None``: the
    same index, as for ASCII text)."""
    if text.isascii():
        return text.translate(_ASCII_FOLD), None
    out: list[str] = []
    origin: list[int] = []
    for index, ch in enumerate(text.translate(_APOSTROPHES)):
        for part in unicodedata.normalize("NFKD", ch):
            if unicodedata.combining(part):
                continue
            for folded in part.casefold():
                out.append(" " if _HYPHENS.match(folded) else folded)
                origin.append(index)
    return "".join(out), origin


def _redact_spans(text: str, spans: list[tuple[int, int, str]]) -> str:
    """Replace the (start, end, label) spans of ``text``; overlapping spans are merged."""
    if not spans:
        return text
    spans.sort()
    merged: list[tuple[int, int, str]] = []
    for start, end, label in spans:
        if merged and start < merged[-1][1]:
            last = merged[-1]
            merged[-1] = (last[0], max(last[1], end), last[2])
        else:
            merged.append((start, end, label))
    pieces: list[str] = []
    at = 0
    for start, end, label in merged:
        pieces.append(text[at:start])
        pieces.append(label)
        at = end
    pieces.append(text[at:])
    return "".join(pieces)


@lru_cache(maxsize=4096)
def _name_patterns(name: str) -> tuple[re.Pattern[str], ...]:
    """The whole name, then each part of at least ``MIN_NAME_PART`` letters, as patterns
    over folded text that match whole words only."""
    parts = [p for p in re.split(r"[\s']+", normalise_name(name)) if p]
    if not parts:
        return ()
    whole = r"[\s']*".join(re.escape(p) for p in parts)
    patterns = [whole] + [re.escape(p) for p in parts if len(p) >= MIN_NAME_PART]
    return tuple(re.compile(rf"(?<!\w){pattern}(?!\w)") for pattern in patterns)


@lru_cache(maxsize=4096)
def _name_parts(name: str) -> tuple[str, ...]:
    """The folded parts of ``name`` a pattern looks for (for a cheap test first)."""
    return tuple(p for p in re.split(r"[\s']+", normalise_name(name)) if p)


def _name_spans(text: str, name: str) -> list[tuple[int, int, str]]:
    """The caller's whole name, and each part of it of at least ``MIN_NAME_PART`` letters,
    wherever ``text`` holds it as whole words (case, accents and joining ignored)."""
    folded, origin = _folded(text)
    # Most texts hold no part of the caller's name: a substring test decides that without
    # building the patterns (compiling them per caller dominated ingest's cost).
    if not any(part in folded for part in _name_parts(name)):
        return []
    patterns = _name_patterns(name)
    if not patterns:
        return []
    spans = []
    for pattern in patterns:
        for found in pattern.finditer(folded):
            if origin is None:
                spans.append((found.start(), found.end(), REDACTED["name"]))
            else:
                start, last = origin[found.start()], origin[found.end() - 1]
                spans.append((start, last + 1, REDACTED["name"]))
    return spans


@lru_cache(maxsize=4096)
def _national_digits(phone: str, region: str) -> str:
    """The digits every spelling of ``phone`` ends with (its national significant number
    where it parses, else its digits)."""
    try:
        e164 = normalise_phone(phone, region)  # remembered from the caller's victim key
    except IdentityError:
        return re.sub(r"\D", "", phone)
    return national_number_of(e164)


def national_number_of(e164: str) -> str:
    """What ``phonenumbers.parse(e164).national_number`` gives (as text) for a valid E.164
    number, without parsing it again: the digits after its country code (country codes
    are prefix-free), leading zeros dropped as the library drops them."""
    digits = e164[1:]
    for size in (1, 2, 3):
        if int(digits[:size]) in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
            return str(int(digits[size:]))
    return str(phonenumbers.parse(e164).national_number)


_NOT_DIGITS = re.compile(r"\D+")


def _digit_count(text: str) -> int:
    return len(_NOT_DIGITS.sub("", text))


def _digits_pattern(digits: str) -> str:
    """``digits`` with any spacing or punctuation a person might put between them."""
    return r"[\s().\-/]*".join(re.escape(d) for d in digits)


def _caller_spans(
    text: str, caller: Mapping[str, Any], region: str, digit_count: int
) -> list[tuple[int, int, str]]:
    spans: list[tuple[int, int, str]] = []

    def literal(pattern: str, label: str) -> None:
        for found in re.finditer(pattern, text, flags=re.IGNORECASE):
            spans.append((found.start(), found.end(), label))

    # Cheap tests first: each pattern below is built for one caller, so compiling it is the
    # cost; it is built only when the text holds the identifier's characters at all.
    lowered = text.lower()
    only_digits = _NOT_DIGITS.sub("", text) if digit_count else ""
    person_id = caller.get("person_id")
    if isinstance(person_id, str) and person_id.strip() and person_id.strip().lower() in lowered:
        literal(re.escape(person_id.strip()), REDACTED["person_id"])
    phone = caller.get("phone")
    if isinstance(phone, str) and phone.strip():
        digits = _national_digits(phone, region)
        if len(digits) >= 6 and digit_count >= 6 and digits in only_digits:
            sep = r"[\s().\-/]*"
            prefix = rf"(?:(?:(?:\+|00)\d{{1,3}}|44){sep}(?:\(0\){sep})?|0{sep})?"
            literal(rf"(?<![\d+]){prefix}{_digits_pattern(digits)}(?!\d)", REDACTED["phone"])
    dob = caller.get("date_of_birth")
    if isinstance(dob, str) and digit_count >= 6:  # a date of birth has at least six
        parts = re.fullmatch(r"\s*(\d{4})-(\d{1,2})-(\d{1,2})\s*", dob)
        if parts and parts.group(1) in text:
            year, month, day = parts.group(1), int(parts.group(2)), int(parts.group(3))
            literal(rf"(?<!\d){year}[-/.]0?{month}[-/.]0?{day}(?!\d)", REDACTED["date_of_birth"])
            literal(
                rf"(?<!\d)0?{day}[-/.\s]0?{month}[-/.\s]{year}(?!\d)", REDACTED["date_of_birth"]
            )
    postcode = caller.get("postcode")
    compact = re.sub(r"\s", "", postcode) if isinstance(postcode, str) else ""
    if compact and digit_count and compact.lower() in re.sub(r"\s", "", lowered):
        literal(
            r"(?<![A-Za-z0-9])" + r"\s*".join(re.escape(c) for c in compact) + r"(?![A-Za-z0-9])",
            REDACTED["postcode"],
        )
    name = caller.get("name")
    if isinstance(name, str) and name.strip():
        spans.extend(_name_spans(text, name))
    return spans


def redact_free_text(
    text: str, caller: Mapping[str, Any] | None, region: str = DEFAULT_REGION
) -> str:
    """``text`` with personal identifiers replaced by a label such as ``[phone]``.

    Removed: every valid phone number (anyone's: ``phonenumbers``' matcher), and the
    caller's own identifiers in the spellings people write them: the phone number however
    spaced or prefixed, the name whole and each part of it of three or more letters (case,
    accents, apostrophes and hyphens ignored), the person reference, the date of birth
    (``1971-08-09``, ``9/8/1971``, ``09.08.1971``) and the postcode however spaced. Names
    of *other* people cannot be recognised and are not removed.
    """
    spans: list[tuple[int, int, str]] = []
    digit_count = _digit_count(text)
    if caller:
        spans.extend(_caller_spans(text, caller, region, digit_count))
    if digit_count >= 6:  # no phone number has fewer
        for match in phonenumbers.PhoneNumberMatcher(text, region):
            spans.append((match.start, match.end, REDACTED["phone"]))
    return _redact_spans(text, spans)


def _redact_event_text(out: dict[str, Any], caller: Mapping[str, Any] | None, region: str) -> None:
    """Redact the free-text fields of ``out`` in place (nested objects are copied)."""
    for path in FREE_TEXT_FIELDS:
        holder: Any = out
        for step in path[:-1]:
            inner = holder.get(step) if isinstance(holder, dict) else None
            if not isinstance(inner, dict):
                holder = None
                break
            holder[step] = inner = dict(inner)  # never change the caller's input
            holder = inner
        if holder is None:
            continue
        value = holder.get(path[-1])
        if isinstance(value, str) and value:
            holder[path[-1]] = redact_free_text(value, caller, region)


# -- pseudonymisation and key rotation ------------------------------------------------------


def pseudonymise_event(
    event: Mapping[str, Any],
    key: bytes,
    key_id: str,
    region: str = DEFAULT_REGION,
    *,
    previous: Sequence[tuple[str, bytes]] = (),
) -> dict[str, Any]:
    """Return a copy of a raw incident event with ``caller`` replaced by ``victim_key``.

    The copy carries ``victim_key`` (hex or null) and ``victim_key_id`` (which HMAC key made
    it). No raw caller field survives, and the free text (``description``,
    ``location.address``) has the caller's identifiers and any phone number redacted (see
    :func:`redact_free_text`). While a key rotation is under way, ``previous`` holds the
    ``(key id, key)`` pairs of the keys being retired: the copy then also carries
    ``victim_key_aliases``, the same identifier's HMAC under each, by key id, so that
    the engine links this caller to incidents recorded under those keys. An event that
    already carries a ``victim_key`` and no ``caller`` is returned unchanged apart from the
    copy.
    """
    out = {k: v for k, v in event.items() if k != "caller"}
    if "caller" in event or "victim_key" not in out:
        raw = event.get("caller")
        caller = raw if isinstance(raw, Mapping) else None
        basis = identity_basis(caller, region) if caller else None
        out["victim_key"] = None if basis is None else _hmac_hex(key, basis)
        out["victim_key_id"] = key_id
        if basis is not None and previous:
            out["victim_key_aliases"] = {
                old_id: _hmac_hex(old_key, basis) for old_id, old_key in previous
            }
        _redact_event_text(out, caller, region)
    return out


def victim_keys(victim_key: str | None, aliases: Iterable[str] = ()) -> tuple[str, ...]:
    """Every key one victim is known by on an event: ``victim_key`` first, then its
    aliases under previous HMAC keys (duplicates dropped). Two incidents are the same
    victim's when they share any of these; empty for an anonymous report.

    During a rotation every new event carries both its key under the new HMAC key and its
    alias under the old one, so it links to incidents recorded before the rotation (old
    key) and after it (new key); the old key is retired only once nothing recorded under it
    alone can share a window with what comes next (see docs/operations.md).
    """
    if victim_key is None:
        return ()
    keys = [victim_key]
    for alias in aliases:
        if alias and alias not in keys:
            keys.append(alias)
    return tuple(keys)
