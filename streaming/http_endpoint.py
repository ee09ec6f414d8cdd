"""The worker's HTTP endpoint: ``/metrics`` for Prometheus, ``/healthz`` and ``/readyz`` probes.

- ``GET /metrics``: the injected registry in the Prometheus text format, or OpenMetrics when
  the scraper's ``Accept`` header asks for it (prometheus_client's ``choose_encoder``).
- ``GET /healthz``: 200 ``ok`` while the liveness callable returns ``(True, detail)``,
  else 503 with the detail (a liveness probe: restart the worker when it fails).
- ``GET /readyz``: 200 ``ok`` while the readiness callable returns ``(True, detail)``,
  else 503 with the detail (a readiness probe: e.g. partitions not yet restored).
- ``HEAD`` of each: the same status and headers without a body; any other path: 404.

The callables run on the server's request threads, concurrently with the worker; they
should read a few fields and return quickly. A callable that raises counts as failing.
Requests are logged through ``logging`` at debug level, never to stderr.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

logger = logging.getLogger(__name__)

Probe = Callable[[], tuple[bool, str]]


def always_ok() -> tuple[bool, str]:
    return True, "ok"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # socketserver's default backlog of 5 reset most of a burst of connections (265 of 300
    # concurrent ones) while the accept loop was busy; Linux caps this at net.core.somaxconn.
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], endpoint: MetricsEndpoint) -> None:
        self.endpoint = endpoint
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves socket.getfqdn(host), a reverse DNS lookup that can
        # stall start-up for seconds; the name is only used for CGI, so skip it.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = port


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = 10  # seconds a client may stall a request thread

    def do_GET(self) -> None:
        self._respond(send_body=True)

    def do_HEAD(self) -> None:
        self._respond(send_body=False)

    def _respond(self, *, send_body: bool) -> None:
        endpoint = self.server.endpoint
        path = self.path.split("?", 1)[0]
        content_type = "text/plain; charset=utf-8"
        if path == "/metrics":
            try:
                encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                status, body = HTTPStatus.OK, encoder(endpoint.registry)
            except Exception:
                logger.exception("collecting metrics failed")
                status, body = HTTPStatus.INTERNAL_SERVER_ERROR, b"collecting metrics failed\n"
                content_type = "text/plain; charset=utf-8"
        elif path in ("/healthz", "/readyz"):
            probe = endpoint.liveness if path == "/healthz" else endpoint.readiness
            ok, detail = _run_probe(probe, path)
            status = HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE
            body = ("ok\n" if ok else f"{detail}\n").encode("utf-8")
        else:
            status, body = HTTPStatus.NOT_FOUND, b"not found: try /metrics, /healthz, /readyz\n"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        logger.debug("%s - %s", self.address_string(), format % args)


def _run_probe(probe: Probe, path: str) -> tuple[bool, str]:
    try:
        ok, detail = probe()
    except Exception as error:
        logger.warning("%s probe raised", path, exc_info=True)
        return False, f"probe raised {type(error).__name__}: {error}"
    return bool(ok), str(detail)


class MetricsEndpoint:
    """A threaded HTTP server for ``/metrics``, ``/healthz`` and ``/readyz``.

    ``port=0`` picks a free port; ``port`` and ``url`` tell which after ``start()``.
    Use ``start()``/``stop()`` or ``with MetricsEndpoint(...) as endpoint:``.
    """

    def __init__(self, registry: CollectorRegistry, *, host: str = "127.0.0.1", port: int = 0,
                 liveness: Probe = always_ok, readiness: Probe = always_ok,
                 poll_interval_s: float = 0.1) -> None:
        self.registry = registry
        self.host = host
        self.requested_port = port
        self.liveness = liveness
        self.readiness = readiness
        self.poll_interval_s = poll_interval_s
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port; RuntimeError before ``start()``."""
        if self._server is None:
            raise RuntimeError("the metrics endpoint is not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> MetricsEndpoint:
        """Bind and serve on a daemon thread; OSError if the address is taken."""
        if self._server is not None:
            raise RuntimeError("the metrics endpoint is already started")
        server = _Server((self.host, self.requested_port), self)
        thread = threading.Thread(target=server.serve_forever,
                                  kwargs={"poll_interval": self.poll_interval_s},
                                  name=f"metrics-endpoint-{server.server_address[1]}",
                                  daemon=True)
        self._server, self._thread = server, thread
        thread.start()
        logger.info("serving /metrics, /healthz and /readyz on %s", self.url)
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop serving, close the socket and join the thread; does nothing if not started."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._server = self._thread = None
        server.shutdown()
        server.server_close()
        thread.join(timeout_s)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> MetricsEndpoint:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()
