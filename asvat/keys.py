"""The HMAC key that turns caller identifiers into ``victim_key``.

Whoever holds the key can test a guessed phone number against a ``victim_key``, so it is a
secret: in production it must be given explicitly (``ASVAT_HMAC_KEY_FILE``, or
``ASVAT_HMAC_KEY``). In development a random key is generated once into the data directory
and reused, so that repeat callers still link across restarts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from pathlib import Path

from asvat.settings import Settings

log = logging.getLogger(__name__)

MIN_KEY_LENGTH = 32
GENERATED_KEY_RELPATH = Path("secrets") / "hmac.key"


class HmacKeyError(RuntimeError):
    """The HMAC key is missing, unreadable or too short (the message says what to set)."""


def _checked(text: str, source: str) -> bytes:
    if len(text) < MIN_KEY_LENGTH:
        raise HmacKeyError(
            f"{source}: the HMAC key must be at least {MIN_KEY_LENGTH} characters, got {len(text)}"
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
    """Return ``(key bytes, key id)`` for pseudonymising callers.

    Order: the contents of ``ASVAT_HMAC_KEY_FILE`` (surrounding whitespace removed), else
    ``ASVAT_HMAC_KEY``. Either must be at least 32 characters. With neither set,
    ``ASVAT_ENV=production`` raises :class:`HmacKeyError`; development generates a random
    key once into ``<ASVAT_DATA_DIR>/secrets/hmac.key`` (mode 0600) and reuses it.
    The key id is ``ASVAT_HMAC_KEY_ID``.
    """
    key_id = settings.hmac_key_id
    if settings.hmac_key_file is not None:
        source = f"ASVAT_HMAC_KEY_FILE={settings.hmac_key_file}"
        return _checked(_read_key_file(settings.hmac_key_file, source), source), key_id
    if settings.hmac_key is not None and settings.hmac_key.strip():
        return _checked(settings.hmac_key.strip(), "ASVAT_HMAC_KEY"), key_id
    if settings.env == "production":
        raise HmacKeyError(
            "ASVAT_ENV=production needs an explicit HMAC key: set ASVAT_HMAC_KEY_FILE to a "
            f"file holding the key (or ASVAT_HMAC_KEY to the key), at least {MIN_KEY_LENGTH} "
            "characters, e.g. the output of `python -c 'import secrets; "
            "print(secrets.token_hex(32))'`"
        )
    path = settings.data_path / GENERATED_KEY_RELPATH
    return _checked(_generated_key(path), f"generated development key {path}"), key_id
