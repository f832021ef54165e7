"""What the services expose to Prometheus, and the tools that check it.

``declared_names()`` is every sample name the services' metrics code can expose (from their
registries, counters and histograms expanded to ``_total``, ``_bucket`` and the rest);
``sample_names(text)`` the sample names in one exposition. ``promtool(...)`` runs the real
``promtool`` (Debian package ``prometheus``, installed by ``make system-deps``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from asvat.domain.policy import default_policy

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
GRAFANA_DIR = ROOT / "deploy" / "grafana"
#: A metric name of ours in PromQL or exposition text.
ASVAT_NAME = re.compile(r"\basvat_[a-z_]+\b")
INSTALL_HINT = "run `make system-deps` (deploy/install-system-deps.sh: Debian package prometheus)"

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
}


def tool(name: str) -> str:
    """The path of a Prometheus tool, or a test failure saying how to install it."""
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if path is None:
        pytest.fail(f"{name} is not installed: {INSTALL_HINT}", pytrace=False)
    return path


def promtool(*args: str, stdin: str | None = None, cwd: Path | None = None) -> str:
    """Run promtool; its output, or a test failure showing it."""
    result = subprocess.run(
        [tool("promtool"), *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"promtool {' '.join(args)} failed:\n{output}"
    return output


def family_sample_names(name: str, kind: str) -> set[str]:
    return {name + suffix for suffix in _SUFFIXES.get(kind, ("",))}


def families_of(families: Iterable[Any]) -> set[str]:
    names: set[str] = set()
    for family in families:
        names |= family_sample_names(family.name, family.type)
    return names


def declared_names() -> set[str]:
    """Every sample name the three services' metrics code declares."""
    from services.api.metrics import ApiMetrics
    from services.ingest.app import IngestMetrics
    from services.repeat_detector.metrics import WorkerMetrics

    api = ApiMetrics()
    worker = WorkerMetrics(rules=[rule.id for rule in default_policy().rules])
    return (
        families_of(IngestMetrics().registry.collect())
        | families_of(worker.registry.collect())
        | families_of(api.registry.collect())
        | families_of(api.database.describe())  # read from a database only when bound
    )


def sample_names(text: str) -> set[str]:
    """The sample names in one exposition (Prometheus text format)."""
    return {
        sample.name for family in text_string_to_metric_families(text) for sample in family.samples
    }


def names_in_promql(expr: str) -> set[str]:
    return set(ASVAT_NAME.findall(expr))
