"""Produce 10,000 keyed messages to a real broker and consume them back with manual commits.

This pins down the delivery guarantees the streaming detector relies on: nothing lost, nothing
duplicated, per-key order kept across 4 partitions, and committed offsets that end exactly at
the end of every partition once processing is done.
"""

from __future__ import annotations

import time
from collections import defaultdict

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.serializer import DefaultSerializer, JsonSerializer

pytestmark = pytest.mark.integration

PARTITIONS = 4
KEYS = 50
PER_KEY = 200  # 50 keys x 200 = 10,000 messages
TIME_BUDGET_S = 120.0


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        pytest.fail(f"round trip not done within {TIME_BUDGET_S:.0f} s")
    return left


def test_keyed_roundtrip_exactly_once_in_order(kafka_broker, topic_factory, unique_name):
    deadline = time.monotonic() + TIME_BUDGET_S
    topic = topic_factory(partitions=PARTITIONS, purpose="roundtrip")
    group = unique_name("group")
    keys = [f"cell-{k:02d}" for k in range(KEYS)]

    # --- produce: keys interleaved, as readings from many cells arrive -------------------------
    producer = KafkaProducer(
        bootstrap_servers=kafka_broker.bootstrap,
        acks="all",
        # Retries must not reorder a key's messages; idempotence guarantees that.
        enable_idempotence=True,
        linger_ms=5,
        key_serializer=DefaultSerializer(),
        value_serializer=JsonSerializer(),
    )
    try:
        futures = [
            (key, seq, producer.send(topic, key=key, value={"key": key, "seq": seq}))
            for seq in range(PER_KEY)
            for key in keys
        ]
        producer.flush(timeout=_remaining(deadline))
        produced_partition: dict[str, set[int]] = defaultdict(set)
        produced_offsets: dict[int, set[int]] = defaultdict(set)
        for key, _seq, future in futures:
            meta = future.get(timeout=_remaining(deadline))
            produced_partition[key].add(meta.partition)
            produced_offsets[meta.partition].add(meta.offset)
    finally:
        producer.close(timeout=10)

    assert all(len(parts) == 1 for parts in produced_partition.values()), (
        "a key was spread over several partitions",
        dict(produced_partition),
    )
    # With only one partition in use the ordering and commit checks below would prove little.
    assert set(produced_offsets) == set(range(PARTITIONS))
    assert sum(len(offsets) for offsets in produced_offsets.values()) == KEYS * PER_KEY

    # --- consume with a commit after each processed batch -------------------------------------
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=kafka_broker.bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        key_deserializer=DefaultSerializer(),
        value_deserializer=JsonSerializer(),
    )
    seqs_by_key: dict[str, list[int]] = defaultdict(list)
    partition_of_key: dict[str, set[int]] = defaultdict(set)
    last_offset: dict[int, int] = {}
    received = 0
    try:
        while received < KEYS * PER_KEY:
            _remaining(deadline)
            batch = consumer.poll(timeout_ms=1000)
            for tp, records in batch.items():
                for record in records:
                    assert record.key == record.value["key"]
                    # Offsets within a partition must only move forward: a rewind would mean
                    # the consumer re-read data it had already processed.
                    assert record.offset > last_offset.get(tp.partition, -1)
                    last_offset[tp.partition] = record.offset
                    seqs_by_key[record.key].append(record.value["seq"])
                    partition_of_key[record.key].add(tp.partition)
                    received += 1
            if batch:
                consumer.commit()

        # Anything arriving after the last expected message would be a duplicate.
        extra = consumer.poll(timeout_ms=2000)
        assert not any(extra.values()), f"unexpected extra records: {extra}"

        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        end_offsets = consumer.end_offsets(partitions)
        committed_by_consumer = {tp: consumer.committed(tp) for tp in partitions}
    finally:
        consumer.close()

    # --- every message exactly once, per-key order kept ----------------------------------------
    assert received == KEYS * PER_KEY
    assert sorted(seqs_by_key) == keys
    for key in keys:
        # Equal to 0..199 in consumption order: no loss, no duplicate, no reordering.
        assert seqs_by_key[key] == list(range(PER_KEY)), f"sequence of {key} broken"
        assert partition_of_key[key] == produced_partition[key]

    # --- committed offsets sit exactly at the end of every partition ----------------------------
    assert sum(end_offsets.values()) == KEYS * PER_KEY
    for tp in partitions:
        assert end_offsets[tp] == max(produced_offsets[tp.partition]) + 1
        assert committed_by_consumer[tp] == end_offsets[tp], tp

    # Ask the broker too, through a separate client: the commits must be durable group state,
    # not just the consumer's own view.
    admin = KafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap)
    try:
        group_offsets = admin.list_group_offsets({group: None})[group]
    finally:
        admin.close()
    assert {tp: om.offset for tp, om in group_offsets.items()} == end_offsets
