"""Creating the topics the worker reads and writes, at start (Kafka's admin API).

Output topics get the readings topic's partition count, so a stream's records keep its
partition; the state changelog is created compacted, with one partition per readings
partition, and an existing one is checked for that shape (:mod:`streaming.topic_checks`
checks it again before every checkpoint).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer
from kafka.admin import ConfigResource, ConfigResourceType
from kafka.errors import TopicAlreadyExistsError

from streaming.ports import TopicSetupError
from streaming.topic_checks import (
    changelog_problem,
    config_value,
    output_partitions_match,
    readings_topic_missing,
)

log = logging.getLogger(__name__)


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


def ensure_changelog(client_options: Mapping[str, Any], topic: str, partitions: int) -> None:
    """Creates the compacted state changelog with ``partitions`` when it is missing.

    Raises:
        TopicSetupError: the topic exists with another partition count (a partition's states
            would be restored from the wrong changelog partition) or is not compacted (old
            states would be deleted by age, and streams would lose them).
    """
    existing = partition_count(client_options, topic)
    admin = KafkaAdminClient(**client_options)
    try:
        if existing is None:
            log.info("creating the state changelog %s with %d partitions", topic, partitions)
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics({topic: {"num_partitions": partitions, "configs": {
                    "cleanup.policy": "compact",
                    # Compact the latest states soon, so restores read few old versions.
                    "segment.ms": "600000",
                    "min.cleanable.dirty.ratio": "0.1",
                }}}, wait_for_metadata=True)
            existing = partition_count(client_options, topic)
        described = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic)], config_filter="all")
    finally:
        admin.close()
    problem = changelog_problem(topic, partitions, existing,
                                config_value(described, topic, "cleanup.policy"))
    if problem is not None:
        raise TopicSetupError(problem)


def ensure_topics(client_options: Mapping[str, Any], source_topic: str,
                  topics: Sequence[str]) -> bool:
    """Creates missing output topics with as many partitions as ``source_topic``.

    Returns whether every output topic now has exactly that many partitions.

    Raises:
        TopicSetupError: the source topic does not exist.
    """
    partitions = partition_count(client_options, source_topic)
    if partitions is None:
        raise readings_topic_missing(source_topic)
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
    return output_partitions_match(counts, partitions, source_topic)
