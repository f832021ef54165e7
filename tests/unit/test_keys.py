"""The HMAC key: explicit in production, generated once and reused in development."""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from asvat.keys import HmacKeyError, load_hmac_key
from asvat.settings import Settings

SettingsFactory = Callable[..., Settings]
LONG = "k" * 32


def test_key_file_wins_and_is_stripped(tmp_path: Path, settings_factory: SettingsFactory) -> None:
    path = tmp_path / "hmac.key"
    path.write_text("  " + "f" * 40 + "\n")
    key, key_id = load_hmac_key(
        settings_factory(hmac_key_file=path, hmac_key=LONG, hmac_key_id="k9")
    )
    assert (key, key_id) == (b"f" * 40, "k9")


def test_key_from_the_environment(settings_factory: SettingsFactory) -> None:
    assert load_hmac_key(settings_factory(hmac_key=LONG))[0] == LONG.encode()


@pytest.mark.parametrize("env", ["development", "production"])
def test_short_keys_are_refused(env: str, settings_factory: SettingsFactory) -> None:
    with pytest.raises(HmacKeyError, match="at least 32 characters, got 31"):
        load_hmac_key(settings_factory(env=env, hmac_key="k" * 31))


def test_short_key_file_is_refused_naming_it(
    tmp_path: Path, settings_factory: SettingsFactory
) -> None:
    path = tmp_path / "short.key"
    path.write_text("too-short\n")
    with pytest.raises(HmacKeyError, match=f"ASVAT_HMAC_KEY_FILE={path}.*got 9"):
        load_hmac_key(settings_factory(hmac_key_file=path, hmac_key=None))


def test_missing_key_file_is_a_clear_error(
    tmp_path: Path, settings_factory: SettingsFactory
) -> None:
    path = tmp_path / "nope.key"
    with pytest.raises(HmacKeyError, match=r"cannot read the HMAC key file .*nope\.key"):
        load_hmac_key(settings_factory(hmac_key_file=path))


def test_production_without_a_key_says_what_to_set(
    tmp_path: Path, settings_factory: SettingsFactory
) -> None:
    with pytest.raises(HmacKeyError) as caught:
        load_hmac_key(settings_factory(env="production", hmac_key=None))
    assert "ASVAT_HMAC_KEY_FILE" in str(caught.value)
    assert "ASVAT_HMAC_KEY " in str(caught.value)
    assert not (tmp_path / "secrets").exists()  # nothing generated in production


def test_development_generates_one_key_and_reuses_it(
    tmp_path: Path, settings_factory: SettingsFactory
) -> None:
    settings = settings_factory(hmac_key=None, data_dir=tmp_path / "data")
    key, key_id = load_hmac_key(settings)
    path = tmp_path / "data" / "secrets" / "hmac.key"
    assert path.is_file()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(key) == 64 and int(key, 16) >= 0
    assert key_id == settings.hmac_key_id

    again = load_hmac_key(settings_factory(hmac_key=None, data_dir=tmp_path / "data"))
    assert again == (key, key_id)  # a restart links to the same victims
    other = load_hmac_key(settings_factory(hmac_key=None, data_dir=tmp_path / "elsewhere"))
    assert other[0] != key
    assert [p.name for p in path.parent.iterdir()] == ["hmac.key"]  # no temporary left
