"""A real Prometheus scrapes a prometheus_client exporter and serves the value back.

Checks the whole monitoring path the detector uses: exposition format, scrape config, and the
HTTP query API, plus that promtool accepts the config we generate.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter, start_http_server

pytestmark = pytest.mark.integration

SCRAPES = 42


@pytest.fixture
def exporter() -> Iterator[str]:
    """An exporter on a kernel-chosen loopback port, with its own registry so that nothing else
    the process registered globally leaks into the scrape."""
    registry = CollectorRegistry()
    counter = Counter(
        "cellwatch_test_scrapes",
        "Counter the integration test sets to a known value.",
        registry=registry,
    )
    counter.inc(SCRAPES)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        yield f"127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_prometheus_scrapes_exporter(exporter, prometheus_factory):
    prometheus = prometheus_factory([exporter], job_name="cellwatch-test")

    check = subprocess.run(
        [shutil.which("promtool") or "promtool", "check", "config", str(prometheus.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 0, f"promtool rejected the config:\n{check.stdout}{check.stderr}"

    selector = f'{{job="cellwatch-test",instance="{exporter}"}}'
    samples = prometheus.wait_for(f"cellwatch_test_scrapes_total{selector}", timeout=30)
    assert len(samples) == 1
    assert float(samples[0]["value"][1]) == SCRAPES

    up = prometheus.query(f"up{selector}")
    assert [float(s["value"][1]) for s in up] == [1.0]
