"""The local Kafka broker of development, the integration tests and the benchmarks.

``KafkaBroker`` drives ``broker.sh`` beside this file (the same script behind
``make kafka-up``), so tests and benchmarks exercise exactly what developers run by hand: a
single-node KRaft broker on 127.0.0.1, in a data directory of its own. It lives here, next to
the script it drives, rather than under ``tests/``: the benchmarks use it too, and a benchmark
importing test code would break whenever the tests are reorganised. Only the standard library
is used, so any process can import it without pytest or the project's dependencies.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from collections.abc import Sequence
from contextlib import ExitStack, closing
from dataclasses import dataclass
from pathlib import Path

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


# --- Kafka -----------------------------------------------------------------------------------


def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The offsets ``group`` has committed on ``topic``, per partition (0 where none).

    kafka-python is imported here, when called, so that importing this module still needs
    only the standard library."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                             enable_auto_commit=False)
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        return {p: consumer.committed(TopicPartition(topic, p)) or 0 for p in partitions}
    finally:
        consumer.close(autocommit=False)


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
