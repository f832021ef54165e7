"""The HMAC keys that turn caller identifiers into ``victim_key``.

Whoever holds a key can test a guessed phone number against a ``victim_key``, so it is a
secret: in production it must be given explicitly (``ASVAT_HMAC_KEY_FILE``, or
``ASVAT_HMAC_KEY``), and a placeholder is refused. In development a random key is generated
once into the data directory and reused, so that repeat callers still link across restarts.

Rotation: the *current* key (``ASVAT_HMAC_KEY*`` with ``ASVAT_HMAC_KEY_ID``) makes every
``victim_key``; *previous* keys (``ASVAT_HMAC_PREVIOUS_KEY_FILES`` or
``ASVAT_HMAC_PREVIOUS_KEYS``, ``id=…`` pairs) make ``victim_key_aliases`` beside it, so
that a caller's new incidents still link to those recorded under a key being retired
(docs/operations.md, "Rotate the HMAC key").
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from asvat.settings import Settings

log = logging.getLogger(__name__)

MIN_KEY_LENGTH = 32
GENERATED_KEY_RELPATH = Path("secrets") / "hmac.key"


#: A production key with fewer distinct characters than this is a placeholder
#: (``kkkk…``, ``0000…``, ``abab…``); a random hex key of 32 or more characters has far more.
MIN_DISTINCT_CHARACTERS = 8
#: Words that mark a placeholder someone forgot to replace (any case, anywhere in the key).
PLACEHOLDER_WORDS = ("change", "replace", "example", "placeholder", "default", "secret", "xxxx")
KEY_ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
GENERATE_HINT = "e.g. the output of `python -c 'import secrets; print(secrets.token_hex(32))'`"


class HmacKeyError(RuntimeError):
    """An HMAC key is missing, unreadable, too short or a placeholder (the message says
    what to set)."""


@dataclass(frozen=True)
class KeyRing:
    """The current HMAC key and the previous keys still linked during a rotation."""

    key_id: str
    key: bytes = field(repr=False)
    previous: tuple[tuple[str, bytes], ...] = field(default=(), repr=False)

    @property
    def previous_ids(self) -> tuple[str, ...]:
        return tuple(key_id for key_id, _ in self.previous)


def _checked(text: str, source: str, *, production: bool = False) -> bytes:
    if len(text) < MIN_KEY_LENGTH:
        raise HmacKeyError(
            f"{source}: the HMAC key must be at least {MIN_KEY_LENGTH} characters, got {len(text)}"
        )
    if production:
        lowered = text.lower()
        word = next((w for w in PLACEHOLDER_WORDS if w in lowered), None)
        if word is not None or len(set(text)) < MIN_DISTINCT_CHARACTERS:
            why = (
                f"contains {word!r}"
                if word
                else f"has fewer than {MIN_DISTINCT_CHARACTERS} different characters"
            )
            raise HmacKeyError(
                f"{source}: ASVAT_ENV=production refuses a placeholder HMAC key (it {why}); "
                f"set a random one, {GENERATE_HINT}"
            )
    return text.encode("utf-8")


def _read_key_file(path: Path, source: str) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise HmacKeyError(f"{source}: cannot read the HMAC key file {path}: {reason}") from exc


def _generated_key(path: Path) -> str:
    """The development key in ``path``, created on first use.

    Created by writing a private temporary file and hard-linking it into place, so two
    processes starting at once agree on one key and no reader sees a half-written file.
    """
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(secrets.token_hex(32) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(temporary, path)
                log.warning(
                    "no HMAC key configured: generated a development key in %s (set "
                    "ASVAT_HMAC_KEY_FILE in production)",
                    path,
                )
            except FileExistsError:
                pass  # another process created it first: use theirs
        finally:
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
    return _read_key_file(path, f"generated development key {path}")


def load_hmac_key(settings: Settings) -> tuple[bytes, str]:
    """Return ``(key bytes, key id)`` of the current key (see :func:`load_key_ring`)."""
    ring = load_key_ring(settings)
    return ring.key, ring.key_id


def load_key_ring(settings: Settings) -> KeyRing:
    """The current key with its id, and the previous keys, for pseudonymising callers.

    Current key: the contents of ``ASVAT_HMAC_KEY_FILE`` (surrounding whitespace removed),
    else ``ASVAT_HMAC_KEY``; its id is ``ASVAT_HMAC_KEY_ID``. Every key must be at least 32
    characters. With neither set, ``ASVAT_ENV=production`` raises :class:`HmacKeyError`;
    development generates a random key once into ``<ASVAT_DATA_DIR>/secrets/hmac.key``
    (mode 0600) and reuses it. In production a placeholder key (a word such as
    ``change`` or ``example`` in it, or fewer than 8 different characters) is refused too.

    Previous keys: ``ASVAT_HMAC_PREVIOUS_KEY_FILES`` (``id=path[,id=path]``) and
    ``ASVAT_HMAC_PREVIOUS_KEYS`` (``id=key[,id=key]``), files first; ids must be distinct
    and differ from the current id, and no key may repeat.
    """
    production = settings.env == "production"
    key_id = settings.hmac_key_id
    if not KEY_ID_PATTERN.match(key_id):
        raise HmacKeyError(
            f"ASVAT_HMAC_KEY_ID: expected 1 to 64 letters, digits, '.', '_' or '-', got {key_id!r}"
        )
    if settings.hmac_key_file is not None:
        source = f"ASVAT_HMAC_KEY_FILE={settings.hmac_key_file}"
        text = _read_key_file(settings.hmac_key_file, source)
        key = _checked(text, source, production=production)
    elif settings.hmac_key is not None and settings.hmac_key.strip():
        key = _checked(settings.hmac_key.strip(), "ASVAT_HMAC_KEY", production=production)
    elif production:
        raise HmacKeyError(
            "ASVAT_ENV=production needs an explicit HMAC key: set ASVAT_HMAC_KEY_FILE to a "
            f"file holding the key (or ASVAT_HMAC_KEY to the key), at least {MIN_KEY_LENGTH} "
            f"characters, {GENERATE_HINT}"
        )
    else:
        path = settings.data_path / GENERATED_KEY_RELPATH
        key = _checked(_generated_key(path), f"generated development key {path}")
    previous = _previous_keys(settings, production=production)
    seen_ids = {key_id}
    seen_keys = {key}
    for old_id, old_key in previous:
        if old_id in seen_ids:
            raise HmacKeyError(
                f"previous HMAC key id {old_id!r} is used twice (or is the current "
                "ASVAT_HMAC_KEY_ID): give every key its own id"
            )
        if old_key in seen_keys:
            raise HmacKeyError(
                f"previous HMAC key {old_id!r} is the same key as another: a rotation needs "
                "a new key under a new id"
            )
        seen_ids.add(old_id)
        seen_keys.add(old_key)
    return KeyRing(key_id=key_id, key=key, previous=tuple(previous))


def _pairs(text: str, variable: str) -> list[tuple[str, str]]:
    """``id=value[,id=value]`` (blank entries ignored); the message never repeats a value."""
    pairs = []
    for number, entry in enumerate(text.split(","), start=1):
        if not entry.strip():
            continue
        key_id, sep, value = entry.strip().partition("=")
        key_id = key_id.strip()
        if not sep or not KEY_ID_PATTERN.match(key_id) or not value.strip():
            raise HmacKeyError(
                f"{variable}: entry {number}: expected id=value (id: 1 to 64 letters, digits, "
                "'.', '_' or '-')"
            )
        pairs.append((key_id, value.strip()))
    return pairs


def _previous_keys(settings: Settings, *, production: bool) -> list[tuple[str, bytes]]:
    found: list[tuple[str, bytes]] = []
    if settings.hmac_previous_key_files:
        variable = "ASVAT_HMAC_PREVIOUS_KEY_FILES"
        for key_id, path in _pairs(settings.hmac_previous_key_files, variable):
            source = f"{variable}: {key_id}={path}"
            text = _read_key_file(Path(path), source)
            found.append((key_id, _checked(text, source, production=production)))
    if settings.hmac_previous_keys:
        variable = "ASVAT_HMAC_PREVIOUS_KEYS"
        for key_id, text in _pairs(settings.hmac_previous_keys, variable):
            source = f"{variable}: {key_id}"
            found.append((key_id, _checked(text, source, production=production)))
    return found
