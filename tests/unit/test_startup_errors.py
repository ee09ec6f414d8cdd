"""Waiting for a broker at start: bounded, one log line, done as soon as one accepts."""

from __future__ import annotations

import logging

import pytest

from cellwatch.startup_errors import KafkaUnavailableError, wait_for_brokers


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class _Connection:
    def close(self) -> None:
        pass


def test_a_broker_that_comes_up_is_waited_for_with_one_log_line(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = _Clock()
    attempts: list[tuple[str, int]] = []

    def connect(address: tuple[str, int], timeout: float) -> _Connection:
        attempts.append(address)
        if len(attempts) < 6:
            raise ConnectionRefusedError(111, "Connection refused")
        return _Connection()

    with caplog.at_level(logging.INFO, logger="cellwatch"):
        wait_for_brokers(["a:9092", "[::1]:9093"], 30.0, connect, clock, clock.sleep)
    assert attempts[:2] == [("a", 9092), ("::1", 9093)] and len(attempts) == 6
    assert [r.getMessage() for r in caplog.records] == [
        "waiting up to 30 s for a Kafka broker at a:9092, [::1]:9093"]


def test_no_broker_within_the_timeout_is_one_error_naming_each_reason() -> None:
    clock = _Clock()

    def connect(address: tuple[str, int], timeout: float) -> _Connection:
        clock.now += timeout if address[0] == "slow" else 0.0
        raise (TimeoutError("timed out") if address[0] == "slow"
               else ConnectionRefusedError(111, "Connection refused"))

    with pytest.raises(KafkaUnavailableError) as caught:
        wait_for_brokers(["slow:1", "down:2"], 12.0, connect, clock, clock.sleep)
    assert str(caught.value).startswith(
        "no Kafka broker accepted a connection within 12 s (slow:1: timed out; down:2: "
        "Connection refused)")
    assert 12.0 <= clock.now < 20.0


@pytest.mark.parametrize(("raised", "code"), [
    ("topic", 6), ("delivery", 3), ("kafka_start", 5), ("metrics_port", 4), ("input", 1)])
def test_each_failure_ends_the_command_with_its_documented_exit_code(raised, code) -> None:
    import click

    from cellwatch import startup_errors
    from cellwatch.command_errors import user_errors
    from streaming.ports import OutputError, TopicSetupError
    from training.recordings import RecordingError

    error = {"topic": TopicSetupError("changelog: 1 partition, expected 2"),
             "delivery": OutputError("not acknowledged"),
             "kafka_start": KafkaUnavailableError("no broker"),
             "metrics_port": startup_errors.MetricsAddressError("port taken"),
             "input": RecordingError(["a.csv:3: bad value"])}[raised]
    with pytest.raises(click.ClickException) as caught, user_errors():
        raise error
    assert caught.value.exit_code == code
    documented = {6: startup_errors.EXIT_TOPIC_PROBLEM, 3: startup_errors.EXIT_DELIVERY_FAILURE,
                  5: startup_errors.EXIT_KAFKA_UNAVAILABLE, 4: startup_errors.EXIT_METRICS_ADDRESS,
                  1: startup_errors.EXIT_INPUT_PROBLEM}
    assert documented[code] == code


def test_a_broker_refusing_a_topic_request_is_a_topic_problem_not_an_unreachable_kafka() -> None:
    from kafka.errors import (
        KafkaConnectionError,
        SaslAuthenticationFailedError,
        TopicAuthorizationFailedError,
    )

    from cellwatch.startup_errors import kafka_startup
    from streaming.ports import TopicSetupError

    with pytest.raises(TopicSetupError, match="TopicAuthorizationFailedError"), \
            kafka_startup(["127.0.0.1:9092"]):
        raise TopicAuthorizationFailedError("scores")
    with pytest.raises(KafkaUnavailableError, match="SASL authentication failed"), \
            kafka_startup(["127.0.0.1:9092"]):
        raise SaslAuthenticationFailedError("bad password")
    with pytest.raises(KafkaUnavailableError, match="cannot start the clients"), \
            kafka_startup(["127.0.0.1:9092"]):
        raise KafkaConnectionError("reset")


def test_confluent_start_up_failures_map_to_the_same_exit_codes() -> None:
    pytest.importorskip("confluent_kafka")
    from confluent_kafka import KafkaError, KafkaException

    from cellwatch.startup_errors import kafka_startup
    from streaming.ports import TopicSetupError

    with pytest.raises(TopicSetupError, match="refused a request"), \
            kafka_startup(["127.0.0.1:9092"]):
        raise KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))
    with pytest.raises(KafkaUnavailableError, match="SASL authentication failed"), \
            kafka_startup(["127.0.0.1:9092"]):
        raise KafkaException(KafkaError(KafkaError.SASL_AUTHENTICATION_FAILED))
    with pytest.raises(KafkaUnavailableError, match="cannot start the clients"), \
            kafka_startup(["127.0.0.1:9092"]):
        raise KafkaException(KafkaError(KafkaError._TRANSPORT))


def test_a_stop_while_waiting_for_a_broker_ends_the_wait_at_once() -> None:
    """A SIGTERM while no broker is up yet ends the wait when it comes: the pauses between
    attempts wait on the stop event, not a plain sleep, and the wait reports it stopped."""
    import threading

    stop = threading.Event()
    slept: list[float] = []

    def refused(_address, timeout):
        raise ConnectionRefusedError(111, "Connection refused")

    threading.Timer(0.2, stop.set).start()
    assert wait_for_brokers(["down:9092"], 30.0, refused, sleep=slept.append,
                            stop=stop) is False
    assert slept == []  # every pause was a wait on the stop event
