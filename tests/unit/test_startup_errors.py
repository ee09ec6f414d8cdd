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
