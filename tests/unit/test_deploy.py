"""The deployment files: they are valid, hang together, and hold no secrets.

No Docker engine and no cluster here: the compose file is validated against the Compose
Specification's JSON Schema (the copy ``check-jsonschema`` ships) and interpolated as
compose does (``compose_file.py``); the Kubernetes manifests against the Kubernetes JSON
Schemas ``kubernetes-validate`` ships. ``docker compose config`` and ``kubectl apply
--dry-run=server`` are the full checks. That the services start with the compose file's
environment is ``tests/integration/test_deployed.py``.
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
#: A compose interpolation with no default, or a required one (``${VAR:?why}``): the value
#: comes from the environment.
_FROM_ENV = re.compile(r"^\$\{[A-Z0-9_]+((:?-)|(:?\?[^}]*))?\}$")


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


def test_the_image_compiles_the_domain_core_and_never_copies_a_local_build() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    # After the project is copied and installed, before the user is dropped to non-root.
    build = text.index("asvat native build --required")
    assert text.index("pip install --no-deps -e .") < build < text.index("USER asvat")
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    assert "asvat/domain/*.so" in ignored and "asvat/domain/_native.json" in ignored


def test_kafka_python_checksums_record_batches_in_c() -> None:
    """Ingest publishes through kafka-python, which falls back to a pure-Python CRC-32C
    (half of ingest's CPU per event) when the ``crc32c`` package is not installed."""
    from kafka.record import util

    assert util.crc32c_c is not None
    assert util.calc_crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value


# ---------------------------------------------------------------- compose: production set

#: Values a filled-in .env gives (tests only).
FILLED_ENV = {
    "ASVAT_HMAC_KEY": "test-only-hmac-key-0123456789abcdef-0123",
    "POSTGRES_PASSWORD": "0123456789abcdef",
    "GRAFANA_ADMIN_PASSWORD": "fedcba9876543210",
}
REQUIRED_SECRETS = set(FILLED_ENV)


def _compose_schema() -> dict[str, Any]:
    """The Compose Specification's JSON Schema, as check-jsonschema ships it."""
    import json
    from importlib.metadata import distribution

    path = distribution("check-jsonschema").locate_file(
        "check_jsonschema/builtin_schemas/vendor/compose-spec.json"
    )
    schema: dict[str, Any] = json.loads(Path(str(path)).read_text(encoding="utf-8"))
    return schema


def _schema_errors(doc: dict[str, Any]) -> list[str]:
    import jsonschema

    schema = _compose_schema()
    # Its $schema is draft-07 spelt without the trailing '#', which jsonschema does not
    # recognise by name.
    assert "draft-07" in schema["$schema"]
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator.iter_errors(doc)
    ]


def test_compose_file_is_valid_against_the_compose_specification() -> None:
    from compose_file import load_compose

    assert _schema_errors(load_compose()) == []
    assert _schema_errors(load_compose(FILLED_ENV)) == []


def test_the_compose_schema_check_catches_mistakes() -> None:
    from compose_file import load_compose

    doc = load_compose(FILLED_ENV)
    doc["services"]["api"]["healthcheck"]["intervall"] = "10s"
    doc["services"]["worker"]["depends_on"]["kafka"]["condition"] = "service_ready"
    errors = _schema_errors(doc)
    assert any("intervall" in e for e in errors), errors
    assert any("service_ready" in e for e in errors), errors


def test_compose_refuses_to_start_without_each_secret() -> None:
    from compose_file import MissingVariable, load_compose

    load_compose(FILLED_ENV)  # complete: interpolates
    for name in REQUIRED_SECRETS:
        partial = {k: v for k, v in FILLED_ENV.items() if k != name}
        with pytest.raises(MissingVariable) as caught:
            load_compose(partial)
        assert caught.value.name == name
        with pytest.raises(MissingVariable):
            load_compose({**partial, name: ""})  # blank, as in .env.example, is missing too


def test_env_example_names_every_variable_the_compose_file_reads() -> None:
    import json

    from compose_file import load_compose

    example = ENV_EXAMPLE.read_text(encoding="utf-8")
    named = set(re.findall(r"^([A-Z0-9_]+)=", example, re.M))
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", json.dumps(load_compose())))
    assert used <= named, f".env.example lacks {used - named}"
    blank = {k for k in named if re.search(rf"^{k}=\s*$", example, re.M)}
    assert blank >= REQUIRED_SECRETS


def test_postgres_prometheus_and_grafana_run_with_health_checks_and_volumes(
    compose: dict[str, Any],
) -> None:
    from compose_file import environment, load_compose

    services = load_compose(FILLED_ENV)["services"]
    volumes = set(compose["volumes"])
    assert services["postgres"]["image"] == "postgres:16"
    assert services["prometheus"]["image"].startswith("prom/prometheus:v")
    assert services["grafana"]["image"].startswith("grafana/grafana:")
    for name, service in services.items():
        if name == "topics":  # one-shot
            continue
        assert "healthcheck" in service, name
        assert service["restart"] == "unless-stopped", name
        for mount in service.get("volumes", []):
            source = str(mount).split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in volumes, f"{name}: volume {source} not declared"
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port} must bind loopback"
    assert compose["volumes"].keys() >= {"postgres-data", "prometheus-data", "grafana-data"}

    api = environment(services["api"])
    assert api["ASVAT_DATABASE_URL"] == (
        f"postgresql+psycopg://asvat:{FILLED_ENV['POSTGRES_PASSWORD']}@postgres:5432/asvat"
    )
    assert services["api"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    # Ingest checks bearer tokens against the same database (read-only).
    assert environment(services["ingest"])["ASVAT_DATABASE_URL"] == api["ASVAT_DATABASE_URL"]
    assert services["ingest"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["prometheus"]["secrets"] == ["prometheus_api_token"]
    assert compose["secrets"]["prometheus_api_token"] == {"environment": "PROMETHEUS_API_TOKEN"}
    postgres = environment(services["postgres"])
    assert (postgres["POSTGRES_USER"], postgres["POSTGRES_DB"]) == ("asvat", "asvat")

    prometheus = services["prometheus"]
    assert "./deploy/prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    grafana = services["grafana"]
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]
    provider = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/dashboards/asvat.yml").read_text()
    )["providers"][0]
    dashboards_mount = f"./deploy/grafana/dashboards:{provider['options']['path']}:ro"
    assert dashboards_mount in grafana["volumes"]
    assert environment(grafana)["GF_SECURITY_ADMIN_PASSWORD"] == "fedcba9876543210"
    assert grafana["depends_on"]["prometheus"]["condition"] == "service_healthy"


def test_prometheus_scrapes_the_compose_services_on_the_ports_they_listen_on() -> None:
    from compose_file import environment, load_compose

    services = load_compose(FILLED_ENV)["services"]
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    targets = {
        t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]
    }
    for name, variable in (
        ("ingest", "ASVAT_INGEST_PORT"),
        ("worker", "ASVAT_WORKER_PORT"),
        ("api", "ASVAT_API_PORT"),
    ):
        env = environment(services[name])
        assert f"{name}:{env[variable]}" in targets
        host = env[variable.replace("_PORT", "_HOST")]
        assert host == "0.0.0.0", f"{name} must listen beyond its container's loopback"


# ---------------------------------------------------------------- Kubernetes

K8S = ROOT / "deploy" / "k8s"
#: The Kubernetes minor version the manifests are validated against.
K8S_VERSION = "1.30.0"
#: Kinds the Kubernetes schemas do not cover (custom resources, kustomize).
CUSTOM_KINDS = {"Kustomization"}


def _manifests() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc:
                found.append((path.name, doc))
    return found


def _of_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _, doc in _manifests() if doc["kind"] == kind}


def _k8s_errors(doc: dict[str, Any]) -> str | None:
    import kubernetes_validate

    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return f"{exc.message} at {'/'.join(map(str, exc.path))}"
    return None


@pytest.mark.parametrize(
    "manifest",
    [m for m in _manifests() if m[1]["kind"] not in CUSTOM_KINDS],
    ids=lambda m: f"{m[0]}:{m[1]['kind']}/{m[1]['metadata']['name']}",
)
def test_manifest_is_valid_against_the_kubernetes_schemas(
    manifest: tuple[str, dict[str, Any]],
) -> None:
    _, doc = manifest
    assert _k8s_errors(doc) is None


def test_the_kubernetes_schema_check_catches_mistakes() -> None:
    import copy

    deployment = copy.deepcopy(_of_kind("Deployment")["asvat-api"])
    deployment["spec"]["replica"] = 2  # misspelt field: strict validation refuses it
    assert _k8s_errors(deployment) is not None
    deployment = copy.deepcopy(_of_kind("Deployment")["asvat-api"])
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "x"
    assert _k8s_errors(deployment) is not None


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert on_disk == listed


def _workloads() -> dict[str, dict[str, Any]]:
    """The Deployments and StatefulSets, by name."""
    return {**_of_kind("Deployment"), **_of_kind("StatefulSet")}


def test_deployments_services_and_budgets_fit_together() -> None:
    deployments = _workloads()
    assert set(_of_kind("Deployment")) == {"asvat-ingest", "asvat-api"}
    assert set(_of_kind("StatefulSet")) == {"asvat-worker"}
    config_maps = _of_kind("ConfigMap")
    for name, deployment in deployments.items():
        spec = deployment["spec"]
        pod = spec["template"]
        selector = spec["selector"]["matchLabels"]
        assert selector.items() <= pod["metadata"]["labels"].items(), name
        (container,) = pod["spec"]["containers"]
        service = name.removeprefix("asvat-")
        assert container["args"] == [service]
        port_names = {p["name"]: p["containerPort"] for p in container["ports"]}
        for probe in ("readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"]["port"] in port_names, f"{name}: {probe}"
        annotations = pod["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(port_names["http"])
        assert annotations["prometheus.io/path"] == "/metrics"
        for source in container.get("envFrom", []):
            assert source["configMapRef"]["name"] in config_maps
        for volume in pod["spec"]["volumes"]:
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
        assert pod["spec"]["securityContext"]["runAsNonRoot"]

    for name, service in _of_kind("Service").items():
        target = deployments[name]["spec"]["template"]
        assert service["spec"]["selector"].items() <= target["metadata"]["labels"].items()
        container_ports = {p["name"] for p in target["spec"]["containers"][0]["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in container_ports, name
    budgets = _of_kind("PodDisruptionBudget")
    assert set(budgets) == set(deployments)
    for name, budget in budgets.items():
        labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_secrets_are_referenced_never_defined() -> None:
    assert not _of_kind("Secret"), "Secrets are created out of band (deploy/k8s/README.md)"
    referenced: dict[str, set[str]] = {}
    for name, deployment in _workloads().items():
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            for variable in container.get("env", []):
                if "value" in variable:
                    assert not _SECRET_NAME.search(variable["name"]), f"{name}: {variable}"
                secret = variable.get("valueFrom", {}).get("secretKeyRef")
                if secret:
                    assert secret["name"] == "asvat-secrets"
                    referenced.setdefault(variable["name"], set()).add(secret["key"])
    assert referenced == {"ASVAT_HMAC_KEY": {"hmac-key"}, "ASVAT_DATABASE_URL": {"database-url"}}
    readme = (K8S / "README.md").read_text(encoding="utf-8")
    assert "--from-literal=hmac-key=" in readme and "--from-literal=database-url=" in readme


def test_configmaps_hold_known_settings_and_a_valid_policy() -> None:
    from asvat.domain.policy import load_policy_text
    from asvat.settings import Settings

    settings = _of_kind("ConfigMap")["asvat-settings"]["data"]
    known = {f"ASVAT_{name.upper()}" for name in Settings.model_fields}
    assert set(settings) <= known, set(settings) - known
    assert not any(_SECRET_NAME.search(k) for k in settings if k not in _NOT_SECRET)
    policy_text = _of_kind("ConfigMap")["asvat-policy"]["data"]["policy.yaml"]
    policy = load_policy_text(policy_text, origin="deploy/k8s/policy-configmap.yaml")
    assert policy.rules
    mount = next(
        m["mountPath"]
        for m in _workloads()["asvat-worker"]["spec"]["template"]["spec"]["containers"][0][
            "volumeMounts"
        ]
        if m["name"] == "policy"
    )
    assert settings["ASVAT_POLICY"] == f"{mount}/policy.yaml"


def test_workers_are_an_active_active_pair_within_the_partition_count() -> None:
    """Every worker holds the whole state and publishes its partitions' outputs: two give
    fail-over, at most the partition count publish, and a rolling update waits for a new
    worker to be caught up (/readyz) before it takes an old one away."""
    settings = _of_kind("ConfigMap")["asvat-settings"]["data"]
    partitions = int(settings["ASVAT_TOPIC_PARTITIONS"])
    worker = _of_kind("StatefulSet")["asvat-worker"]["spec"]
    assert 2 <= worker["replicas"] <= partitions
    # One pod at a time, the next once the new one is ready (the StatefulSet's rolling
    # update); readiness means caught up with the topic.
    assert worker["updateStrategy"]["type"] == "RollingUpdate"
    assert "maxUnavailable" not in worker["updateStrategy"].get("rollingUpdate", {})
    (container,) = worker["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert not _of_kind("ScaledObject") and not _of_kind("HorizontalPodAutoscaler")


def test_each_worker_keeps_its_checkpoint_on_a_volume_of_its_own() -> None:
    """The checkpoint directory (ASVAT_DATA_DIR/worker/…) is on a claim per pod, so a
    worker replaced by a rollout or moved to another node restarts from its checkpoint; a
    claim no pod uses is deleted (it holds pseudonymised personal data)."""
    settings = _of_kind("ConfigMap")["asvat-settings"]["data"]
    worker = _of_kind("StatefulSet")["asvat-worker"]["spec"]
    service = _of_kind("Service")[worker["serviceName"]]
    assert service["spec"]["clusterIP"] == "None"  # the StatefulSet's governing service
    (claim,) = worker["volumeClaimTemplates"]
    pod = worker["template"]["spec"]
    (container,) = pod["containers"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == claim["metadata"]["name"])
    assert settings["ASVAT_DATA_DIR"] == mount["mountPath"]
    assert "ASVAT_WORKER_CHECKPOINT_DIR" not in settings  # so: under ASVAT_DATA_DIR
    assert claim["metadata"]["name"] not in {v["name"] for v in pod["volumes"]}
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert worker["persistentVolumeClaimRetentionPolicy"] == {
        "whenDeleted": "Delete", "whenScaled": "Delete"
    }
    # On SIGTERM the batch in hand and the final checkpoint fit in the grace period.
    from services.repeat_detector.replica import FINAL_CHECKPOINT_S, STEP_FINISH_S

    assert pod["terminationGracePeriodSeconds"] >= STEP_FINISH_S + FINAL_CHECKPOINT_S + 15
    readme = (K8S / "README.md").read_text(encoding="utf-8")
    assert "No autoscaling on consumer lag" in readme
