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


class Partition:
    """What librdkafka hands the rebalance callbacks: a topic and a partition."""

    def __init__(self, topic: str, partition: int, offset: int = -1001) -> None:
        self.topic, self.partition, self.offset = topic, partition, offset


class RecordingListener:
    def __init__(self, to_commit=None) -> None:
        self.calls: list = []
        self.to_commit = to_commit or {}

    def on_assigned(self, partitions):
        self.calls.append(("assigned", partitions))

    def on_revoked(self, partitions):
        self.calls.append(("revoked", partitions))
        return self.to_commit

    def on_lost(self, partitions):
        self.calls.append(("lost", partitions))


class FakeConsumer:
    """A consumer of topic ``readings`` with one partition whose queue the test fills."""

    def __init__(self, config: dict) -> None:
        self.config = config
        self.queue: list = []
        self.commits: list = []
        self.seeks: list = []
        self.callbacks: dict = {}
        self.calls: list = []
        self.seek_error = None
        self.assigned: list = []

    def list_topics(self, timeout=None):
        topic = type("T", (), {"error": None, "partitions": {0: None}})()
        return type("M", (), {"topics": {"readings": topic}})()

    def subscribe(self, topics, on_assign, on_revoke, on_lost):
        self.callbacks = {"assign": on_assign, "revoke": on_revoke, "lost": on_lost}

    def consume(self, count, timeout):
        self.calls.append(("consume", count, timeout))
        taken, self.queue = self.queue[:count], self.queue[count:]
        return taken

    def poll(self, timeout):
        self.calls.append(("poll", timeout))
        return self.queue.pop(0) if self.queue else None

    def commit(self, offsets, asynchronous):
        assert asynchronous is False
        self.commits.append({tp.partition: tp.offset for tp in offsets})

    def committed(self, partitions, timeout=None):
        return [Partition(tp.topic, tp.partition, 7 if tp.partition == 0 else -1001)
                for tp in partitions]

    def seek(self, tp):
        if self.seek_error is not None:
            raise KafkaException(KafkaError(self.seek_error))
        self.seeks.append((tp.partition, tp.offset))

    def incremental_unassign(self, partitions):
        self.assigned = [a for a in self.assigned
                         if a[0] not in {tp.partition for tp in partitions}]

    def incremental_assign(self, partitions):
        self.assigned += [(tp.partition, tp.offset) for tp in partitions]


class Message(FakeMessage):
    def __init__(self, offset: int, error=None, partition: int = 3) -> None:
        super().__init__()
        self._offset, self._error, self._partition = offset, error, partition

    def offset(self):
        return self._offset

    def partition(self):
        return self._partition

    def value(self):
        return b"%d" % self._offset

    def error(self):
        return self._error


@pytest.fixture
def consumer_source(monkeypatch):
    monkeypatch.setattr(confluent_io, "Consumer", FakeConsumer)

    def build(listener=None):
        listener = listener or RecordingListener()
        source = confluent_io.ConfluentReadingSource({"bootstrap.servers": "x:1"}, "readings",
                                                     "group", listener)
        return source, source._consumer, listener

    return build


def test_the_group_commits_by_hand_only_and_rebalances_cooperatively(consumer_source) -> None:
    _, consumer, _ = consumer_source()
    assert consumer.config["enable.auto.commit"] is False
    assert consumer.config["enable.auto.offset.store"] is False
    assert consumer.config["partition.assignment.strategy"] == "cooperative-sticky"


def test_a_revoke_commits_the_offsets_the_listener_hands_back(consumer_source) -> None:
    _, consumer, listener = consumer_source(RecordingListener({2: 40}))
    consumer.callbacks["assign"](consumer, [Partition("readings", 2), Partition("other", 9)])
    consumer.callbacks["revoke"](consumer, [Partition("readings", 2)])
    consumer.callbacks["lost"](consumer, [Partition("readings", 3)])
    assert listener.calls == [("assigned", [2]), ("revoked", [2]), ("lost", [3])]
    assert consumer.commits == [{2: 40}]


def test_a_poll_takes_what_is_fetched_and_waits_only_for_a_first_record(consumer_source
                                                                         ) -> None:
    source, consumer, _ = consumer_source()
    consumer.queue = [Message(1), Message(2), Message(3)]
    assert [r.offset for r in source.poll(200, 10)] == [1, 2, 3]
    assert consumer.calls == [("consume", 10, 0)]  # no wait: records were there
    consumer.calls.clear()
    assert source.poll(200, 10) == []
    assert consumer.calls == [("consume", 10, 0), ("poll", 0.2)]


def test_a_poll_skips_errors_and_raises_a_fatal_one(consumer_source) -> None:
    source, consumer, _ = consumer_source()
    consumer.queue = [Message(4), Message(0, KafkaError(KafkaError._TRANSPORT)), Message(5)]
    assert [r.offset for r in source.poll(200, 10)] == [4, 5]
    consumer.queue = [Message(0, KafkaError(KafkaError._FATAL, fatal=True))]
    with pytest.raises(KafkaException):
        source.poll(200, 10)


def test_a_rewind_seeks_to_the_committed_offsets_or_the_start(consumer_source) -> None:
    source, consumer, _ = consumer_source()
    source.rewind([0, 1])
    assert consumer.seeks == [(0, 7), (1, confluent_kafka.OFFSET_BEGINNING)]


def test_a_rewind_of_a_partition_not_fetching_yet_assigns_it_again(consumer_source) -> None:
    source, consumer, _ = consumer_source()
    consumer.assigned = [(0, -1001), (1, -1001)]
    consumer.seek_error = KafkaError._STATE
    source.rewind([0])
    assert consumer.assigned == [(1, -1001), (0, 7)]
    consumer.seek_error = KafkaError._TRANSPORT
    with pytest.raises(KafkaException):
        source.rewind([0])


class ChangelogConsumer(FakeConsumer):
    """Changelog partition 0 ends at offset 3 when the read starts; partition 1 is empty."""

    def get_watermark_offsets(self, tp, timeout=None):
        return (0, 3) if tp.partition == 0 else (5, 5)

    def consume(self, count, timeout):
        if not self.queue:  # a reader that missed its end would wait here for ever
            raise AssertionError("the reader went on after the partition's end")
        return super().consume(count, timeout)

    def assign(self, partitions):
        self.assigned = [(tp.partition, tp.offset) for tp in partitions]

    def unassign(self):
        self.assigned = []

    def close(self):
        pass


@pytest.fixture
def changelog_reader(monkeypatch):
    monkeypatch.setattr(confluent_io, "Consumer", ChangelogConsumer)
    reader = confluent_io.ConfluentChangelogReader({"client.id": "w"}, "changelog",
                                                   read_committed=True)
    assert reader._consumer.config["isolation.level"] == "read_committed"
    assert reader._consumer.config["enable.partition.eof"] is True
    return reader


def test_the_changelog_is_read_up_to_its_end_at_the_call(changelog_reader) -> None:
    consumer = changelog_reader._consumer
    consumer.queue = [Message(0, partition=0),
                      Message(0, KafkaError(KafkaError._TRANSPORT), partition=0),
                      Message(2, partition=0), Message(3, partition=0)]  # 3: written since
    records = list(changelog_reader.read([0, 1]))
    assert records == [(0, b"stream-1", b"0"), (0, b"stream-1", b"2")]
    assert consumer.assigned == []  # unassigned after the read


def test_a_read_committed_changelog_ends_at_its_end_event(changelog_reader) -> None:
    """An open transaction's records lie below the high watermark and are never delivered:
    the end-of-partition event ends the read at the last stable offset."""
    consumer = changelog_reader._consumer
    consumer.queue = [Message(0, partition=0),
                      Message(1, KafkaError(KafkaError._PARTITION_EOF), partition=0)]
    assert list(changelog_reader.read([0, 1])) == [(0, b"stream-1", b"0")]


def test_a_full_queue_is_waited_for_then_fails_the_output(sink, monkeypatch) -> None:
    full = {"left": 2}
    real_produce = sink._producer.produce

    def produce(*args, **kwargs):
        if full["left"]:
            full["left"] -= 1
            raise BufferError("queue full")
        real_produce(*args, **kwargs)

    monkeypatch.setattr(sink._producer, "produce", produce)
    monkeypatch.setattr(sink._producer, "poll", lambda timeout: 0, raising=False)
    sink.send("scores", b"k", b"v")  # two full queues, then taken
    assert sink.flush() == 0 and sink._producer.delivered[-1][2] == b"v"
    full["left"] = 10**9
    monkeypatch.setattr(confluent_io, "QUEUE_FULL_WAIT_S", 0.05)
    with pytest.raises(OutputError, match="queue stayed full"):
        sink.send("scores", b"k", b"v")
