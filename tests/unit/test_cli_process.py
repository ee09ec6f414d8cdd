"""What the CLI does to the process: its logging levels (and what they must never show), and
the worker's start-up errors, each an exit code and one line before anything else starts."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from click.testing import CliRunner

from cellwatch.cli import main

# ------------------------------------------------------------------------------ logging


@pytest.fixture
def restored_logging():
    """The CLI configures the process's logging; give the next tests theirs back."""
    root, kafka = logging.getLogger(), logging.getLogger("kafka")
    levels = root.level, kafka.level
    yield
    root.setLevel(levels[0])
    kafka.setLevel(levels[1])


SASL_ENV = {"CELLWATCH_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "CELLWATCH_KAFKA_SASL_MECHANISM": "PLAIN",
            "CELLWATCH_KAFKA_SASL_USERNAME": "reader",
            "CELLWATCH_KAFKA_SASL_PASSWORD": "s3cr\\et-hunter2",
            "CELLWATCH_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}


def test_debug_logging_never_shows_the_sasl_password(
        restored_logging, caplog: pytest.LogCaptureFixture) -> None:
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaConfigurationError

    from cellwatch.kafka_clients import kafka_client_options
    from cellwatch.settings import load_settings

    result = CliRunner().invoke(main, ["--log-level", "debug", "--kafka-log-level", "debug",
                                       "config", "show"], env=SASL_ENV)
    assert result.exit_code == 0, result.output
    options = kafka_client_options(load_settings(environ=SASL_ENV).kafka)
    # KafkaAdminClient logs its whole configuration at debug level, then refuses the
    # unknown option: kafka-python's own log line, without a broker.
    with pytest.raises(KafkaConfigurationError):
        KafkaAdminClient(**options, not_an_option=True)
    logging.getLogger("cellwatch").error("failed with %s", options["sasl_plain_password"])
    assert "Starting KafkaAdminClient with configuration" in caplog.text
    assert "failed with **********" in caplog.text
    assert "hunter2" not in caplog.text


def test_kafka_logs_at_most_info_unless_asked(restored_logging) -> None:
    CliRunner().invoke(main, ["--log-level", "debug", "config", "keys"], env={})
    assert logging.getLogger("cellwatch").isEnabledFor(logging.DEBUG)
    assert not logging.getLogger("kafka.conn").isEnabledFor(logging.DEBUG)
    assert logging.getLogger("kafka.conn").isEnabledFor(logging.INFO)
    CliRunner().invoke(main, ["--log-level", "error", "config", "keys"],
                       env={"CELLWATCH_LOG_LEVEL_KAFKA": "debug"})
    assert logging.getLogger("kafka.conn").isEnabledFor(logging.DEBUG)
    assert not logging.getLogger("cellwatch").isEnabledFor(logging.WARNING)


# ------------------------------------------------------------------------- start-up


@pytest.fixture
def worker_process_state(restored_logging, monkeypatch: pytest.MonkeyPatch):
    """`run` installs signal handlers and loads a model; keep the handlers, fake the model
    (these tests end before a model is used)."""
    import signal

    import cellwatch.wiring

    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    loaded: list[Path] = []
    monkeypatch.setattr(cellwatch.wiring, "load_artifact", loaded.append)
    yield loaded
    for signum, handler in handlers.items():
        signal.signal(signum, handler)


def test_a_taken_metrics_port_exits_4_before_anything_else(worker_process_state) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(main, ["run", "--metrics-port", str(port)],
                                    env={"CELLWATCH_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    assert result.exit_code == 4, result.output
    assert f"metrics endpoint 127.0.0.1:{port}: cannot listen (Address already in use)" in (
        result.output)
    assert worker_process_state == []  # no model loaded, no broker contacted
    assert "Traceback" not in result.output


def test_an_unreachable_broker_exits_5_with_one_line_in_bounded_time(
        worker_process_state) -> None:
    import time

    started = time.monotonic()
    result = CliRunner().invoke(main, ["run", "--metrics-port", "0"], env={
        "CELLWATCH_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
        "CELLWATCH_KAFKA_STARTUP_TIMEOUT_SECONDS": "1.5"})
    assert result.exit_code == 5, result.output
    assert time.monotonic() - started < 10
    assert ("Error: no Kafka broker accepted a connection within 1.5 s (127.0.0.1:1: "
            "Connection refused)") in result.output
    assert len(worker_process_state) == 1 and "Traceback" not in result.output


def test_a_listener_that_does_not_speak_kafka_exits_5_naming_the_security_settings(
        worker_process_state) -> None:
    # What a TLS or SASL mismatch looks like to kafka-python: the port accepts, the
    # handshake never completes.
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        result = CliRunner().invoke(main, ["run", "--metrics-port", "0"], env={
            "CELLWATCH_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{silent.getsockname()[1]}",
            "CELLWATCH_KAFKA_STARTUP_TIMEOUT_SECONDS": "1"})
    assert result.exit_code == 5, result.output
    assert "cannot start the clients" in result.output
    assert "kafka.security_protocol" in result.output and "Traceback" not in result.output


def test_a_missing_ca_file_is_a_settings_error_before_start(worker_process_state,
                                                            tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["run"], env={
        "CELLWATCH_KAFKA_SECURITY_PROTOCOL": "SSL",
        "CELLWATCH_KAFKA_SSL_CAFILE": str(tmp_path / "ca.pem")})
    assert result.exit_code == 2
    assert "kafka.ssl_cafile: expected a readable file" in result.output
    assert "environment variable CELLWATCH_KAFKA_SSL_CAFILE" in result.output
