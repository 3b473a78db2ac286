"""Tests of deploy/: the Dockerfile, the compose file and the Kubernetes manifests.

The files are parsed and checked against each other and against the worker:
every environment variable they set must be a setting the worker reads, every
name they refer to must exist, and ports and probe paths must agree. Building
the image needs a Docker engine and INGEST_TEST_DOCKER_BUILD=1.
"""

from __future__ import annotations

import fnmatch
import json
import os
import secrets
import shlex
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from ingest_worker.cli.main import _parser as command_line_parser
from ingest_worker.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
K8S = DEPLOY / "k8s"

# The settings table of the product contract. The worker may read more
# settings than these, but never fewer.
DOCUMENTED_SETTINGS = {
    "DATABASE_URL",
    "KAFKA_BOOTSTRAP_SERVERS",
    "KAFKA_SECURITY_PROTOCOL",
    "KAFKA_SASL_MECHANISM",
    "KAFKA_SASL_USERNAME",
    "KAFKA_SASL_PASSWORD",
    "KAFKA_SSL_CAFILE",
    "KAFKA_ENABLE_IDEMPOTENCE",
    "INGEST_GROUP_ID",
    "INGEST_TOPIC_AUTO",
    "INGEST_TOPIC_BATCH",
    "INGEST_TOPIC_TEST",
    "INGEST_TOPIC_RETRY",
    "INGEST_TOPIC_DLQ",
    "INGEST_TOPIC_NORMALIZED",
    "INGEST_RETRY_DELAYS_S",
    "INGEST_DEFERRABLE_CODES",
    "INGEST_MAX_REPLAYS",
    "INGEST_HTTP_ADDR",
    "INGEST_HTTP_TOKEN",
    "LOG_LEVEL",
    "LOG_FORMAT",
}


class RecordingEnvironment(Mapping[str, str]):
    """An empty environment that records every name looked up in it."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    def __getitem__(self, name: str) -> str:
        self.names.add(name)
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def worker_setting_names() -> set[str]:
    """Return the environment variables that `load_settings` reads."""
    environment = RecordingEnvironment()
    load_settings(environment)
    return environment.names


def port_of(address: str) -> int:
    return int(address.rpartition(":")[2])


def parse_command(arguments: list[str]) -> Any:
    """Parse `ingest-worker ARGUMENTS` as the command line would, or fail."""
    try:
        return command_line_parser().parse_args(arguments)
    except SystemExit:
        pytest.fail(f"`ingest-worker {shlex.join(arguments)}` is not a valid command")


# ---------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------


def test_worker_reads_documented_settings() -> None:
    missing = DOCUMENTED_SETTINGS - worker_setting_names()
    assert missing == set()


# ---------------------------------------------------------------------------
# Dockerfile
# ---------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """Return (INSTRUCTION, arguments) pairs, with continuation lines joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw_line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw_line.strip()
        # Docker drops comment lines, even between continuation lines.
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, arguments = line.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    assert pending == "", "the Dockerfile ends with a continuation line"
    return instructions


def dockerfile_arguments(keyword: str) -> list[str]:
    return [
        arguments for name, arguments in dockerfile_instructions() if name == keyword
    ]


def dockerfile_environment() -> dict[str, str]:
    environment: dict[str, str] = {}
    for arguments in dockerfile_arguments("ENV"):
        for assignment in shlex.split(arguments):
            name, _, value = assignment.partition("=")
            environment[name] = value
    return environment


def dockerfile_user_id() -> int:
    user = dockerfile_arguments("USER")[-1].partition(":")[0]
    assert user.isdigit(), (
        f"USER {user} is not numeric, so runAsNonRoot cannot verify it"
    )
    return int(user)


def test_dockerfile_is_multi_stage_python_slim() -> None:
    stages = dockerfile_arguments("FROM")
    assert len(stages) >= 2
    for stage in stages:
        image = stage.split()[0]
        assert image == "python:3.11-slim"
        assert " AS " in f" {stage.upper()} "


def test_dockerfile_runs_as_non_root() -> None:
    users = dockerfile_arguments("USER")
    assert users, "the Dockerfile has no USER instruction"
    assert users[-1].partition(":")[0] not in ("root", "0")
    assert dockerfile_user_id() != 0


def test_dockerfile_entrypoint_and_command() -> None:
    assert [json.loads(value) for value in dockerfile_arguments("ENTRYPOINT")] == [
        ["ingest-worker"]
    ]
    assert [json.loads(value) for value in dockerfile_arguments("CMD")] == [["run"]]
    parse_command(json.loads(dockerfile_arguments("CMD")[0]))


def test_dockerfile_binds_exposed_port() -> None:
    address = dockerfile_environment()["INGEST_HTTP_ADDR"]
    assert address.startswith("0.0.0.0:")
    assert dockerfile_arguments("EXPOSE") == [str(port_of(address))]


def test_dockerfile_healthcheck_calls_healthz() -> None:
    checks = dockerfile_arguments("HEALTHCHECK")
    assert len(checks) == 1
    assert "/healthz" in checks[0]
    assert "INGEST_HTTP_ADDR" in checks[0]
    assert "127.0.0.1" in checks[0]


def test_dockerfile_installs_without_extras() -> None:
    installs = [
        arguments
        for arguments in dockerfile_arguments("RUN")
        if "pip install" in arguments
    ]
    assert installs, "the Dockerfile installs nothing with pip"
    for arguments in installs:
        assert "[" not in arguments, arguments
        assert " -e " not in f" {arguments} ", arguments
        assert "--editable" not in arguments, arguments


def copied_sources() -> list[Path]:
    """Return the build-context paths that COPY takes, without COPY --from."""
    sources: list[Path] = []
    for arguments in dockerfile_arguments("COPY"):
        if arguments.startswith("--from"):
            continue
        *names, _destination = shlex.split(arguments)
        sources.extend(ROOT / name for name in names)
    return sources


def test_dockerfile_copy_sources_exist() -> None:
    sources = copied_sources()
    assert ROOT / "pyproject.toml" in sources
    assert ROOT / "ingest_worker" in sources
    for source in sources:
        assert source.exists(), f"COPY source {source.relative_to(ROOT)} is missing"


def test_dockerfile_copies_symlink_targets() -> None:
    # A link inside a copied folder is copied as a link, so its target must be
    # copied too, or the package would build without those files.
    sources = [source.resolve() for source in copied_sources()]
    for source in copied_sources():
        if not source.is_dir():
            continue
        for path in source.rglob("*"):
            if not path.is_symlink():
                continue
            target = path.resolve()
            assert any(target.is_relative_to(copied) for copied in sources), (
                f"{path.relative_to(ROOT)} links to {target}, which is not copied"
            )


def test_dockerignore_keeps_copied_sources() -> None:
    ignore_file = DEPLOY / "Dockerfile.dockerignore"
    patterns = [
        line.strip()
        for line in ignore_file.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ".venv" in patterns
    for source in copied_sources():
        name = source.relative_to(ROOT).as_posix()
        for pattern in patterns:
            assert not fnmatch.fnmatch(name, pattern), f"{pattern} ignores {name}"


# ---------------------------------------------------------------------------
# docker-compose.yml
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


def worker_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Return the services built from deploy/Dockerfile."""
    found = {}
    for name, service in compose["services"].items():
        build = service.get("build")
        if not isinstance(build, dict):
            continue
        if (COMPOSE_FILE.parent / build["context"]).resolve() != ROOT:
            continue
        if (ROOT / build["dockerfile"]).resolve() == DOCKERFILE:
            found[name] = service
    return found


def compose_environment(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment") or {}
    assert isinstance(environment, dict), "use the mapping form of environment"
    return {name: str(value) for name, value in environment.items()}


def test_compose_file_parses(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {
        "kafka",
        "postgres",
        "topics",
        "migrate",
        "worker",
    }


def test_compose_worker_services_use_dockerfile(compose: dict[str, Any]) -> None:
    assert set(worker_services(compose)) == {"topics", "migrate", "worker"}


def test_compose_environment_names_are_settings(compose: dict[str, Any]) -> None:
    known = worker_setting_names()
    for name, service in worker_services(compose).items():
        unknown = set(compose_environment(service)) - known
        assert unknown == set(), f"service {name} sets unknown settings {unknown}"


def test_compose_environment_loads(compose: dict[str, Any]) -> None:
    for service in worker_services(compose).values():
        settings = load_settings(compose_environment(service))
        assert settings.kafka.enable_idempotence is True
        assert settings.http_addr == "0.0.0.0:8080"
        assert settings.database_url is not None


def test_compose_addresses_name_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    environment = compose_environment(services["worker"])

    database = urlsplit(environment["DATABASE_URL"])
    assert database.hostname in services
    postgres = services[database.hostname]["environment"]
    assert database.username == postgres["POSTGRES_USER"]
    assert database.password == postgres["POSTGRES_PASSWORD"]
    assert database.path.lstrip("/") == postgres["POSTGRES_DB"]

    bootstrap = environment["KAFKA_BOOTSTRAP_SERVERS"]
    assert bootstrap.partition(":")[0] in services
    kafka = services[bootstrap.partition(":")[0]]["environment"]
    assert f"://{bootstrap}" in kafka["KAFKA_ADVERTISED_LISTENERS"]


def test_compose_kafka_listeners_are_consistent(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]["environment"]
    protocols = dict(
        entry.split(":")
        for entry in kafka["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    listeners = [entry.split("://")[0] for entry in kafka["KAFKA_LISTENERS"].split(",")]
    advertised = [
        entry.split("://")[0]
        for entry in kafka["KAFKA_ADVERTISED_LISTENERS"].split(",")
    ]
    assert set(listeners) <= set(protocols)
    assert set(advertised) <= set(listeners)
    assert kafka["KAFKA_CONTROLLER_LISTENER_NAMES"] in listeners
    assert kafka["KAFKA_CONTROLLER_LISTENER_NAMES"] not in advertised
    assert kafka["KAFKA_INTER_BROKER_LISTENER_NAME"] in advertised
    assert "broker" in kafka["KAFKA_PROCESS_ROLES"]
    assert "controller" in kafka["KAFKA_PROCESS_ROLES"]
    assert kafka["CLUSTER_ID"]


def test_compose_depends_on_names_exist(compose: dict[str, Any]) -> None:
    services = compose["services"]
    conditions = {
        "service_started",
        "service_healthy",
        "service_completed_successfully",
    }
    for name, service in services.items():
        for dependency, rule in (service.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            assert rule["condition"] in conditions
            if rule["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], dependency
            if rule["condition"] == "service_completed_successfully":
                assert services[dependency].get("restart") == "no", dependency


def test_compose_worker_waits_for_setup(compose: dict[str, Any]) -> None:
    depends_on = compose["services"]["worker"]["depends_on"]
    assert depends_on["topics"]["condition"] == "service_completed_successfully"
    assert depends_on["migrate"]["condition"] == "service_completed_successfully"
    assert depends_on["kafka"]["condition"] == "service_healthy"
    assert depends_on["postgres"]["condition"] == "service_healthy"


def test_compose_commands_are_valid(compose: dict[str, Any]) -> None:
    services = worker_services(compose)
    assert services["topics"]["command"] == ["topics", "ensure", "--partitions", "6"]
    assert services["migrate"]["command"] == ["migrate"]
    assert services["worker"]["command"] == ["run"]
    for service in services.values():
        parse_command(service["command"])


def test_compose_ports_bind_loopback(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for mapping in service.get("ports", []):
            assert str(mapping).startswith("127.0.0.1:"), f"{name} publishes {mapping}"


def test_compose_worker_publishes_http_port(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    port = port_of(compose_environment(worker)["INGEST_HTTP_ADDR"])
    assert [int(str(mapping).rpartition(":")[2]) for mapping in worker["ports"]] == [
        port
    ]


def test_compose_images_are_pinned(compose: dict[str, Any]) -> None:
    assert compose["services"]["kafka"]["image"].startswith("apache/kafka:")
    assert compose["services"]["postgres"]["image"] == "postgres:16"
    for service in compose["services"].values():
        assert not service["image"].endswith(":latest")


# ---------------------------------------------------------------------------
# Kubernetes manifests
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if document is None:
                continue
            key = (document["kind"], document["metadata"]["name"])
            assert key not in found, f"{key} is defined twice"
            found[key] = document
    return found


def pod_specs(
    manifests: dict[tuple[str, str], dict[str, Any]],
) -> dict[str, dict[str, Any]]:
    return {
        f"{kind}/{name}": document["spec"]["template"]["spec"]
        for (kind, name), document in manifests.items()
        if kind in ("Deployment", "Job")
    }


def containers(
    manifests: dict[tuple[str, str], dict[str, Any]],
) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """Yield (workload/container, container, pod spec) for every container."""
    for workload, spec in pod_specs(manifests).items():
        for container in spec.get("initContainers", []) + spec["containers"]:
            yield f"{workload}/{container['name']}", container, spec


def container_environment(
    manifests: dict[tuple[str, str], dict[str, Any]], container: dict[str, Any]
) -> dict[str, str]:
    """Return the environment that envFrom and env give the container."""
    environment: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            config_map = manifests[("ConfigMap", source["configMapRef"]["name"])]
            environment.update(config_map.get("data", {}))
        if "secretRef" in source:
            secret = manifests[("Secret", source["secretRef"]["name"])]
            environment.update(secret.get("stringData", {}))
    for variable in container.get("env", []):
        environment[variable["name"]] = str(variable.get("value", ""))
    return environment


def worker_container(
    manifests: dict[tuple[str, str], dict[str, Any]],
) -> dict[str, Any]:
    deployment = manifests[("Deployment", "ingest-worker")]
    return deployment["spec"]["template"]["spec"]["containers"][0]


def test_k8s_expected_objects_exist(
    manifests: dict[tuple[str, str], dict[str, Any]],
) -> None:
    assert set(manifests) == {
        ("ConfigMap", "ingest-worker"),
        ("ConfigMap", "ingest-worker-kafka-ca"),
        ("Secret", "ingest-worker"),
        ("Deployment", "ingest-worker"),
        ("Job", "ingest-worker-migrate"),
        ("Job", "ingest-worker-topics"),
        ("Service", "ingest-worker"),
    }


def test_k8s_manifests_name_no_namespace(
    manifests: dict[tuple[str, str], dict[str, Any]],
) -> None:
    for key, document in manifests.items():
        assert "namespace" not in document["metadata"], key


def test_k8s_referenced_objects_exist(
    manifests: dict[tuple[str, str], dict[str, Any]],
) -> None:
    for label, container, spec in containers(manifests):
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                assert ("ConfigMap", source["configMapRef"]["name"]) in manifests, label
            if "secretRef" in source:
                assert ("Secret", source["secretRef"]["name"]) in manifests, label
        volumes = {volume["name"]: volume for volume in spec.get("volumes", [])}
        for mount in container.get("volumeMounts", []):
            assert mount["name"] in volumes, f"{label} mounts unknown {mount['name']}"
    for workload, spec in pod_specs(manifests).items():
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                assert ("ConfigMap", volume["configMap"]["name"]) in manifests, workload
            if "secret" in volume:
                assert ("Secret", volume["secret"]["secretName"]) in manifests, workload


def test_k8s_environment_names_are_settings(
    manifests: dict[tuple[str, str], dict[str, Any]],
) -> None:
    known = worker_setting_names()
    for label, container, _ in containers(manifests):
        unknown = set(container_environment(manifests, container)) - known
        assert unknown == set(), f"{label} sets unknown settings {unknown}"


def test_k8s_secret_holds_secret_settings(
    manifests: dict[tuple[str, str], dict[str, Any]],
) -> None:
    secret = manifests[("Secret", "ingest-worker")]["stringData"]
    config = manifests[("ConfigMap", "ingest-worker")]["data"]
    assert set(secret) == {"DATABASE_URL", "KAFKA_SASL_PASSWORD"}
    assert not set(secret) & set(config)
    for value in secret.values():
        assert "REPLACE-ME" in value


def test_k8s_environment_loads(
    manifests: dict[tuple[str, str], dict[str, Any]],
) -> None:
    for label, container, _ in containers(manifests):
        settings = load_settings(container_environment(manifests, container))
        assert settings.database_url is not None, label
        assert settings.kafka.enable_idempotence is True, label
        assert settings.kafka.sasl_password is not None, label


def test_k8s_worker_port_matches_settings(
    manifests: dict[tuple[str, str], dict[str, Any]],
) -> None:
    container = worker_container(manifests)
    address = container_environment(manifests, container)["INGEST_HTTP_ADDR"]
    assert address.startswith("0.0.0.0:")
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": port_of(address)}
    assert ports["http"] == int(dockerfile_arguments("EXPOSE")[0])


def test_k8s_probe_paths(manifests: dict[tuple[str, str], dict[str, Any]]) -> None:
    container = worker_container(manifests)
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    expected = {
        "startupProbe": "/healthz",
        "livenessProbe": "/healthz",
        "readinessProbe": "/readyz",
    }
    for probe_name, path in expected.items():
        probe = container[probe_name]["httpGet"]
        assert probe["path"] == path, probe_name
        assert probe["port"] in ports or probe["port"] in ports.values(), probe_name


def test_k8s_pods_run_as_non_root(
    manifests: dict[tuple[str, str], dict[str, Any]],
) -> None:
    user_id = dockerfile_user_id()
    for workload, spec in pod_specs(manifests).items():
        security = spec["securityContext"]
        assert security["runAsNonRoot"] is True, workload
        assert security["runAsUser"] == user_id, workload
        assert spec["automountServiceAccountToken"] is False, workload
        assert spec["enableServiceLinks"] is False, workload
    for label, container, _ in containers(manifests):
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False, label
        assert security["readOnlyRootFilesystem"] is True, label
        assert security["capabilities"]["drop"] == ["ALL"], label


def test_k8s_containers_have_resources(
    manifests: dict[tuple[str, str], dict[str, Any]],
) -> None:
    for label, container, _ in containers(manifests):
        assert container["resources"]["requests"]["cpu"], label
        assert container["resources"]["requests"]["memory"], label
        assert container["resources"]["limits"]["memory"], label


def test_k8s_kafka_ca_file_is_mounted(
    manifests: dict[tuple[str, str], dict[str, Any]],
) -> None:
    for label, container, spec in containers(manifests):
        if container["args"][0] not in ("run", "topics"):
            continue
        ca_file = PurePosixPath(
            container_environment(manifests, container)["KAFKA_SSL_CAFILE"]
        )
        mounts = {
            mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]
        }
        assert str(ca_file.parent) in mounts, label
        volumes = {volume["name"]: volume for volume in spec["volumes"]}
        config_map = volumes[mounts[str(ca_file.parent)]]["configMap"]["name"]
        assert ca_file.name in manifests[("ConfigMap", config_map)]["data"], label


def test_k8s_container_arguments_are_commands(
    manifests: dict[tuple[str, str], dict[str, Any]],
) -> None:
    expected = {
        "Deployment/ingest-worker/worker": "run",
        "Job/ingest-worker-migrate/migrate": "migrate",
        "Job/ingest-worker-topics/topics": "topics",
    }
    found = {}
    for label, container, _ in containers(manifests):
        assert "command" not in container, f"{label} replaces the image entry point"
        found[label] = parse_command(container["args"]).command
    assert found == expected


def test_k8s_images_agree(manifests: dict[tuple[str, str], dict[str, Any]]) -> None:
    images = {container["image"] for _, container, _ in containers(manifests)}
    assert len(images) == 1


def test_k8s_worker_stops_gracefully(
    manifests: dict[tuple[str, str], dict[str, Any]],
) -> None:
    spec = manifests[("Deployment", "ingest-worker")]["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] >= 30


def test_k8s_deployment_selects_its_pods(
    manifests: dict[tuple[str, str], dict[str, Any]],
) -> None:
    deployment = manifests[("Deployment", "ingest-worker")]["spec"]
    pod_labels = deployment["template"]["metadata"]["labels"]
    assert deployment["selector"]["matchLabels"].items() <= pod_labels.items()
    assert deployment["replicas"] >= 1


def test_k8s_service_targets_worker_port(
    manifests: dict[tuple[str, str], dict[str, Any]],
) -> None:
    service = manifests[("Service", "ingest-worker")]["spec"]
    deployment = manifests[("Deployment", "ingest-worker")]["spec"]
    pod_labels = deployment["template"]["metadata"]["labels"]
    assert service["selector"].items() <= pod_labels.items()
    # Job pods must not receive the Service's traffic.
    for (kind, _), document in manifests.items():
        if kind == "Job":
            job_labels = document["spec"]["template"]["metadata"]["labels"]
            assert not service["selector"].items() <= job_labels.items()
    port_names = {port["name"] for port in worker_container(manifests)["ports"]}
    for port in service["ports"]:
        assert port["targetPort"] in port_names


def test_k8s_jobs_run_once(manifests: dict[tuple[str, str], dict[str, Any]]) -> None:
    for (kind, name), document in manifests.items():
        if kind != "Job":
            continue
        assert document["spec"]["template"]["spec"]["restartPolicy"] == "Never", name
        assert document["spec"]["backoffLimit"] >= 1, name


# ---------------------------------------------------------------------------
# Building the image
# ---------------------------------------------------------------------------


def docker(*arguments: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *arguments],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


@pytest.mark.skipif(
    os.environ.get("INGEST_TEST_DOCKER_BUILD") != "1",
    reason="set INGEST_TEST_DOCKER_BUILD=1 to build the image; it pulls "
    "python:3.11-slim and the dependencies from their registries",
)
def test_image_builds_and_runs() -> None:
    if shutil.which("docker") is None:
        pytest.skip("the docker command is not installed")
    if docker("info", timeout_s=30).returncode != 0:
        pytest.skip("no Docker engine is running")

    tag = f"ingest-worker:test-{secrets.token_hex(4)}"
    build = docker(
        "build", "--file", str(DOCKERFILE), "--tag", tag, str(ROOT), timeout_s=1200
    )
    assert build.returncode == 0, build.stderr[-4000:]
    try:
        help_output = docker("run", "--rm", tag, "--help", timeout_s=120)
        assert help_output.returncode == 0, help_output.stderr
        assert "migrate" in help_output.stdout

        user = docker("run", "--rm", "--entrypoint", "id", tag, "-u", timeout_s=120)
        assert user.returncode == 0, user.stderr
        assert int(user.stdout.strip()) == dockerfile_user_id()

        migrations = docker(
            "run",
            "--rm",
            "--entrypoint",
            "python",
            tag,
            "-c",
            "from ingest_worker.storage.migrations import load_migrations; "
            "print(len(load_migrations()))",
            timeout_s=120,
        )
        assert migrations.returncode == 0, migrations.stderr
        assert int(migrations.stdout.strip()) == len(list((ROOT / "sql").glob("*.sql")))
    finally:
        docker("image", "rm", "--force", tag, timeout_s=120)
