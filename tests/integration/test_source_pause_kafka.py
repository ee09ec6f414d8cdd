"""The reading source's pause and resume against a real broker, with each client.

The worker pauses a partition while it holds records of it back (``streaming.pacing``): a
paused partition must return nothing more, the others must go on, and after the resume its
records must continue from where the worker's last one was, none skipped, none repeated
(both clients fetch ahead of the application: what was fetched for a paused partition is
dropped or kept, but never delivered out of place).
"""

from __future__ import annotations

import time
from collections import defaultdict

import pytest
from kafka import KafkaProducer

from tests.integration.test_consumer_group_rebalance import RecordingListener, reading_source

pytestmark = pytest.mark.integration

PER_PARTITION = 60
POLL_RECORDS = 10
BUDGET_S = 30.0


def test_a_paused_partition_returns_nothing_and_resumes_where_it_stopped(
        kafka_broker, topic_factory, unique_name, kafka_client):
    topic = topic_factory(partitions=2, purpose="readings")
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap, acks="all")
    for offset in range(PER_PARTITION):
        for partition in (0, 1):
            producer.send(topic, key=f"s{partition}".encode(), value=str(offset).encode(),
                          partition=partition)
    producer.flush()
    producer.close()

    listener = RecordingListener()
    source = reading_source(kafka_client, kafka_broker.bootstrap, topic,
                            unique_name("group"), listener)
    seen: dict[int, list[int]] = defaultdict(list)
    deadline = time.monotonic() + BUDGET_S

    def poll() -> list:
        assert time.monotonic() < deadline, f"not done within {BUDGET_S} s: {dict(seen)}"
        records = source.poll(100, POLL_RECORDS)
        for record in records:
            seen[record.partition].append(record.offset)
        return records

    try:
        while not seen[0]:
            poll()
        source.pause([0, 7])  # 7 is not assigned: ignored
        paused_at = len(seen[0])
        while len(seen[1]) < PER_PARTITION:
            poll()
        for _ in range(5):  # what was fetched ahead for partition 0 has had time to arrive
            poll()
        assert len(seen[0]) == paused_at, "a paused partition returned records"
        source.resume([0])
        while len(seen[0]) < PER_PARTITION:
            poll()
    finally:
        source.close()
    assert seen[0] == list(range(PER_PARTITION))
    assert seen[1] == list(range(PER_PARTITION))
