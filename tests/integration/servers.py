"""Real servers for integration tests and benchmarks: a local Kafka broker and a Prometheus.

Both run as separate processes on 127.0.0.1 only. ``KafkaBroker`` drives
``deploy/kafka/broker.sh`` (the same script behind ``make kafka-up``), so tests exercise exactly
what developers run by hand. Only the standard library is used here, so benchmarks can import
this module without pytest.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from contextlib import ExitStack, closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
BROKER_SH = REPO_ROOT / "deploy" / "kafka" / "broker.sh"
KAFKA_LIBS = Path(os.environ.get("CELLWATCH_KAFKA_LIBS", REPO_ROOT / ".cache" / "kafka" / "libs"))

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """Return ``count`` distinct free ports.

    All sockets stay bound until every port is picked, so the kernel cannot hand out the same
    port twice (which separate ``free_port()`` calls may do).
    """
    with ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)))
            sock.bind((LOOPBACK, 0))
            ports.append(sock.getsockname()[1])
        return ports


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"({path} is missing)"
    return "\n".join(text.splitlines()[-lines:])


# --- prerequisites ---------------------------------------------------------------------------


def java_major_version(java: str = "java") -> int | None:
    """Major version of the JVM on PATH (or ``$JAVA_HOME``), None if there is none."""
    java_home = os.environ.get("JAVA_HOME")
    if java == "java" and java_home and Path(java_home, "bin", "java").is_file():
        java = str(Path(java_home, "bin", "java"))
    elif shutil.which(java) is None:
        return None
    try:
        out = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not match:
        return None
    major = int(match.group(1))
    # Java 8 and older call themselves "1.x".
    return int(match.group(2) or 0) if major == 1 else major


def kafka_missing_requirements() -> list[str]:
    """Install hints for what a local broker still needs; empty when it can start."""
    missing = []
    major = java_major_version()
    if major is None or major < 17:
        found = "no java" if major is None else f"java {major}"
        missing.append(
            f"Java 17+ for the Kafka 4 broker ({found} found): "
            "apt-get install openjdk-17-jre-headless"
        )
    # Maven is only needed to fill the jar cache; a filled cache runs without it.
    if shutil.which("mvn") is None and not any(KAFKA_LIBS.glob("kafka_2.13-*.jar")):
        missing.append("Maven to fetch the Kafka jars: apt-get install maven")
    return missing


def prometheus_missing_requirements() -> list[str]:
    """Install hints for running Prometheus and promtool; empty when both are present."""
    absent = [tool for tool in ("prometheus", "promtool") if shutil.which(tool) is None]
    if absent:
        return [f"{' and '.join(absent)} (Debian package): apt-get install prometheus"]
    return []


# --- Kafka -----------------------------------------------------------------------------------


class BrokerError(RuntimeError):
    """broker.sh failed; the message carries its output (including the broker log tail)."""


@dataclass(frozen=True)
class ExternalKafka:
    """A broker someone else runs (``CELLWATCH_TEST_KAFKA_BOOTSTRAP``): tests may only use it."""

    bootstrap: str
    managed = False


class KafkaBroker:
    """A single-node KRaft broker in ``data_dir``, started and stopped through broker.sh.

    The ports are picked once and kept for the object's life: restarting after ``stop()`` or
    ``kill()`` reuses the same data (topics, committed offsets) and the same bootstrap address.
    """

    managed = True

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        controller_port: int | None = None,
        start_timeout: float = 90.0,
    ) -> None:
        self.data_dir = Path(data_dir)
        if port is None or controller_port is None:
            picked = free_ports(2)
            port = port if port is not None else picked[0]
            controller_port = controller_port if controller_port is not None else picked[1]
        self.port = port
        self.controller_port = controller_port
        self.start_timeout = start_timeout

    @property
    def bootstrap(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "logs" / "server.log"

    @staticmethod
    def fetch(timeout: float = 900.0) -> None:
        """Fill the jar cache (no-op when it is complete); Maven may need minutes when cold."""
        _run_broker_sh(["fetch"], timeout=timeout)

    def start(self) -> str:
        """Start (formatting only on first use), wait until ready, return the bootstrap address."""
        self.fetch()
        out = _run_broker_sh(
            [
                "start",
                "--data-dir",
                str(self.data_dir),
                "--port",
                str(self.port),
                "--controller-port",
                str(self.controller_port),
                "--timeout",
                str(int(self.start_timeout)),
            ],
            timeout=self.start_timeout + 60,
        )
        lines = out.strip().splitlines()
        if not lines or lines[-1] != self.bootstrap:
            raise BrokerError(f"broker.sh start printed {out!r}, expected {self.bootstrap}")
        return self.bootstrap

    def stop(self) -> None:
        """Graceful stop (SIGTERM, SIGKILL after 30 s); no-op when not running."""
        _run_broker_sh(["stop", "--data-dir", str(self.data_dir)], timeout=60)

    def kill(self) -> None:
        """SIGKILL the broker, as a crash would."""
        _run_broker_sh(["kill", "--data-dir", str(self.data_dir)], timeout=30)

    def is_running(self) -> bool:
        result = subprocess.run(
            ["bash", str(BROKER_SH), "status", "--data-dir", str(self.data_dir)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        return result.returncode == 0

    def __enter__(self) -> KafkaBroker:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _run_broker_sh(args: Sequence[str], timeout: float) -> str:
    try:
        result = subprocess.run(
            ["bash", str(BROKER_SH), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise BrokerError(f"broker.sh {' '.join(args)} did not finish in {timeout:.0f} s") from exc
    if result.returncode != 0:
        raise BrokerError(
            f"broker.sh {' '.join(args)} exited with {result.returncode}:\n"
            f"{result.stderr}{result.stdout}"
        )
    return result.stdout


# --- Prometheus ------------------------------------------------------------------------------


class PrometheusError(RuntimeError):
    pass


class PrometheusServer:
    """A real Prometheus scraping the given targets, with its config and TSDB in ``workdir``.

    ``targets`` is a list of ``host:port`` (one job called ``job_name``) or a mapping from job
    name to such a list.
    """

    def __init__(
        self,
        workdir: Path,
        targets: Sequence[str] | Mapping[str, Sequence[str]],
        *,
        job_name: str = "cellwatch",
        scrape_interval: str = "1s",
        port: int | None = None,
        binary: str = "prometheus",
    ) -> None:
        self.workdir = Path(workdir)
        self.jobs: dict[str, list[str]] = (
            {job: list(t) for job, t in targets.items()}
            if isinstance(targets, Mapping)
            else {job_name: list(targets)}
        )
        self.scrape_interval = scrape_interval
        self.port = port if port is not None else free_port()
        self.binary = binary
        self.config_path = self.workdir / "prometheus.yml"
        self.log_path = self.workdir / "prometheus.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def render_config(self) -> str:
        # JSON strings are valid YAML scalars, which spares a YAML dependency and any quoting
        # mistakes with odd job names.
        lines = [
            "global:",
            f"  scrape_interval: {json.dumps(self.scrape_interval)}",
            f"  scrape_timeout: {json.dumps(self.scrape_interval)}",
            f"  evaluation_interval: {json.dumps(self.scrape_interval)}",
            "scrape_configs:",
        ]
        for job, targets in self.jobs.items():
            lines += [
                f"  - job_name: {json.dumps(job)}",
                "    static_configs:",
                f"      - targets: {json.dumps(targets)}",
            ]
        return "\n".join(lines) + "\n"

    def write_config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.render_config())
        return self.config_path

    def start(self, timeout: float = 30.0) -> PrometheusServer:
        if self._proc is not None:
            raise PrometheusError("already started")
        self.write_config()
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={self.config_path}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address={LOOPBACK}:{self.port}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                raise PrometheusError(
                    f"prometheus exited with {code} during startup:\n{_tail(self.log_path)}"
                )
            if self._ready():
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise PrometheusError(
                    f"prometheus not ready after {timeout:.0f} s:\n{_tail(self.log_path)}"
                )
            time.sleep(0.1)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            # 503 while the TSDB opens, connection refused before the listener is up.
            return False

    def api(self, path: str, **params: str) -> Any:
        """GET an HTTP API endpoint and return its ``data`` member."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=10) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as exc:
            # Bad queries come back as 400 with an explanation in the JSON body.
            raise PrometheusError(f"{path} {params}: HTTP {exc.code}: {exc.read()!r}") from exc
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; returns the result list (``[{"metric": {...}, "value": [t, "v"]}]``)."""
        data = self.api("query", query=expr)
        result = data["result"]
        # Scalars and strings come back as a bare [t, "v"] pair; wrap them like a vector sample.
        return result if data["resultType"] in ("vector", "matrix") else [{"value": result}]

    def wait_for(self, expr: str, timeout: float = 30.0, interval: float = 0.25) -> list[dict]:
        """Poll ``expr`` until it returns a non-empty result, or fail showing the targets."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if result:
                return result
            if time.monotonic() > deadline:
                raise PrometheusError(
                    f"{expr!r} still empty after {timeout:.0f} s; scrape targets: "
                    f"{json.dumps(self.targets(), indent=1)}"
                )
            time.sleep(interval)

    def targets(self) -> list[dict[str, Any]]:
        """Active scrape targets with their health and last error, for diagnostics."""
        return [
            {k: t.get(k) for k in ("scrapeUrl", "health", "lastError", "lastScrape")}
            for t in self.api("targets")["activeTargets"]
        ]

    def stop(self, timeout: float = 15.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
