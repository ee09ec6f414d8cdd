"""deploy/docker: the Dockerfile and the compose file, checked without a Docker engine.

No engine runs here, so nothing is built or started. What can be checked is: the Dockerfile's
stages, user, entry point and health check, and that it copies what the package needs; the
compose file parses, references only files and services that exist, its settings load as
real cellwatch settings, its cellwatch command lines parse with the real CLI, and its
service names and ports agree with the Prometheus and Grafana configs. `docker compose
config` validates the file when the compose plugin is installed.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Mapping
from pathlib import Path

import click
import pytest
import yaml

from cellwatch.cli import main as cli
from cellwatch.settings import load_settings
from cellwatch.settings_display import describe_settings
from streaming.http_endpoint import MetricsEndpoint
from tests.unit.deploy.conftest import http_status

REPO = Path(__file__).resolve().parents[3]
DOCKER = REPO / "deploy" / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
DOCKERIGNORE = DOCKER / "Dockerfile.dockerignore"
COMPOSE = DOCKER / "docker-compose.yml"
PROMETHEUS_YML = REPO / "deploy" / "prometheus" / "prometheus.yml"
GRAFANA = REPO / "deploy" / "grafana"
KAFKA_POM = REPO / "deploy" / "kafka" / "pom.xml"

CELLWATCH_SERVICES = ("sample-data", "train", "worker", "replay")


def check_settings(env: Mapping[str, str], where: str) -> None:
    """The CELLWATCH_ variables of ``env`` are real settings with valid values."""
    cellwatch = {k: str(v) for k, v in env.items() if k.startswith("CELLWATCH_")}
    known = {env_var for _, env_var, _, _ in describe_settings()}
    assert set(cellwatch) <= known, f"{where}: not settings: {sorted(set(cellwatch) - known)}"
    load_settings(environ=cellwatch)


# --- Dockerfile ------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[int, str, str]]:
    """(stage index, INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    logical, current = [], ""
    for line in text.splitlines():
        if not current and (line.lstrip().startswith("#") or not line.strip()):
            continue
        if line.lstrip().startswith("#"):
            continue
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        logical.append(current.strip())
        current = ""
    stage = -1
    result = []
    for line in logical:
        instruction, _, args = line.partition(" ")
        if instruction.upper() == "FROM":
            stage += 1
        result.append((stage, instruction.upper(), args.strip()))
    return result


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last = max(stage for stage, _, _ in instructions)
    return [(i, a) for stage, i, a in instructions if stage == last]


def dockerfile_env() -> dict[str, str]:
    env = {}
    for instruction, args in final_stage():
        if instruction == "ENV":
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def test_dockerfile_is_multi_stage_and_the_runtime_copies_the_built_venv() -> None:
    froms = [args for _, i, args in dockerfile_instructions() if i == "FROM"]
    assert len(froms) >= 2
    build_stage = re.search(r"\bAS\s+(\S+)", froms[0], flags=re.IGNORECASE)
    assert build_stage, "the build stage needs a name to copy from"
    copies = [args for i, args in final_stage() if i == "COPY"]
    assert any(f"--from={build_stage.group(1)}" in args for args in copies)
    # The runtime stage gets no source tree and no compiler, only the venv.
    assert all("--from=" in args for args in copies)


def test_dockerfile_runs_as_a_fixed_non_root_user() -> None:
    users = [args for i, args in final_stage() if i == "USER"]
    assert users, "the runtime stage sets no USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    assert user.isdigit(), "a numeric uid lets Kubernetes' runAsNonRoot verify it"


def test_dockerfile_entry_point_is_the_cellwatch_command() -> None:
    entrypoint = [json.loads(a) for i, a in final_stage() if i == "ENTRYPOINT"][-1]
    cmd = [json.loads(a) for i, a in final_stage() if i == "CMD"][-1]
    assert entrypoint == ["cellwatch"]
    assert cmd[0] in cli.commands
    installed_scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert "cellwatch" in installed_scripts


def test_dockerfile_health_check_probes_healthz_on_the_metrics_port() -> None:
    checks = [a for i, a in final_stage() if i == "HEALTHCHECK"]
    assert len(checks) == 1
    assert "/healthz" in checks[0] and "CELLWATCH_METRICS_PORT" in checks[0]
    env = dockerfile_env()
    exposed = [a for i, a in final_stage() if i == "EXPOSE"]
    assert exposed == [env["CELLWATCH_METRICS_PORT"]]
    # Loopback-only would make the port unreachable from outside the container.
    assert env["CELLWATCH_METRICS_HOST"] == "0.0.0.0"


def test_dockerfile_settings_are_real() -> None:
    check_settings(dockerfile_env(), "Dockerfile ENV")


def test_dockerfile_copies_every_package_and_the_files_pip_needs() -> None:
    sources = []
    for _, instruction, args in dockerfile_instructions():
        if instruction == "COPY" and "--from=" not in args:
            sources += shlex.split(args)[:-1]
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: not in the build context"
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    packages = {pattern.rstrip("*") for pattern in
                pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages | {"pyproject.toml", pyproject["project"]["readme"]} <= set(sources)


def test_dockerignore_lets_every_copied_source_through() -> None:
    patterns = [line.strip() for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
                if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*", "the context is the whole repository: exclude by default"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    sources = {s for _, i, a in dockerfile_instructions() if i == "COPY" and "--from=" not in a
               for s in shlex.split(a)[:-1]}
    assert sources <= allowed


def test_health_check_path_is_served_by_the_worker_endpoint(endpoint: MetricsEndpoint) -> None:
    check = next(a for i, a in final_stage() if i == "HEALTHCHECK")
    path = re.search(r"(/[a-z]+)'", check).group(1)
    assert http_status(endpoint.url + path) == 200
    assert http_status(endpoint.url + "/nonexistent") == 404


# --- docker-compose.yml ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def service_env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def volume_mounts(service: dict) -> list[tuple[str, str, bool]]:
    """(source, target, read-only) of each short-syntax volume."""
    mounts = []
    for spec in service.get("volumes", []):
        parts = spec.split(":")
        mounts.append((parts[0], parts[1], len(parts) > 2 and "ro" in parts[2].split(",")))
    return mounts


def parse_cellwatch(args: list[str], tmp_path: Path) -> click.Context:
    """Parses a cellwatch command line with the real CLI; container paths are recreated
    under ``tmp_path`` (as files when they have a suffix) so that path checks pass."""
    local = []
    for arg in args:
        if arg.startswith("/var/lib/cellwatch/"):
            path = tmp_path / arg.lstrip("/")
            if path.suffix:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()
            local.append(str(path))
        else:
            local.append(arg)
    parent = cli.make_context("cellwatch", list(local))
    command = cli.commands[local[0]]
    return command.make_context(local[0], local[1:], parent=parent)


def test_compose_services_and_dependencies_exist(compose: dict) -> None:
    services = compose["services"]
    expected = {"kafka", "kafka-init", "prometheus", "grafana", *CELLWATCH_SERVICES}
    assert expected <= set(services)
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on missing {dependency}"


def test_compose_bind_mounts_and_build_files_exist(compose: dict) -> None:
    declared = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        for source, _, _ in volume_mounts(service):
            if source.startswith((".", "/")):
                assert (COMPOSE.parent / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"
        if "build" in service:
            context = COMPOSE.parent / service["build"]["context"]
            assert (context / service["build"]["dockerfile"]).resolve() == DOCKERFILE.resolve()
            assert (context / "pyproject.toml").is_file()


def test_compose_cellwatch_services_use_the_image_and_real_settings(compose: dict) -> None:
    for name in CELLWATCH_SERVICES:
        service = compose["services"][name]
        assert service["image"] == compose["services"]["worker"]["image"]
    check_settings(service_env(compose["services"]["worker"]), "compose worker")


@pytest.mark.parametrize("name", ["sample-data", "train", "replay"])
def test_compose_job_settings_are_real(compose: dict, name: str) -> None:
    check_settings(service_env(compose["services"][name]), f"compose {name}")


@pytest.mark.parametrize("name", CELLWATCH_SERVICES)
def test_compose_command_lines_parse_with_the_cli(compose: dict, name: str,
                                                  tmp_path: Path) -> None:
    parse_cellwatch([str(a) for a in compose["services"][name]["command"]], tmp_path)


def test_compose_pipeline_files_and_topics_line_up(compose: dict) -> None:
    services = compose["services"]
    sample_dir = services["sample-data"]["command"][1]
    recording = f"{sample_dir}/readings.csv"  # what `cellwatch synth OUT_DIR` writes
    assert services["train"]["command"][1] == recording
    assert services["replay"]["command"][1] == recording
    worker_env = service_env(services["worker"])
    topic = worker_env["CELLWATCH_KAFKA_READINGS_TOPIC"]
    replay = services["replay"]["command"]
    assert replay[replay.index("--to-kafka") + 1] == topic
    init = services["kafka-init"]["command"]
    assert init[init.index("--topic") + 1] == topic
    # The artifact training writes is where the worker loads it from.
    artifact = worker_env["CELLWATCH_MODEL_ARTIFACT"]
    assert service_env(services["train"])["CELLWATCH_MODEL_ARTIFACT"] == artifact
    for name, writable in (("train", True), ("worker", False)):
        mounts = [(t, ro) for s, t, ro in volume_mounts(services[name]) if s == "models"]
        assert len(mounts) == 1 and artifact.startswith(mounts[0][0] + "/")
        assert mounts[0][1] is not writable


def test_compose_kafka_is_the_tested_release_and_advertises_the_bootstrap(compose: dict) -> None:
    kafka = compose["services"]["kafka"]
    version = re.search(r"<kafka.version>([^<]+)</kafka.version>",
                        KAFKA_POM.read_text(encoding="utf-8")).group(1)
    assert kafka["image"] == f"apache/kafka:{version}"
    assert compose["services"]["kafka-init"]["image"] == kafka["image"]
    advertised = kafka["environment"]["KAFKA_ADVERTISED_LISTENERS"].split(",")
    bootstrap = service_env(compose["services"]["worker"])["CELLWATCH_KAFKA_BOOTSTRAP_SERVERS"]
    assert f"PLAINTEXT://{bootstrap}" in advertised


def test_compose_prometheus_scrapes_the_worker_service_on_its_port(compose: dict) -> None:
    services = compose["services"]
    mounts = {t: s for s, t, _ in volume_mounts(services["prometheus"])}
    assert (COMPOSE.parent / mounts["/etc/prometheus"]).resolve() == PROMETHEUS_YML.parent
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]
    config = yaml.safe_load(PROMETHEUS_YML.read_text(encoding="utf-8"))
    job = next(c for c in config["scrape_configs"] if c["job_name"] == "cellwatch")
    port = int(service_env(services["worker"])["CELLWATCH_METRICS_PORT"])
    assert [(sd["names"], sd["port"]) for sd in job["dns_sd_configs"]] == [(["worker"], port)]
    assert [str(p) for p in services["worker"]["expose"]] == [str(port)]
    assert service_env(services["worker"])["CELLWATCH_METRICS_HOST"] == "0.0.0.0"


def test_compose_grafana_provisions_the_datasource_and_dashboard(compose: dict) -> None:
    services = compose["services"]
    grafana = services["grafana"]
    mounts = {t: (COMPOSE.parent / s).resolve() for s, t, _ in volume_mounts(grafana)}
    assert mounts["/etc/grafana/provisioning"] == (GRAFANA / "provisioning").resolve()
    provider = yaml.safe_load((GRAFANA / "provisioning/dashboards/cellwatch.yml").read_text())
    dashboards_dir = provider["providers"][0]["options"]["path"]
    assert mounts[dashboards_dir] == (GRAFANA / "dashboards").resolve()
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (mounts[dashboards_dir] / Path(home).relative_to(dashboards_dir)).is_file()
    datasource = yaml.safe_load(
        (GRAFANA / "provisioning/datasources/prometheus.yml").read_text())["datasources"][0]
    host, port = re.fullmatch(r"http://([^:/]+):(\d+)", datasource["url"]).groups()
    assert host in services
    listen = next(a for a in services["prometheus"]["command"] if "listen-address" in a)
    assert listen.endswith(f":{port}")


def test_compose_worker_starts_after_its_topic_and_model(compose: dict) -> None:
    depends = compose["services"]["worker"]["depends_on"]
    assert depends["kafka-init"]["condition"] == "service_completed_successfully"
    assert depends["train"]["condition"] == "service_completed_successfully"
    assert compose["services"]["replay"]["depends_on"]["worker"]["condition"] == "service_healthy"


def docker_compose_available() -> bool:
    docker = shutil.which("docker")
    if docker is None:
        return False
    result = subprocess.run([docker, "compose", "version"], capture_output=True, text=True,
                            timeout=30, check=False)
    return result.returncode == 0


@pytest.mark.skipif(not docker_compose_available(),
                    reason="the docker compose plugin is not installed (docker compose version "
                           "fails); the structure tests above still ran")
def test_docker_compose_config_validates_the_file() -> None:
    result = subprocess.run(["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
