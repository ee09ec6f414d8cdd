"""deploy/k8s: the manifests parse, and their labels, selectors, ports, probes, settings,
volumes and names agree with each other, with the image, and with the Prometheus rules.

No cluster runs here; the probes are checked against the worker's real HTTP endpoint.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from cellwatch.cli import main as cli
from cellwatch.settings import load_settings
from cellwatch.settings_display import describe_settings
from streaming.http_endpoint import MetricsEndpoint
from tests.unit.deploy.conftest import http_status

REPO = Path(__file__).resolve().parents[3]
K8S = REPO / "deploy" / "k8s"
DOCKERFILE = REPO / "deploy" / "docker" / "Dockerfile"
PROMETHEUS_YML = REPO / "deploy" / "prometheus" / "prometheus.yml"
ALERTS = REPO / "deploy" / "prometheus" / "rules" / "cellwatch-alerts.yml"
DEPLOY_README = REPO / "deploy" / "README.md"

REQUIRED_KEYS = ("apiVersion", "kind", "metadata")


def manifests() -> list[tuple[str, dict]]:
    found = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc is not None:
                found.append((path.name, doc))
    return found


def one(kind: str, name: str | None = None) -> dict:
    matches = [d for _, d in manifests()
               if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def deployment() -> dict:
    return one("Deployment", "cellwatch-worker")


def job() -> dict:
    return one("Job", "cellwatch-train")


def worker_container() -> dict:
    return deployment()["spec"]["template"]["spec"]["containers"][0]


def config_data() -> dict[str, str]:
    return one("ConfigMap", "cellwatch-config")["data"]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_every_manifest_is_a_named_kubernetes_object() -> None:
    seen = set()
    for filename, doc in manifests():
        for key in REQUIRED_KEYS:
            assert key in doc, f"{filename}: no {key}"
        identity = (doc["kind"], doc["metadata"]["name"])
        assert identity not in seen, f"{filename}: {identity} twice"
        seen.add(identity)
        assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "cellwatch"
    kinds = {kind for kind, _ in seen}
    assert {"Deployment", "ConfigMap", "Service", "ServiceMonitor", "Job"} <= kinds


def test_kustomization_lists_exactly_the_manifests() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(files)


def test_deployment_selector_matches_its_pods() -> None:
    spec = deployment()["spec"]
    selector = spec["selector"]["matchLabels"]
    assert selector and selects(selector, spec["template"]["metadata"]["labels"])


def test_replicas_share_one_consumer_group() -> None:
    assert deployment()["spec"]["replicas"] >= 2
    group = config_data()["CELLWATCH_KAFKA_GROUP_ID"]
    assert group
    # A per-pod group id (from the pod name, say) would make every replica read everything.
    overridden = {e["name"] for e in worker_container().get("env", [])}
    assert "CELLWATCH_KAFKA_GROUP_ID" not in overridden


def test_service_selects_the_workers_and_not_the_training_pods() -> None:
    service = one("Service", "cellwatch")
    selector = service["spec"]["selector"]
    assert selects(selector, deployment()["spec"]["template"]["metadata"]["labels"])
    assert not selects(selector, job()["spec"]["template"]["metadata"]["labels"])
    container_ports = {p["name"]: p["containerPort"] for p in worker_container()["ports"]}
    for port in service["spec"]["ports"]:
        assert port["targetPort"] in container_ports
        assert port["port"] == container_ports[port["targetPort"]]


def test_service_monitor_scrapes_the_service_metrics_port() -> None:
    monitor = one("ServiceMonitor", "cellwatch")
    service = one("Service", "cellwatch")
    assert selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in service_ports
        assert endpoint["path"] == "/metrics"
        # The rate1m recording rules need at least two scrapes in a minute.
        seconds = int(re.fullmatch(r"(\d+)s", endpoint["interval"]).group(1))
        assert seconds <= 30


def test_the_job_label_the_alerts_select_is_the_service_name() -> None:
    # The Prometheus Operator sets `job` to the Service's name.
    service = one("Service", "cellwatch")
    assert "jobLabel" not in one("ServiceMonitor", "cellwatch")["spec"]
    alert_jobs = set(re.findall(r'job="([^"]+)"', ALERTS.read_text(encoding="utf-8")))
    scrape_jobs = {c["job_name"] for c in yaml.safe_load(PROMETHEUS_YML.read_text())
                   ["scrape_configs"]}
    assert alert_jobs == {service["metadata"]["name"]}
    assert service["metadata"]["name"] in scrape_jobs


def test_probes_point_at_the_worker_endpoints_on_the_metrics_port() -> None:
    container = worker_container()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    expected = {"startupProbe": "/healthz", "livenessProbe": "/healthz",
                "readinessProbe": "/readyz"}
    for probe, path in expected.items():
        http = container[probe]["httpGet"]
        assert http["path"] == path, probe
        assert http["port"] in ports, probe
        assert ports[http["port"]] == int(config_data()["CELLWATCH_METRICS_PORT"])
    assert config_data()["CELLWATCH_METRICS_HOST"] == "0.0.0.0"


def test_probe_paths_are_served_by_the_worker_endpoint(endpoint: MetricsEndpoint) -> None:
    container = worker_container()
    paths = {container[p]["httpGet"]["path"]
             for p in ("startupProbe", "livenessProbe", "readinessProbe")}
    for path in paths | {"/metrics"}:
        assert http_status(endpoint.url + path) == 200, path
    assert http_status(endpoint.url + "/nonexistent") == 404


def test_liveness_allows_for_the_workers_own_stall_detection() -> None:
    # /healthz itself fails after 120 s of a silent main loop; the probe must not be so
    # impatient that a slow but healthy request thread gets the pod killed.
    liveness = worker_container()["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 30
    startup = worker_container()["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120


@pytest.mark.parametrize("kind_name", [("Deployment", "cellwatch-worker"),
                                       ("Job", "cellwatch-train")])
def test_containers_request_resources_and_run_as_the_image_user(kind_name) -> None:
    pod = one(*kind_name)["spec"]["template"]["spec"]
    image_user = re.search(r"^USER\s+(\d+)", DOCKERFILE.read_text(), flags=re.MULTILINE)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert str(pod["securityContext"]["runAsUser"]) == image_user.group(1)
    for container in pod["containers"]:
        requests = container["resources"]["requests"]
        assert {"cpu", "memory"} <= set(requests)
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["image"] == worker_container()["image"]


@pytest.mark.parametrize("kind_name", [("Deployment", "cellwatch-worker"),
                                       ("Job", "cellwatch-train")])
def test_service_links_are_off(kind_name) -> None:
    # Kubernetes injects <SERVICE>_SERVICE_HOST and the like for every Service in the
    # namespace; a Service called cellwatch-metrics would give CELLWATCH_METRICS_SERVICE_HOST,
    # which the settings loader rejects as an unknown setting of the metrics section.
    assert one(*kind_name)["spec"]["template"]["spec"]["enableServiceLinks"] is False


def test_config_map_holds_real_settings_that_load() -> None:
    data = config_data()
    known = {env for _, env, _, _ in describe_settings()}
    assert set(data) <= known, sorted(set(data) - known)
    load_settings(environ=dict(data))


def test_credentials_come_from_the_documented_secret() -> None:
    known = {env for _, env, _, _ in describe_settings()}
    secrets = set()
    for item in worker_container().get("env", []):
        assert item["name"] in known, item["name"]
        ref = item.get("valueFrom", {}).get("secretKeyRef")
        assert ref is not None, f"{item['name']}: only credentials belong outside the ConfigMap"
        secrets.add((ref["name"], ref["key"]))
    assert {name for name, _ in secrets} == {"cellwatch-kafka-credentials"}
    readme = DEPLOY_README.read_text(encoding="utf-8")
    for name, key in secrets:
        assert name in readme and key in readme, f"deploy/README.md must say how to create {key}"
    # Passwords never sit in the ConfigMap.
    assert not any("PASSWORD" in key for key in config_data())


def test_env_from_refers_to_the_config_map() -> None:
    for kind_name in (("Deployment", "cellwatch-worker"), ("Job", "cellwatch-train")):
        container = one(*kind_name)["spec"]["template"]["spec"]["containers"][0]
        refs = [e["configMapRef"]["name"] for e in container["envFrom"]]
        assert refs == ["cellwatch-config"]


def mounts(kind_name: tuple[str, str]) -> dict[str, tuple[str, bool]]:
    """claim name -> (mount path, read-only) of the pod's persistent volume claims."""
    pod = one(*kind_name)["spec"]["template"]["spec"]
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
              for v in pod["volumes"] if "persistentVolumeClaim" in v}
    return {claims[m["name"]]: (m["mountPath"], bool(m.get("readOnly")))
            for m in pod["containers"][0]["volumeMounts"] if m["name"] in claims}


def test_training_writes_the_artifact_where_the_workers_read_it() -> None:
    artifact = config_data()["CELLWATCH_MODEL_ARTIFACT"]
    worker = mounts(("Deployment", "cellwatch-worker"))
    training = mounts(("Job", "cellwatch-train"))
    claims = {d["metadata"]["name"]: d for _, d in manifests()
              if d["kind"] == "PersistentVolumeClaim"}
    assert set(worker) | set(training) <= set(claims)
    shared = set(worker) & set(training)
    assert len(shared) == 1
    (models,) = shared
    assert worker[models][0] == training[models][0]
    assert artifact.startswith(worker[models][0] + "/")
    assert worker[models][1] is True and training[models][1] is False
    # Replicas may land on different nodes, all reading the same claim.
    assert "ReadWriteMany" in claims[models]["spec"]["accessModes"]


def test_training_job_command_line_parses_with_the_cli(tmp_path: Path) -> None:
    spec = job()["spec"]["template"]["spec"]
    assert spec["restartPolicy"] in {"Never", "OnFailure"}
    args = [str(a) for a in spec["containers"][0]["args"]]
    assert args[0] == "train"
    data_mount = mounts(("Job", "cellwatch-train"))["cellwatch-training-data"][0]
    local = []
    for arg in args:
        if arg.startswith(data_mount + "/"):
            path = tmp_path / arg.lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
            arg = str(path)
        local.append(arg)
    parent = cli.make_context("cellwatch", list(local))
    cli.commands["train"].make_context("train", local[1:], parent=parent)


def test_worker_runs_the_run_command() -> None:
    args = worker_container()["args"]
    assert args == ["run"]
    assert "command" not in worker_container(), "keep the image's cellwatch entry point"


def test_readme_shows_how_to_apply_the_manifests() -> None:
    readme = DEPLOY_README.read_text(encoding="utf-8")
    commands = [shlex.split(line.strip()) for line in readme.splitlines()
                if line.strip().startswith("kubectl apply")]
    assert any("deploy/k8s" in " ".join(c) for c in commands)
