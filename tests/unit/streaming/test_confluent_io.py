"""The confluent-kafka adapters' own logic, with librdkafka's clients replaced by fakes."""

from __future__ import annotations

import pytest

confluent_kafka = pytest.importorskip("confluent_kafka")

from confluent_kafka import KafkaError, KafkaException  # noqa: E402

from streaming import confluent_io  # noqa: E402
from streaming.confluent_io import ConfluentRecord, ConfluentRecordSink  # noqa: E402
from streaming.ports import OutputError  # noqa: E402

LIMIT = 100  # bytes: larger values are refused by the fake producer at produce()


class FakeProducer:
    """Refuses values over LIMIT at produce(), as librdkafka does over message.max.bytes;
    values starting with ``refuse:`` are refused in the delivery report, as a broker does."""

    def __init__(self, config: dict) -> None:
        self.config = config
        self.on_delivery = config["on_delivery"]
        self.queued: list[tuple] = []
        self.delivered: list[tuple] = []

    def produce(self, topic, value=None, key=None, partition=None, headers=None) -> None:
        if value is not None and len(value) > LIMIT:
            raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
        self.queued.append((topic, key, value, partition, headers))

    def flush(self, timeout=None) -> int:
        for record in self.queued:
            value = record[2] or b""
            if value.startswith(b"refuse:"):
                code = int(value.split(b":")[1])
                self.on_delivery(KafkaError(code), None)
            else:
                self.delivered.append(record)
        self.queued = []
        return 0

    def close(self) -> None:
        pass


@pytest.fixture
def sink(monkeypatch) -> ConfluentRecordSink:
    monkeypatch.setattr(confluent_io, "Producer", FakeProducer)
    return ConfluentRecordSink({"bootstrap.servers": "x:1"})


def test_outputs_are_idempotent_and_dead_letters_have_their_own_producer(sink) -> None:
    assert sink._producer.config["enable.idempotence"] is True
    assert sink._producer.config["acks"] == "all"
    assert sink._producer.config["delivery.report.only.error"] is True
    assert sink._best_effort_producer.config["enable.idempotence"] is False
    sink.send("scores", b"k", b"v", partition=2)
    sink.send("dead", b"k", b"bad", [("h", b"1")], best_effort=True)
    assert sink.flush() == 0
    assert sink._producer.delivered == [("scores", b"k", b"v", 2, None)]
    assert sink._best_effort_producer.delivered == [("dead", b"k", b"bad", -1, [("h", b"1")])]


def test_a_dead_letter_refused_at_produce_is_dropped_and_counted(sink) -> None:
    sink.send("dead", None, b"x" * (LIMIT + 1), best_effort=True)
    sink.send("scores", b"k", b"v")
    assert sink.flush() == 1
    assert sink.flush() == 0  # counted once


def test_a_dead_letter_refused_by_the_broker_is_dropped_and_counted(sink) -> None:
    sink.send("dead", None, b"refuse:%d" % KafkaError.MSG_SIZE_TOO_LARGE, best_effort=True)
    sink.send("dead", None, b"fits", best_effort=True)
    assert sink.flush() == 1


def test_a_dead_letter_failing_for_another_reason_fails_the_flush(sink) -> None:
    sink.send("dead", None, b"refuse:%d" % KafkaError._MSG_TIMED_OUT, best_effort=True)
    with pytest.raises(OutputError, match="1 output records failed"):
        sink.flush()


def test_an_output_refused_for_good_fails_at_send_or_flush(sink) -> None:
    with pytest.raises(OutputError, match="not accepted by the producer"):
        sink.send("scores", b"k", b"x" * (LIMIT + 1))
    sink.send("scores", b"k", b"refuse:%d" % KafkaError.MSG_SIZE_TOO_LARGE)
    with pytest.raises(OutputError, match="1 output records failed"):
        sink.flush()


def test_records_not_acknowledged_in_time_fail_the_flush(sink, monkeypatch) -> None:
    monkeypatch.setattr(sink._producer, "flush", lambda timeout=None: 3)
    with pytest.raises(OutputError, match="3 output records not acknowledged"):
        sink.flush(timeout_s=0.1)


class FakeMessage:
    def __init__(self, headers=None) -> None:
        self._headers = headers

    def topic(self):
        return "readings"

    def partition(self):
        return 3

    def offset(self):
        return 41

    def timestamp(self):
        return (1, 1_700_000_000_123)

    def key(self):
        return b"stream-1"

    def value(self):
        return b"{}"

    def headers(self):
        return self._headers


def test_a_message_reads_as_a_source_record() -> None:
    record = ConfluentRecord(FakeMessage([("origin", b"test")]))
    assert (record.topic, record.partition, record.offset, record.timestamp, record.key,
            record.value) == ("readings", 3, 41, 1_700_000_000_123, b"stream-1", b"{}")
    assert record.headers == [("origin", b"test")]
    assert ConfluentRecord(FakeMessage()).headers == ()
