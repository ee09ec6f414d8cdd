"""Kafka adapters of the worker's ports, with kafka-python.

Consumers commit manually (``enable_auto_commit=False``); producers are idempotent with
``acks="all"``, so an acknowledged record is on every in-sync replica.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from kafka import ConsumerRebalanceListener, KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError, TopicAlreadyExistsError
from kafka.structs import OffsetAndMetadata, TopicPartition

from streaming.ports import OutputError, PartitionListener, SourceRecord

log = logging.getLogger(__name__)


class _ListenerAdapter(ConsumerRebalanceListener):
    # kafka-python runs these on its IO thread while the worker's thread waits in poll().
    def __init__(self, topic: str, listener: PartitionListener) -> None:
        self.topic = topic
        self.listener = listener

    def _partitions(self, partitions) -> list[int]:
        return sorted(tp.partition for tp in partitions if tp.topic == self.topic)

    def on_partitions_assigned(self, assigned) -> None:
        self.listener.on_assigned(self._partitions(assigned))

    def on_partitions_revoked(self, revoked) -> None:
        self.listener.on_revoked(self._partitions(revoked))

    def on_partitions_lost(self, lost) -> None:
        self.listener.on_lost(self._partitions(lost))


class KafkaReadingSource:
    """The readings topic, consumed in a group with manual commits.

    Args:
        client_options: kafka-python connection and security options.
        topic: the readings topic.
        group_id: the workers' consumer group.
        listener: told of assigned, revoked and lost partitions.
        max_partition_fetch_bytes: per-partition fetch size (bigger polls, fewer round trips).
    """

    def __init__(self, client_options: Mapping[str, Any], topic: str, group_id: str,
                 listener: PartitionListener,
                 max_partition_fetch_bytes: int = 4 * 1024 * 1024) -> None:
        self.topic = topic
        self._consumer = KafkaConsumer(
            **client_options,
            group_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=max_partition_fetch_bytes,
            fetch_max_bytes=max(max_partition_fetch_bytes, 50 * 1024 * 1024),
        )
        self._positions: dict[int, int] = {}
        # kafka-python may join the group before it has the topic's metadata, and its
        # assignor then hands out no partitions for good (dpkp/kafka-python#2377); loading the
        # metadata before subscribing closes that window.
        if not self._consumer.partitions_for_topic(topic):
            self._consumer.close(autocommit=False)
            raise OutputError(f"the readings topic {topic!r} does not exist or has no "
                              f"partitions")
        self._consumer.subscribe([topic], listener=_ListenerAdapter(topic, listener))

    def poll(self, timeout_ms: int, max_records: int) -> list[SourceRecord]:
        batches = self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        records: list[SourceRecord] = []
        for partition, batch in batches.items():
            records.extend(batch)
            self._positions[partition.partition] = batch[-1].offset + 1
        return records

    def commit(self, next_offsets: Mapping[int, int]) -> None:
        self._consumer.commit({
            TopicPartition(self.topic, partition): OffsetAndMetadata(offset, "", -1)
            for partition, offset in next_offsets.items()
        })

    def lag(self) -> dict[int, int]:
        lags = {}
        for tp in self._consumer.assignment():
            end = self._consumer.highwater(tp)
            position = self._positions.get(tp.partition)
            if end is not None and position is not None:
                lags[tp.partition] = max(0, end - position)
        return lags

    def forget(self, partitions: Sequence[int]) -> None:
        for partition in partitions:
            self._positions.pop(partition, None)

    def close(self) -> None:
        # Closing leaves the group, which runs the revoke callback for owned partitions.
        self._consumer.close(autocommit=False)


class KafkaRecordSink:
    """Publishes output records; :meth:`flush` waits for all acknowledgements.

    Args:
        client_options: kafka-python connection and security options.
        linger_ms: how long the producer gathers records into one request.
    """

    def __init__(self, client_options: Mapping[str, Any], linger_ms: int = 5) -> None:
        self._producer = KafkaProducer(
            **client_options,
            acks="all",
            linger_ms=linger_ms,
            batch_size=512 * 1024,
            max_request_size=8 * 1024 * 1024,
        )
        self._pending: list[Any] = []

    def send(self, topic: str, key: bytes | None, value: bytes | None,
             headers: Sequence[tuple[str, bytes]] = (), partition: int | None = None) -> None:
        self._pending.append(self._producer.send(topic, value=value, key=key,
                                                 headers=list(headers) or None,
                                                 partition=partition))

    def flush(self, timeout_s: float = 60.0) -> None:
        pending, self._pending = self._pending, []
        try:
            self._producer.flush(timeout=timeout_s)
        except KafkaError as error:
            raise OutputError(f"output records not acknowledged within {timeout_s} s: "
                              f"{error}") from error
        failed = [future for future in pending if future.failed()]
        if failed:
            raise OutputError(f"{len(failed)} of {len(pending)} output records failed; first: "
                              f"{failed[0].exception!r}")

    def close(self) -> None:
        self._producer.close(timeout=10)


def partition_count(client_options: Mapping[str, Any], topic: str) -> int | None:
    """Partitions of ``topic``, or None when it does not exist."""
    consumer = KafkaConsumer(**client_options)
    try:
        partitions = consumer.partitions_for_topic(topic)
        return len(partitions) if partitions else None
    finally:
        consumer.close()


def ensure_topic(client_options: Mapping[str, Any], topic: str, partitions: int) -> int:
    """Creates ``topic`` with ``partitions`` when it is missing; returns its partition count."""
    existing = partition_count(client_options, topic)
    if existing is not None:
        return existing
    admin = KafkaAdminClient(**client_options)
    try:
        with contextlib.suppress(TopicAlreadyExistsError):
            admin.create_topics({topic: {"num_partitions": partitions}}, wait_for_metadata=True)
    finally:
        admin.close()
    return partitions


def ensure_topics(client_options: Mapping[str, Any], source_topic: str,
                  topics: Sequence[str]) -> bool:
    """Creates missing output topics with as many partitions as ``source_topic``.

    Returns whether every output topic now has exactly that many partitions.

    Raises:
        OutputError: the source topic does not exist.
    """
    partitions = partition_count(client_options, source_topic)
    if partitions is None:
        raise OutputError(f"the readings topic {source_topic!r} does not exist; create it "
                          f"(partitioned by stream id) before starting the worker")
    admin = KafkaAdminClient(**client_options)
    try:
        existing = set(admin.list_topics())
        missing = [topic for topic in topics if topic not in existing]
        if missing:
            log.info("creating topics %s with %d partitions", missing, partitions)
            # Another worker of the group may have created them first.
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics({topic: {"num_partitions": partitions} for topic in missing},
                                    wait_for_metadata=True)
    finally:
        admin.close()
    counts = {topic: partition_count(client_options, topic) for topic in topics}
    mismatched = {topic: n for topic, n in counts.items() if n != partitions}
    if mismatched:
        log.warning("output topics %s do not have the %d partitions of %s; their records are "
                    "partitioned by key instead", mismatched, partitions, source_topic)
    return not mismatched
