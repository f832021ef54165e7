"""The key ring: current key, previous keys during a rotation, placeholders refused in
production."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path

import pytest

from asvat.keys import HmacKeyError, KeyRing, load_hmac_key, load_key_ring
from asvat.settings import Settings

SettingsFactory = Callable[..., Settings]
CURRENT = secrets.token_hex(32)
OLD = secrets.token_hex(32)
OLDER = secrets.token_hex(32)


def test_no_previous_keys_by_default(settings_factory: SettingsFactory) -> None:
    ring = load_key_ring(settings_factory(hmac_key=CURRENT, hmac_key_id="k2"))
    assert ring == KeyRing("k2", CURRENT.encode(), ())
    assert load_hmac_key(settings_factory(hmac_key=CURRENT, hmac_key_id="k2")) == (
        CURRENT.encode(),
        "k2",
    )


def test_previous_keys_from_files_and_the_environment(
    tmp_path: Path, settings_factory: SettingsFactory
) -> None:
    old_file = tmp_path / "k1.key"
    old_file.write_text(OLD + "\n")
    ring = load_key_ring(
        settings_factory(
            env="production",
            hmac_key=CURRENT,
            hmac_key_id="k3",
            hmac_previous_key_files=f"k1={old_file}",
            hmac_previous_keys=f" k2 = {OLDER} ,",
        )
    )
    assert ring.key_id == "k3"
    assert ring.previous == (("k1", OLD.encode()), ("k2", OLDER.encode()))
    assert ring.previous_ids == ("k1", "k2")
    assert OLD not in repr(ring) and CURRENT not in repr(ring)  # keys never printed


@pytest.mark.parametrize(
    ("previous", "message"),
    [
        ("k1", "ASVAT_HMAC_PREVIOUS_KEYS: entry 1: expected id=value"),
        ("k 1=" + OLD, "entry 1: expected id=value"),
        ("k1=short", "ASVAT_HMAC_PREVIOUS_KEYS: k1: the HMAC key must be at least 32"),
        (f"k2={OLD}", "id 'k2' is used twice"),
        (f"k1={OLD},k1={OLDER}", "id 'k1' is used twice"),
        (f"k1={CURRENT}", "'k1' is the same key as another"),
    ],
)
def test_bad_previous_keys_are_refused_without_repeating_them(
    previous: str, message: str, settings_factory: SettingsFactory
) -> None:
    with pytest.raises(HmacKeyError, match=message) as caught:
        load_key_ring(
            settings_factory(hmac_key=CURRENT, hmac_key_id="k2", hmac_previous_keys=previous)
        )
    assert OLD not in str(caught.value) and CURRENT not in str(caught.value)


def test_an_unreadable_previous_key_file_names_it(
    tmp_path: Path, settings_factory: SettingsFactory
) -> None:
    missing = tmp_path / "gone.key"
    with pytest.raises(HmacKeyError, match=r"ASVAT_HMAC_PREVIOUS_KEY_FILES: k1=.*gone\.key"):
        load_key_ring(settings_factory(hmac_key=CURRENT, hmac_previous_key_files=f"k1={missing}"))


def test_a_bad_key_id_is_refused(settings_factory: SettingsFactory) -> None:
    with pytest.raises(HmacKeyError, match="ASVAT_HMAC_KEY_ID: expected 1 to 64 letters"):
        load_key_ring(settings_factory(hmac_key=CURRENT, hmac_key_id="k 1"))


@pytest.mark.parametrize(
    ("key", "why"),
    [
        ("change-me-change-me-change-me-change-me", "contains 'change'"),
        ("replace-with-a-real-key-0123456789abcd", "contains 'replace'"),
        ("ExamplesKey-0123456789-abcdefghijklmnop", "contains 'example'"),
        ("k" * 32, "fewer than 8 different characters"),
        ("ab" * 20, "fewer than 8 different characters"),
    ],
)
def test_production_refuses_a_placeholder_key(
    key: str, why: str, settings_factory: SettingsFactory
) -> None:
    with pytest.raises(HmacKeyError, match=why) as caught:
        load_key_ring(settings_factory(env="production", hmac_key=key))
    assert "ASVAT_ENV=production refuses a placeholder HMAC key" in str(caught.value)
    assert key not in str(caught.value)
    # Development accepts it (tests and demos use such keys).
    assert load_key_ring(settings_factory(env="development", hmac_key=key)).key == key.encode()


def test_production_refuses_a_placeholder_previous_key(settings_factory: SettingsFactory) -> None:
    with pytest.raises(HmacKeyError, match=r"ASVAT_HMAC_PREVIOUS_KEYS: k0: .*placeholder"):
        load_key_ring(
            settings_factory(
                env="production", hmac_key=CURRENT, hmac_previous_keys="k0=" + "0" * 64
            )
        )


def test_production_accepts_a_random_key_file(
    tmp_path: Path, settings_factory: SettingsFactory
) -> None:
    path = tmp_path / "hmac.key"
    path.write_text(CURRENT)
    ring = load_key_ring(settings_factory(env="production", hmac_key=None, hmac_key_file=path))
    assert ring.key == CURRENT.encode()


def test_asvat_config_never_prints_a_key(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from asvat.cli import main

    monkeypatch.setenv("ASVAT_HMAC_KEY", CURRENT)
    monkeypatch.setenv("ASVAT_HMAC_PREVIOUS_KEYS", f"k1={OLD}")
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert "ASVAT_HMAC_KEY=(set)" in out and "ASVAT_HMAC_PREVIOUS_KEYS=(set)" in out
    assert CURRENT not in out and OLD not in out
