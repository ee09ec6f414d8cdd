"""Kafka adapters of the worker's ports, with confluent-kafka (librdkafka).

The same promises as :mod:`streaming.kafka_io`, kept with librdkafka's means:

* the consumer commits explicit offsets, synchronously, and nothing else
  (``enable.auto.commit`` and ``enable.auto.offset.store`` off);
* rebalance callbacks (``on_assign``, ``on_revoke``, ``on_lost``) run inside ``poll`` and
  ``consume`` on the worker's own thread, so the offsets the listener hands back on a revoke
  are committed synchronously there, before the partitions go;
* the group uses the cooperative-sticky assignor: a rebalance revokes only the partitions
  that move, so the members that keep theirs go on scoring (and keep their open
  transaction) instead of checkpointing and restoring everything. The partition tracker
  needs no change for it: it drops what was revoked and not handed back, restores what is
  new, and aborts the open transaction only when partitions are revoked or lost;
* producers are idempotent with ``acks=all``; only failed deliveries call back
  (``delivery.report.only.error``), so an acknowledged record costs no Python call.

confluent-kafka is imported here only: a kafka-python install never loads this module.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)

from streaming.ports import OutputError, PartitionListener, SourceRecord, TopicSetupError

log = logging.getLogger(__name__)

# Error codes that say the broker (or the client's own limit) will never take this record.
REFUSED_FOR_GOOD = frozenset({
    KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE, KafkaError.INVALID_RECORD,
    KafkaError.INVALID_MSG, KafkaError.INVALID_TIMESTAMP, KafkaError.INVALID_MSG_SIZE})
_NO_HEADERS: tuple = ()
QUEUE_FULL_WAIT_S = 60.0


class ConfluentRecord:
    """A consumed message with the attributes of :class:`~streaming.ports.SourceRecord`.

    librdkafka's ``Message`` has methods instead; this copies the five fields every reading
    needs once, and reads the topic and headers from the message only when a dead letter
    asks for them.
    """

    __slots__ = ("_message", "key", "offset", "partition", "timestamp", "value")

    def __init__(self, message: Any) -> None:
        self._message = message
        self.partition = message.partition()
        self.offset = message.offset()
        self.timestamp = message.timestamp()[1]
        self.key = message.key()
        self.value = message.value()

    @property
    def topic(self) -> str:
        return self._message.topic()

    @property
    def headers(self) -> Sequence[tuple[str, bytes]]:
        return self._message.headers() or _NO_HEADERS


def _partitions(topic: str, next_offsets: Mapping[int, int]) -> list[TopicPartition]:
    return [TopicPartition(topic, partition, offset)
            for partition, offset in next_offsets.items()]


class ConfluentReadingSource:
    """The readings topic, consumed in a group with manual commits (librdkafka).

    Args:
        config: librdkafka connection and security properties.
        topic: the readings topic.
        group_id: the workers' consumer group.
        listener: told of assigned, revoked and lost partitions.
        max_partition_fetch_bytes: per-partition fetch size.
        session_timeout_ms: how long a silent (crashed) worker keeps its partitions.
    """

    def __init__(self, config: Mapping[str, Any], topic: str, group_id: str,
                 listener: PartitionListener,
                 max_partition_fetch_bytes: int = 4 * 1024 * 1024,
                 session_timeout_ms: int = 10_000) -> None:
        self.topic = topic
        self._listener = listener
        self._positions: dict[int, int] = {}
        self._consumer = Consumer({
            **config,
            "group.id": group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            # As kafka-python's default: readings are not written in transactions.
            "isolation.level": "read_uncommitted",
            "partition.assignment.strategy": "cooperative-sticky",
            "session.timeout.ms": session_timeout_ms,
            "heartbeat.interval.ms": max(100, min(3000, session_timeout_ms // 3)),
            "max.partition.fetch.bytes": max_partition_fetch_bytes,
            "fetch.max.bytes": max(max_partition_fetch_bytes, 50 * 1024 * 1024),
        })
        metadata = self._consumer.list_topics(timeout=10)
        found = metadata.topics.get(topic)
        if found is None or found.error is not None or not found.partitions:
            self._consumer.close()
            raise TopicSetupError(f"the readings topic {topic!r} does not exist or has no "
                                  f"partitions")
        self._consumer.subscribe([topic], on_assign=self._assigned,
                                 on_revoke=self._revoked, on_lost=self._lost)

    # Rebalance callbacks: called from poll()/consume()/close() on the worker's thread.

    def _own(self, partitions) -> list[int]:
        return sorted(tp.partition for tp in partitions if tp.topic == self.topic)

    def _assigned(self, consumer, partitions) -> None:
        # confluent-kafka applies the (incremental) assignment itself after this returns.
        self._listener.on_assigned(self._own(partitions))

    def _revoked(self, consumer, partitions) -> None:
        owned = self._own(partitions)
        for partition in owned:
            self._positions.pop(partition, None)
        offsets = self._listener.on_revoked(owned)
        if not offsets:
            return
        try:
            consumer.commit(offsets=_partitions(self.topic, offsets), asynchronous=False)
        except KafkaException as error:  # the group may already have moved on
            log.warning("commit of revoked partitions' offsets failed (%s); their next owner "
                        "restores the checkpoint and skips what it reflects", error)

    def _lost(self, consumer, partitions) -> None:
        owned = self._own(partitions)
        for partition in owned:
            self._positions.pop(partition, None)
        self._listener.on_lost(owned)

    # The port

    def poll(self, timeout_ms: int, max_records: int) -> list[SourceRecord]:
        # consume(n, timeout) waits until n messages arrived or the timeout passed: at a
        # steady rate below n per timeout every batch would wait the whole timeout. So take
        # what is already fetched at once, and wait only for a first message when there is
        # none (poll returns as soon as one arrives).
        messages = self._consumer.consume(max_records, 0)
        if not messages:
            first = self._consumer.poll(timeout_ms / 1000)
            if first is None:
                return []
            messages = [first]
            if max_records > 1:
                messages.extend(self._consumer.consume(max_records - 1, 0))
        records: list[SourceRecord] = []
        append = records.append
        positions = self._positions
        for message in messages:
            if message.error() is not None:
                self._raise_if_fatal(message.error())
                continue
            record = ConfluentRecord(message)
            append(record)
            positions[record.partition] = record.offset + 1
        return records

    def _raise_if_fatal(self, error: KafkaError) -> None:
        if error.fatal():
            raise KafkaException(error)
        log.warning("consumer error on %s: %s", self.topic, error)

    def commit(self, next_offsets: Mapping[int, int]) -> None:
        self._consumer.commit(offsets=_partitions(self.topic, next_offsets),
                              asynchronous=False)

    def group_metadata(self) -> object:
        return self._consumer.consumer_group_metadata()

    def rewind(self, partitions: Sequence[int]) -> None:
        if not partitions:
            return
        committed = self._consumer.committed(
            [TopicPartition(self.topic, p) for p in partitions], timeout=30)
        targets = [TopicPartition(self.topic, tp.partition,
                                  tp.offset if tp.offset >= 0 else OFFSET_BEGINNING)
                   for tp in committed]
        for tp in targets:
            self._positions.pop(tp.partition, None)
        try:
            for tp in targets:
                self._consumer.seek(tp)
        except KafkaException as error:
            if error.args[0].code() != KafkaError._STATE:
                raise
            # A partition whose fetcher has not started yet cannot be seeked: assigning it
            # again with the offsets starts its fetch from there.
            self._consumer.incremental_unassign(targets)
            self._consumer.incremental_assign(targets)

    def pause(self, partitions: Sequence[int]) -> None:
        tps = self._assigned_of(partitions)
        if tps:
            self._consumer.pause(tps)

    def resume(self, partitions: Sequence[int]) -> None:
        tps = self._assigned_of(partitions)
        if tps:
            self._consumer.resume(tps)

    def _assigned_of(self, partitions: Sequence[int]) -> list[TopicPartition]:
        assigned = {tp.partition for tp in self._consumer.assignment() if tp.topic == self.topic}
        return [TopicPartition(self.topic, p) for p in partitions if p in assigned]

    def lag(self) -> dict[int, int]:
        lags = {}
        for tp in self._consumer.assignment():
            position = self._positions.get(tp.partition)
            if position is None:
                continue
            # cached: the high watermark of the last fetch response, no broker request.
            _low, high = self._consumer.get_watermark_offsets(tp, cached=True)
            if high >= 0:
                lags[tp.partition] = max(0, high - position)
        return lags

    def close(self) -> None:
        # Leaves the group; the revoke callback runs for owned partitions.
        self._consumer.close()


class _DeliveryFailures:
    """Collects failed deliveries of one producer (its only delivery callback)."""

    def __init__(self) -> None:
        self.failed: list[KafkaError] = []

    def __call__(self, error: KafkaError | None, message: Any) -> None:
        if error is not None:
            self.failed.append(error)


class ConfluentRecordSink:
    """Publishes output records; :meth:`flush` waits for all acknowledgements (librdkafka).

    Args:
        config: librdkafka connection and security properties.
        linger_ms: how long the producer gathers records into one request.
        transactional_id: when given, records go out in transactions that
            :meth:`commit_transaction` commits together with the consumer offsets; unique per
            worker and stable across its restarts.

    Best-effort records (dead letters) go through a producer of their own, without
    idempotence and one record per batch, when there are no transactions (as in
    :mod:`streaming.kafka_io`): a record refused for good must not fail the outputs or the
    dead letters batched with it. In a transaction every record commits together, and a
    refused dead letter fails it.
    """

    def __init__(self, config: Mapping[str, Any], linger_ms: int = 5,
                 transactional_id: str | None = None) -> None:
        common = {**config, "linger.ms": linger_ms, "acks": "all",
                  "message.max.bytes": 8 * 1024 * 1024, "delivery.report.only.error": True}
        self._failures = _DeliveryFailures()
        extra: dict[str, Any] = {}
        if transactional_id is not None:
            extra = {"transactional.id": transactional_id, "transaction.timeout.ms": 60_000}
        self._producer = Producer({**common, "enable.idempotence": True,
                                   "on_delivery": self._failures, **extra})
        self._best_effort_failures = _DeliveryFailures()
        # One record per batch: the broker refuses a batch whole, and librdkafka (unlike
        # kafka-python) does not split a refused batch, so a dead letter too large for its
        # topic would take the ones batched with it down too.
        self._best_effort_producer = None if transactional_id is not None else Producer(
            {**common, "enable.idempotence": False, "batch.num.messages": 1,
             "on_delivery": self._best_effort_failures})
        self._dropped_at_send = 0
        self._transactional = transactional_id is not None
        self._in_transaction = False
        if self._transactional:
            self._producer.init_transactions(60)

    @property
    def transactional(self) -> bool:
        return self._transactional

    def send(self, topic: str, key: bytes | None, value: bytes | None,
             headers: Sequence[tuple[str, bytes]] = (), partition: int | None = None,
             best_effort: bool = False) -> None:
        if self._transactional and not self._in_transaction:
            self._begin()
        best_effort = best_effort and self._best_effort_producer is not None
        producer = self._best_effort_producer if best_effort else self._producer
        # -1 is librdkafka's "let the key choose".
        target = -1 if partition is None else partition
        full_until = None
        while True:
            try:
                # Positional, and headers only when there are any: this runs once per output
                # record, and keyword arguments cost.
                if headers:
                    producer.produce(topic, value, key, target, headers=list(headers))
                else:
                    producer.produce(topic, value, key, target)
                return
            except BufferError:
                # The local queue is full (the broker is slow or away): wait for deliveries
                # to drain it, as kafka-python's send blocks up to max_block_ms (60 s).
                full_until = full_until or time.monotonic() + QUEUE_FULL_WAIT_S
                if time.monotonic() > full_until:
                    raise OutputError(f"record for {topic!r} not accepted: the producer's "
                                      f"queue stayed full for {QUEUE_FULL_WAIT_S:g} s") from None
                producer.poll(0.1)
            except KafkaException as exception:
                error = exception.args[0]
                if error.code() in REFUSED_FOR_GOOD and best_effort:
                    log.error("a dead letter for %s refused by the producer and dropped: %s",
                              topic, error)
                    self._dropped_at_send += 1
                    return
                raise OutputError(f"record for {topic!r} not accepted by the producer: "
                                  f"{error}") from exception

    def flush(self, timeout_s: float = 60.0) -> int:
        dropped, self._dropped_at_send = self._dropped_at_send, 0
        deadline = time.monotonic() + timeout_s
        left = self._producer.flush(timeout_s)
        if self._best_effort_producer is not None:
            left += self._best_effort_producer.flush(max(0.0, deadline - time.monotonic()))
        failed, self._failures.failed = self._failures.failed, []
        refused, self._best_effort_failures.failed = self._best_effort_failures.failed, []
        if left:
            raise OutputError(f"{left} output records not acknowledged within {timeout_s} s")
        for error in refused:
            if error.code() in REFUSED_FOR_GOOD:
                dropped += 1
            else:
                failed.append(error)
        if failed:
            raise OutputError(f"{len(failed)} output records failed; first: {failed[0]}")
        if refused and dropped:
            log.error("dead letters refused by the broker and dropped (first: %s); their "
                      "readings stay rejected", refused[0])
        return dropped

    def _begin(self) -> None:
        try:
            self._producer.begin_transaction()
        except KafkaException as error:
            raise OutputError(f"transaction not begun: {error}") from error
        self._in_transaction = True

    def commit_transaction(self, topic: str, next_offsets: Mapping[int, int],
                           group_metadata: object) -> None:
        if not self._transactional:
            raise RuntimeError("commit_transaction on a sink without transactions")
        if not self._in_transaction:
            if not next_offsets:
                return
            self._begin()
        try:
            if next_offsets:
                self._producer.send_offsets_to_transaction(
                    _partitions(topic, next_offsets), group_metadata, 60)
            self._producer.commit_transaction(60)
        except KafkaException as error:
            raise OutputError(f"transaction not committed: {error}") from error
        self._in_transaction = False

    def abort_transaction(self) -> None:
        if not self._in_transaction:
            return
        try:
            self._producer.abort_transaction(60)
        except KafkaException as error:
            raise OutputError(f"transaction not aborted: {error}") from error
        self._failures.failed = []
        self._in_transaction = False

    def close(self) -> None:
        """Waits a little for records in flight and closes both producers; never raises (a
        sink is closed on the way out of a failure too, see :mod:`streaming.kafka_io`)."""
        for producer in (self._best_effort_producer, self._producer):
            if producer is None:
                continue
            try:
                left = producer.flush(10)
                if left:
                    log.warning("%d records were never acknowledged; nothing of them was "
                                "committed", left)
                producer.close()
            except (KafkaException, RuntimeError) as error:
                log.warning("a producer did not close cleanly (%s)", error)


class ConfluentChangelogReader:
    """Reads changelog partitions from their start to their end, without joining a group.

    Args:
        config: librdkafka connection and security properties.
        topic: the changelog topic.
        read_committed: skip records of aborted transactions (set with transactional
            outputs).
    """

    def __init__(self, config: Mapping[str, Any], topic: str,
                 read_committed: bool = False) -> None:
        self.topic = topic
        self._consumer = Consumer({
            **config,
            # Never joins it (assign only) nor commits: librdkafka just wants one.
            "group.id": f"{config.get('client.id', 'cellwatch')}.changelog-reader",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            # The end of a read_committed partition is its last stable offset, which a
            # watermark does not tell: the end-of-partition event does.
            "enable.partition.eof": True,
            "isolation.level": "read_committed" if read_committed else "read_uncommitted",
            "max.partition.fetch.bytes": 16 * 1024 * 1024,
            "fetch.max.bytes": 64 * 1024 * 1024,
        })

    def read(self, partitions: Sequence[int]) -> Iterator[tuple[int, bytes, bytes | None]]:
        """``(partition, key, value)`` of every record of ``partitions`` up to their ends.

        Raises:
            OutputError: the broker went away (or refused) while the changelog was read.
        """
        try:
            yield from self._records(partitions)
        except KafkaException as error:
            raise OutputError(f"the changelog {self.topic!r} could not be read to restore "
                              f"states: {error}") from error
        finally:
            self._consumer.unassign()

    def _records(self, partitions: Sequence[int]) -> Iterator[tuple[int, bytes, bytes | None]]:
        ends = {}
        for partition in partitions:
            low, high = self._consumer.get_watermark_offsets(
                TopicPartition(self.topic, partition), timeout=30)
            if high > low:
                ends[partition] = high
        if not ends:
            return
        self._consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in ends])
        remaining = set(ends)
        while remaining:
            for message in self._consumer.consume(10_000, 0.1):
                partition = message.partition()
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        remaining.discard(partition)
                    elif error.fatal():
                        raise KafkaException(error)
                    continue
                offset = message.offset()
                if offset < ends[partition]:
                    yield partition, message.key(), message.value()
                if offset >= ends[partition] - 1:
                    remaining.discard(partition)

    def close(self) -> None:
        self._consumer.close()
