"""MetricsEndpoint over real loopback sockets: /metrics, /healthz, /readyz, 404, HEAD."""

from __future__ import annotations

import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, CONTENT_TYPE_PLAIN_0_0_4

from streaming.http_endpoint import MetricsEndpoint
from streaming.metrics import WorkerMetrics

# No proxy from the environment may intercept loopback requests.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def fetch(url: str, method: str = "GET", accept: str | None = None
          ) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, method=method)
    if accept:
        request.add_header("Accept", accept)
    try:
        with OPENER.open(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, dict(error.headers), error.read()


class Probes:
    """Liveness and readiness the tests switch."""

    def __init__(self) -> None:
        self.live: tuple[bool, str] = (True, "main loop heartbeat 0.1 s ago")
        self.ready: tuple[bool, str] = (True, "2 partitions assigned and restored")

    def liveness(self) -> tuple[bool, str]:
        return self.live

    def readiness(self) -> tuple[bool, str]:
        return self.ready


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> WorkerMetrics:
    return WorkerMetrics(registry)


@pytest.fixture
def probes() -> Probes:
    return Probes()


@pytest.fixture
def endpoint(registry: CollectorRegistry, metrics: WorkerMetrics, probes: Probes
             ) -> Iterator[MetricsEndpoint]:
    with MetricsEndpoint(registry, host="127.0.0.1", port=0, liveness=probes.liveness,
                         readiness=probes.readiness, poll_interval_s=0.02) as started:
        yield started


def test_metrics_are_served_and_a_scrape_reflects_a_change(
        endpoint: MetricsEndpoint, metrics: WorkerMetrics) -> None:
    assert endpoint.port > 0
    assert endpoint.url == f"http://127.0.0.1:{endpoint.port}"
    status, headers, body = fetch(endpoint.url + "/metrics")
    assert status == 200
    # Without an Accept header, choose_encoder picks the text format every scraper reads.
    assert headers["Content-Type"] == CONTENT_TYPE_PLAIN_0_0_4
    assert int(headers["Content-Length"]) == len(body)
    assert b"\ncellwatch_readings_consumed_total 0.0\n" in body
    assert b'cellwatch_readings_rejected_total{reason="duplicate"} 0.0' in body

    metrics.observe_batch(consumed=7, scored=7, rejected_by_reason={"duplicate": 2}, flagged=0,
                          episodes_opened=0, scores=np.ones(7), likelihoods=np.ones(7),
                          reading_latency_s=np.ones(7), broker_latency_s=np.ones(7),
                          step_seconds=0.001, batch_seconds=0.002, newest_reading_ts_s=None)
    _, _, body = fetch(endpoint.url + "/metrics?debug=1")
    assert b"\ncellwatch_readings_consumed_total 7.0\n" in body
    assert b'cellwatch_readings_rejected_total{reason="duplicate"} 2.0' in body
    assert b"\ncellwatch_anomaly_score_count 7.0\n" in body


def test_openmetrics_is_served_when_asked_for(endpoint: MetricsEndpoint) -> None:
    status, headers, body = fetch(endpoint.url + "/metrics",
                                  accept="application/openmetrics-text; version=1.0.0")
    assert status == 200
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")
    assert b"# TYPE cellwatch_readings_consumed counter\n" in body


def test_text_format_1_0_0_is_served_when_asked_for(endpoint: MetricsEndpoint) -> None:
    status, headers, body = fetch(endpoint.url + "/metrics",
                                  accept="text/plain; version=1.0.0; escaping=underscores")
    assert status == 200
    assert headers["Content-Type"].startswith(CONTENT_TYPE_LATEST)
    assert b"\ncellwatch_readings_consumed_total 0.0\n" in body


def test_healthz_follows_the_liveness_probe(endpoint: MetricsEndpoint, probes: Probes) -> None:
    assert fetch(endpoint.url + "/healthz")[::2] == (200, b"ok\n")
    probes.live = (False, "main loop heartbeat 42.0 s ago, more than 30 s")
    assert fetch(endpoint.url + "/healthz")[::2] == (
        503, b"main loop heartbeat 42.0 s ago, more than 30 s\n")
    assert fetch(endpoint.url + "/readyz")[0] == 200  # readiness is separate


def test_readyz_follows_the_readiness_probe(endpoint: MetricsEndpoint, probes: Probes) -> None:
    assert fetch(endpoint.url + "/readyz")[::2] == (200, b"ok\n")
    probes.ready = (False, "restoring 3 partitions")
    assert fetch(endpoint.url + "/readyz")[::2] == (503, b"restoring 3 partitions\n")
    assert fetch(endpoint.url + "/healthz")[0] == 200


def test_a_probe_that_raises_fails(registry: CollectorRegistry,
                                   caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> tuple[bool, str]:
        raise RuntimeError("state store gone")

    with caplog.at_level(logging.WARNING, logger="streaming.http_endpoint"), \
            MetricsEndpoint(registry, readiness=broken, poll_interval_s=0.02) as endpoint:
        status, _, body = fetch(endpoint.url + "/readyz")
    assert status == 503
    assert body == b"probe raised RuntimeError: state store gone\n"
    assert any("/readyz probe raised" in record.getMessage() for record in caplog.records)


def test_unknown_paths_are_404(endpoint: MetricsEndpoint) -> None:
    for path in ("/", "/metricsx", "/healthz/extra", "/favicon.ico"):
        status, _, body = fetch(endpoint.url + path)
        assert status == 404, path
        assert body.startswith(b"not found")


def test_head_gives_status_and_headers_without_a_body(endpoint: MetricsEndpoint,
                                                      probes: Probes) -> None:
    status, headers, body = fetch(endpoint.url + "/metrics", method="HEAD")
    assert (status, body) == (200, b"")
    assert int(headers["Content-Length"]) > 1000
    assert headers["Content-Type"] == CONTENT_TYPE_PLAIN_0_0_4
    probes.live = (False, "stuck")
    assert fetch(endpoint.url + "/healthz", method="HEAD")[::2] == (503, b"")
    assert fetch(endpoint.url + "/readyz", method="HEAD")[::2] == (200, b"")
    assert fetch(endpoint.url + "/nothing", method="HEAD")[::2] == (404, b"")
    assert fetch(endpoint.url + "/metrics", method="POST")[0] == 501


def raw_exchange(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        connection.sendall(request)
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
    return received


def test_head_sends_no_body_on_the_wire(endpoint: MetricsEndpoint) -> None:
    for path, status in (("/metrics", b"200"), ("/healthz", b"200"), ("/missing", b"404")):
        head = raw_exchange(endpoint.port, f"HEAD {path} HTTP/1.0\r\n\r\n".encode())
        get = raw_exchange(endpoint.port, f"GET {path} HTTP/1.0\r\n\r\n".encode())
        assert head.split(b" ", 2)[1] == status
        headers, _, body = head.partition(b"\r\n\r\n")
        assert body == b"", path
        assert b"\r\nContent-Length: " in headers
        assert get.partition(b"\r\n\r\n")[2], path  # GET of the same path has one


def test_requests_are_logged_at_debug_not_to_stderr(endpoint: MetricsEndpoint,
                                                    capfd: pytest.CaptureFixture[str],
                                                    caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="streaming.http_endpoint"):
        fetch(endpoint.url + "/metrics")
        fetch(endpoint.url + "/missing")
    assert capfd.readouterr().err == ""
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any('"GET /metrics HTTP/1.1" 200' in message for message in debug), debug
    assert any('"GET /missing HTTP/1.1" 404' in message for message in debug), debug


def test_a_slow_probe_does_not_block_scrapes(registry: CollectorRegistry) -> None:
    release = threading.Event()

    def slow_readiness() -> tuple[bool, str]:
        release.wait(5)
        return True, "ready"

    with MetricsEndpoint(registry, readiness=slow_readiness, poll_interval_s=0.02) as endpoint:
        results: list[int] = []
        waiter = threading.Thread(target=lambda: results.append(
            fetch(endpoint.url + "/readyz")[0]))
        waiter.start()
        try:
            assert fetch(endpoint.url + "/metrics")[0] == 200
            assert not results  # /readyz is still waiting
        finally:
            release.set()
            waiter.join(5)
        assert results == [200]


def test_stop_closes_the_socket_and_joins_the_thread(registry: CollectorRegistry) -> None:
    endpoint = MetricsEndpoint(registry, poll_interval_s=0.02)
    with pytest.raises(RuntimeError, match="not started"):
        _ = endpoint.port
    endpoint.stop()  # not started: nothing to do
    endpoint.start()
    port = endpoint.port
    with pytest.raises(RuntimeError, match="already started"):
        endpoint.start()
    assert endpoint.running
    assert fetch(f"http://127.0.0.1:{port}/healthz")[0] == 200
    listening = endpoint._server.socket  # held here so only stop() can close it
    endpoint.stop()
    assert listening.fileno() == -1
    assert not endpoint.running
    assert not any(t.name == f"metrics-endpoint-{port}" for t in threading.enumerate())
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    endpoint.stop()  # twice is fine
    endpoint.start()  # and it can serve again, on a fresh port
    try:
        assert fetch(endpoint.url + "/healthz")[0] == 200
    finally:
        endpoint.stop()


def test_a_taken_port_is_an_error(endpoint: MetricsEndpoint,
                                  registry: CollectorRegistry) -> None:
    with pytest.raises(OSError):
        MetricsEndpoint(registry, port=endpoint.port).start()


def test_a_burst_of_connections_waits_in_the_listen_backlog(registry: CollectorRegistry) -> None:
    # The server is bound and listening but not accepting (its accept loop is busy): every
    # connection of a burst must complete its handshake into the backlog instead of being
    # dropped or reset, as 265 of 300 were with socketserver's default backlog of 5.
    import selectors

    from streaming.http_endpoint import _Server

    server = _Server(("127.0.0.1", 0), MetricsEndpoint(registry))
    clients: list[socket.socket] = []
    try:
        selector = selectors.DefaultSelector()
        for _ in range(300):
            client = socket.socket()
            client.setblocking(False)
            client.connect_ex(server.server_address)
            selector.register(client, selectors.EVENT_WRITE)
            clients.append(client)
        connected: set[socket.socket] = set()
        deadline = time.monotonic() + 2.0
        while len(connected) < len(clients) and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=0.1):
                sock = key.fileobj
                selector.unregister(sock)
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    connected.add(sock)
        assert len(connected) == len(clients)
    finally:
        for client in clients:
            client.close()
        server.server_close()
