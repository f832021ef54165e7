"""The domain core compiled to C with mypyc: the same typed source, several times faster.

The modules in :data:`NATIVE_MODULES` are ordinary, typed Python (``mypy --strict``
clean). ``make setup`` runs ``asvat native build``, which compiles them with
mypyc into one group of C extension modules placed beside their sources (``*.so``, ignored
by git) and writes :data:`MANIFEST`: the SHA-256 of every compiled source and the Python
and mypy versions they were built with.

When ``asvat`` is imported, :func:`activate` compares the manifest with the sources. The
compiled modules are used only when every one of them matches; otherwise (a source was
edited since the build, the manifest is missing, or ``ASVAT_NATIVE=0``) a finder placed
first on ``sys.meta_path`` makes Python load all of them from their ``.py`` sources. All or
none: compiled modules of one group call each other directly in C, so a stale compiled
module must never run beside a fresh source. An edit therefore never runs stale code, and
a machine without a C compiler runs the same code, only slower (``asvat.native`` says
which is in use: ``asvat native status``).

The property tests (``tests/unit/test_engine_properties.py`` and the others) run against
whatever is active; ``tests/unit/test_native.py`` checks that the compiled modules are in
use after ``make setup`` and that the source path gives the same results.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

PACKAGE_ROOT = Path(__file__).resolve().parent
#: The compiled group: the per-event path of the worker, the replay and the backtest.
#: ``incident`` and ``location`` stay interpreted: their frozen dataclasses are pickled
#: between processes (``asvat backtest``), which mypyc's native classes refuse.
NATIVE_MODULES: tuple[str, ...] = (
    "asvat.domain.assessment",
    "asvat.domain.case_review",
    "asvat.domain.detector",
    "asvat.domain.engine",
    "asvat.domain.escalation_lifecycle",
    "asvat.domain.integrity",
    "asvat.domain.partitioner",
    "asvat.domain.risk",
    "asvat.domain.timeutil",
)
#: The name of the shared library mypyc builds for the group (``…/domain/_native__mypyc``).
GROUP = "asvat.domain._native"
MANIFEST = PACKAGE_ROOT / "domain" / "_native.json"
#: ``ASVAT_NATIVE=0`` (or ``false``/``no``/``off``) runs the interpreted sources.
ENV = "ASVAT_NATIVE"


def source_path(module: str) -> Path:
    """The ``.py`` file of one of :data:`NATIVE_MODULES`."""
    parts = module.split(".")
    assert parts[0] == "asvat", module
    return PACKAGE_ROOT.joinpath(*parts[1:]).with_suffix(".py")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _versions() -> dict[str, str]:
    return {"python": sys.version.split()[0], "implementation": sys.implementation.cache_tag}


@dataclass(frozen=True)
class Status:
    """Whether the compiled modules are in use, and if not, why."""

    compiled: bool
    reason: str


def check() -> Status:
    """Whether the compiled group may be used (it exists and matches every source)."""
    if os.environ.get(ENV, "1").strip().lower() in {"0", "false", "no", "off"}:
        return Status(False, f"{ENV}={os.environ[ENV]} asks for the interpreted sources")
    try:
        manifest = json.loads(MANIFEST.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return Status(False, "not built (run `make setup` or `asvat native build`)")
    except (OSError, ValueError) as exc:
        return Status(False, f"unreadable manifest {MANIFEST}: {exc}")
    if manifest.get("versions") != _versions():
        return Status(False, f"built for {manifest.get('versions')}, running {_versions()}")
    built = manifest.get("sources", {})
    for module in NATIVE_MODULES:
        if built.get(module) != _digest(source_path(module)):
            return Status(False, f"{module} changed since it was compiled (run `make setup`)")
    return Status(True, f"compiled by mypyc {manifest.get('mypy', '?')}")


class _SourceFinder(importlib.abc.MetaPathFinder):
    """Finds the group's modules as ``.py`` sources, ahead of their compiled files."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in NATIVE_MODULES:
            return None
        return importlib.util.spec_from_file_location(fullname, source_path(fullname))


_STATUS: Status | None = None


def activate() -> Status:
    """Choose compiled or interpreted modules for this process (once, before any import)."""
    global _STATUS
    if _STATUS is None:
        _STATUS = check()
        if not _STATUS.compiled and not any(isinstance(f, _SourceFinder) for f in sys.meta_path):
            sys.meta_path.insert(0, _SourceFinder())
    return _STATUS


def status() -> Status:
    """What :func:`activate` chose for this process."""
    return activate()


def clean() -> list[Path]:
    """Remove the compiled files and the manifest; returns what was removed."""
    removed = []
    for path in [*sorted((PACKAGE_ROOT / "domain").glob("*.so")), MANIFEST]:
        if path.exists():
            path.unlink()
            removed.append(path)
    return removed


def build(*, verbose: bool = False) -> Path:
    """Compile the group with mypyc into a scratch directory, then put the extension modules
    beside their sources and write the manifest (last, so a failed build leaves none)."""
    import shutil
    import subprocess
    import tempfile

    clean()
    digests = {module: _digest(source_path(module)) for module in NATIVE_MODULES}
    with tempfile.TemporaryDirectory(prefix="asvat-native-") as scratch:
        script = Path(scratch) / "setup_native.py"
        paths = [str(source_path(m)) for m in NATIVE_MODULES]
        script.write_text(
            "from setuptools import setup\n"
            "from mypyc.build import mypycify\n"
            f"setup(name='asvat-native', ext_modules=mypycify({paths!r}, group_name={GROUP!r},"
            f" target_dir={str(Path(scratch) / 'c')!r}))\n",
            encoding="utf-8",
        )
        lib = Path(scratch) / "lib"
        # The scratch directory holds no pyproject.toml, so setuptools reads only the script;
        # the project root goes on the path so that mypy resolves ``asvat`` imports.
        env = dict(os.environ, PYTHONPATH=str(PACKAGE_ROOT.parent), ASVAT_NATIVE="0")
        command = [sys.executable, str(script), "build_ext", "--build-lib", str(lib),
                   "--build-temp", str(Path(scratch) / "tmp")]
        done = subprocess.run(command, cwd=scratch, env=env, capture_output=not verbose,
                              text=True, check=False)
        if done.returncode != 0:
            tail = "\n".join(((done.stdout or "") + (done.stderr or "")).splitlines()[-30:])
            raise RuntimeError(f"mypyc build failed (exit {done.returncode}):\n{tail}")
        built = sorted(lib.rglob("*.so"))
        for path in built:
            target = PACKAGE_ROOT.parent / path.relative_to(lib)
            if target.parent != PACKAGE_ROOT / "domain":
                raise RuntimeError(f"mypyc put {path.name} outside asvat/domain: {target}")
            shutil.copy2(path, target)
    from mypy.version import __version__ as mypy_version

    MANIFEST.write_text(
        json.dumps({"versions": _versions(), "mypy": mypy_version, "sources": digests},
                   indent=2, sort_keys=True) + "\n",
        encoding="utf-8",
    )
    return MANIFEST


def main(command: str, *, required: bool = False, verbose: bool = False) -> int:
    """``asvat native build|status|clean``."""
    if command == "build":
        try:
            build(verbose=verbose)
        except (RuntimeError, OSError, ImportError) as exc:
            # No compiler, say: the interpreted sources still work; say so and go on
            # unless the caller asked for the build to be required.
            print(f"asvat.native: {exc}", file=sys.stderr)
            print("asvat.native: the domain core will run interpreted (slower)", file=sys.stderr)
            return 1 if required else 0
        print(f"asvat.native: compiled {len(NATIVE_MODULES)} modules ({MANIFEST.name} written)")
        return 0
    if command == "clean":
        for path in clean():
            print(f"removed {path}")
        return 0
    if command == "status":
        state = check()
        print(("compiled: " if state.compiled else "interpreted: ") + state.reason)
        return 0
    raise ValueError(f"unknown command {command!r}: expected build, status or clean")
