"""The container deployment files: they parse, hang together, and hold no secrets.

No Docker here: this checks the files as data (``docker compose config`` is the full check).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
ENV_EXAMPLE = ROOT / ".env.example"

#: Names of settings whose values are secrets.
_SECRET_NAME = re.compile(r"(KEY|SECRET|PASSWORD|PASSWD|TOKEN|CREDENTIAL)(_FILE)?$", re.I)
#: Not secrets although the name matches.
_NOT_SECRET = {"ASVAT_HMAC_KEY_ID"}
#: A compose interpolation with an empty default: the value comes from the environment.
_FROM_ENV = re.compile(r"^\$\{[A-Z0-9_]+(:?-)?\}$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(doc, dict)
    return doc


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # ["NAME=value", ...]
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def test_compose_has_kafka_the_three_services_and_topic_creation(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    assert {"kafka", "topics", "ingest", "worker", "api"} <= set(services)
    assert services["topics"]["command"][:2] == ["topics", "create"]
    assert services["ingest"]["command"] == ["ingest"]
    assert services["worker"]["command"] == ["worker"]
    assert services["api"]["command"] == ["api"]


def test_every_built_service_uses_the_dockerfile(compose: dict[str, Any]) -> None:
    built = {name: s for name, s in compose["services"].items() if "build" in s}
    assert set(built) == {"topics", "ingest", "worker", "api"}
    for name, service in built.items():
        build = service["build"]
        assert isinstance(build, dict), name
        assert Path(build.get("context", ".")) == Path("."), name
        assert build.get("dockerfile", "Dockerfile") == "Dockerfile", name
        assert (ROOT / build.get("context", ".") / build.get("dockerfile", "Dockerfile")).is_file()


def test_kafka_is_apache_kafka_in_kraft_mode(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = _environment(kafka)
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    node = env["KAFKA_NODE_ID"]
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(f"{node}@kafka:")
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "1"
    assert "ZOOKEEPER" not in " ".join(env).upper()
    assert "healthcheck" in kafka


def test_services_reach_kafka_by_name_listen_on_all_addresses_and_keep_state(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    volumes = set(compose.get("volumes") or {})
    for name in ("topics", "ingest", "worker", "api"):
        env = _environment(services[name])
        assert env["ASVAT_KAFKA_BOOTSTRAP"] == "kafka:9092", name
        depends = services[name]["depends_on"]
        assert depends["kafka"]["condition"] == "service_healthy", name
    assert _environment(services["ingest"])["ASVAT_INGEST_HOST"] == "0.0.0.0"
    assert _environment(services["api"])["ASVAT_API_HOST"] == "0.0.0.0"
    for name in ("ingest", "worker", "api"):
        assert services[name]["depends_on"]["topics"]["condition"] == (
            "service_completed_successfully"
        )
        mounts = [str(m).split(":", 1) for m in services[name]["volumes"]]
        assert any(source in volumes and target == "/data" for source, target in mounts), name


def test_no_secret_values_are_committed(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for key, value in _environment(service).items():
            if _SECRET_NAME.search(key) and key not in _NOT_SECRET:
                assert value == "" or _FROM_ENV.match(value), f"{name}: {key} has a value"
    example = ENV_EXAMPLE.read_text(encoding="utf-8")
    assignments = dict(
        line.split("=", 1)
        for line in example.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    )
    assert "ASVAT_HMAC_KEY" in assignments
    for key, value in assignments.items():
        if _SECRET_NAME.search(key) and key not in _NOT_SECRET:
            assert value.strip() == "", f".env.example: {key} must be left blank"
    dockerfile = DOCKERFILE.read_text(encoding="utf-8")
    for line in dockerfile.splitlines():
        if line.strip().upper().startswith(("ENV ", "ARG ")):
            assert not _SECRET_NAME.search(line.split()[1].split("=")[0]), line
    assert not _SECRET_NAME.search(" ".join(re.findall(r"\b[A-Z_]+=", dockerfile)))
    ignored = DOCKERIGNORE.read_text(encoding="utf-8").split()
    assert ".env" in ignored and ".git" in ignored and ".venv" in ignored


def test_dockerfile_installs_the_project_as_a_non_root_user() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert re.search(r"pip install .*-e \.", text)
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")
    assert 'ENTRYPOINT ["asvat"]' in text
