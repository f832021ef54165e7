"""The domain core compiled by mypyc (asvat/native.py): in use after ``make setup``, never
stale, and giving exactly what the interpreted sources give."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from asvat import native
from asvat.demo import northumbria_incidents

ROOT = Path(native.__file__).resolve().parents[1]
WHICH = (
    "import json, importlib; from asvat import native;"
    "files = {m: importlib.import_module(m).__file__ for m in native.NATIVE_MODULES};"
    "s = native.status(); print(json.dumps({'compiled': s.compiled, 'reason': s.reason,"
    " 'files': files}))"
)


def which(root: Path, **env: str) -> dict[str, object]:
    """What a fresh interpreter with ``root`` first on its path imports."""
    done = subprocess.run(
        [sys.executable, "-c", WHICH],
        env={**os.environ, "PYTHONPATH": str(root), **env},
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_make_setup_leaves_the_compiled_core_in_use() -> None:
    # `make setup` builds it; a machine where it cannot (no C compiler) fails here, loudly,
    # rather than running a test suite that never touched the code it ships.
    state = native.status()
    assert state.compiled, state.reason
    import asvat.domain.detector
    import asvat.domain.engine

    assert asvat.domain.engine.__file__ is not None
    assert not asvat.domain.engine.__file__.endswith(".py")
    assert asvat.domain.detector.__file__ is not None
    assert not asvat.domain.detector.__file__.endswith(".py")


def test_asvat_native_0_runs_the_sources() -> None:
    seen = which(ROOT, ASVAT_NATIVE="0")
    assert seen["compiled"] is False
    assert "ASVAT_NATIVE=0" in str(seen["reason"])
    files = seen["files"]
    assert isinstance(files, dict)
    assert all(str(path).endswith(".py") for path in files.values()), files


def test_one_edited_source_sends_the_whole_group_back_to_the_sources(tmp_path: Path) -> None:
    copy = tmp_path / "asvat"
    shutil.copytree(ROOT / "asvat", copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert which(tmp_path)["compiled"] is True  # the copy's compiled files match its sources
    timeutil = copy / "domain" / "timeutil.py"
    timeutil.write_text(timeutil.read_text() + "\nEDITED = True\n")
    seen = which(tmp_path)
    assert seen["compiled"] is False
    assert "asvat.domain.timeutil changed" in str(seen["reason"])
    files = seen["files"]
    assert isinstance(files, dict)
    # Not only the edited module: compiled modules of one group call each other in C.
    assert all(str(path).endswith(".py") for path in files.values()), files


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("native") / "events.jsonl"
    events = list(northumbria_incidents(seed=2022))[:6000]
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return path


def test_compiled_and_interpreted_replays_are_identical(sample: Path, tmp_path: Path) -> None:
    assert native.status().compiled  # else both runs below would be interpreted
    outputs = {}
    for mode in ("1", "0"):
        output = tmp_path / f"native-{mode}.jsonl"
        subprocess.run(
            [sys.executable, "-m", "asvat", "replay", "--input", str(sample),
             "--output", str(output), "--no-progress"],
            env={**os.environ, "ASVAT_NATIVE": mode, "ASVAT_DATA_DIR": str(tmp_path / "data")},
            check=True,
            capture_output=True,
        )
        outputs[mode] = output.read_bytes()
    assert outputs["1"] == outputs["0"]
    lines = outputs["1"].splitlines()
    assert len(lines) > 4000
    assert any(json.loads(line)["rules_met"] for line in lines)
