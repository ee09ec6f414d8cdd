"""A real Prometheus for the integration tests, with its config and TSDB in a directory.

It runs as a separate process on 127.0.0.1 only. The local Kafka broker's driver is
:mod:`deploy.kafka.local_broker` (the benchmarks use it too).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from deploy.kafka.local_broker import LOOPBACK, REPO_ROOT, free_port

__all__ = ["REPO_ROOT", "PrometheusError", "PrometheusServer", "prometheus_missing_requirements"]


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"({path} is missing)"
    return "\n".join(text.splitlines()[-lines:])


def prometheus_missing_requirements() -> list[str]:
    """Install hints for running Prometheus and promtool; empty when both are present."""
    absent = [tool for tool in ("prometheus", "promtool") if shutil.which(tool) is None]
    if absent:
        return [f"{' and '.join(absent)} (Debian package): apt-get install prometheus"]
    return []


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
