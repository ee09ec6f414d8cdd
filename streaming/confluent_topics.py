"""Creating and checking the worker's topics with confluent-kafka's admin client.

The same functions, with the same contracts, as :mod:`streaming.kafka_topics` (creation at
start) and :mod:`streaming.topic_checks` (the changelog check before every checkpoint, the
dead-letter topic's limit); the verdicts are shared (:func:`changelog_problem`).

Topic metadata is always read for every topic at once (``list_topics()`` without a name): a
metadata request that names a topic may auto-create it on a broker with
``auto.create.topics.enable=true``, and a check must never create what it checks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType

from streaming.ports import TopicSetupError
from streaming.topic_checks import (
    changelog_problem,
    dead_letter_limit,
    output_partitions_match,
    readings_topic_missing,
)

log = logging.getLogger(__name__)

_TIMEOUT_S = 30.0


def _admin(config: Mapping[str, Any]) -> AdminClient:
    return AdminClient(dict(config))


def _partitions_of(admin: AdminClient, topic: str) -> int | None:
    found = admin.list_topics(timeout=_TIMEOUT_S).topics.get(topic)
    if found is None or found.error is not None or not found.partitions:
        return None
    return len(found.partitions)


def _config_value(admin: AdminClient, topic: str, key: str) -> str | None:
    resource = ConfigResource(ResourceType.TOPIC, topic)
    (future,) = admin.describe_configs([resource], request_timeout=_TIMEOUT_S).values()
    entry = future.result().get(key)
    return None if entry is None else entry.value


def _create(admin: AdminClient, topics: Mapping[str, int],
            configs: Mapping[str, str] | None = None) -> None:
    """Creates ``topics`` (name -> partitions) and waits until every partition has a leader;
    a topic another worker created first is fine."""
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=count, config=dict(configs or {}))
         for name, count in topics.items()], request_timeout=_TIMEOUT_S)
    for future in futures.values():
        try:
            future.result()
        except KafkaException as error:
            if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    deadline = time.monotonic() + _TIMEOUT_S
    while time.monotonic() < deadline:
        listed = admin.list_topics(timeout=_TIMEOUT_S).topics
        if all(name in listed and listed[name].partitions and all(
                p.leader >= 0 for p in listed[name].partitions.values()) for name in topics):
            return
        time.sleep(0.1)


def partition_count(config: Mapping[str, Any], topic: str) -> int | None:
    """Partitions of ``topic``, or None when it does not exist."""
    return _partitions_of(_admin(config), topic)


def ensure_topic(config: Mapping[str, Any], topic: str, partitions: int) -> int:
    """Creates ``topic`` with ``partitions`` when it is missing; returns its partition count."""
    admin = _admin(config)
    existing = _partitions_of(admin, topic)
    if existing is not None:
        return existing
    _create(admin, {topic: partitions})
    return partitions


def ensure_changelog(config: Mapping[str, Any], topic: str, partitions: int) -> None:
    """Creates the compacted state changelog with ``partitions`` when it is missing.

    Raises:
        TopicSetupError: it exists with another partition count or is not compacted.
    """
    admin = _admin(config)
    existing = _partitions_of(admin, topic)
    if existing is None:
        log.info("creating the state changelog %s with %d partitions", topic, partitions)
        _create(admin, {topic: partitions}, {
            "cleanup.policy": "compact",
            # Compact the latest states soon, so restores read few old versions.
            "segment.ms": "600000",
            "min.cleanable.dirty.ratio": "0.1",
        })
        existing = _partitions_of(admin, topic)
    problem = changelog_problem(topic, partitions, existing,
                                _config_value(admin, topic, "cleanup.policy"))
    if problem is not None:
        raise TopicSetupError(problem)


def ensure_topics(config: Mapping[str, Any], source_topic: str, topics: Sequence[str]) -> bool:
    """Creates missing output topics with as many partitions as ``source_topic``; returns
    whether every output topic now has exactly that many.

    Raises:
        TopicSetupError: the source topic does not exist.
    """
    admin = _admin(config)
    partitions = _partitions_of(admin, source_topic)
    if partitions is None:
        raise readings_topic_missing(source_topic)
    listed = admin.list_topics(timeout=_TIMEOUT_S).topics
    missing = [topic for topic in topics if topic not in listed]
    if missing:
        log.info("creating topics %s with %d partitions", missing, partitions)
        _create(admin, dict.fromkeys(missing, partitions))
    counts = {topic: _partitions_of(admin, topic) for topic in topics}
    return output_partitions_match(counts, partitions, source_topic)


class ConfluentChangelogCheck:
    """Raises :class:`TopicSetupError` when the changelog cannot take checkpoints; a check
    the broker cannot answer passes (see :class:`streaming.topic_checks.ChangelogCheck`).

    Args:
        config: librdkafka connection and security properties.
        topic: the changelog topic.
        partitions: the readings topic's partition count.
    """

    def __init__(self, config: Mapping[str, Any], topic: str, partitions: int) -> None:
        self.topic = topic
        self.partitions = partitions
        self._admin = _admin(config)

    def __call__(self) -> None:
        try:
            found = _partitions_of(self._admin, self.topic)
            policy = (None if found is None
                      else _config_value(self._admin, self.topic, "cleanup.policy"))
        except KafkaException as error:
            log.warning("could not check the state changelog %s: %s", self.topic, error)
            return
        problem = changelog_problem(self.topic, self.partitions, found, policy)
        if problem is not None:
            raise TopicSetupError(problem)

    def close(self) -> None:
        """Nothing to release: the admin client goes with its last reference."""


def dead_letter_topic_limit(config: Mapping[str, Any], topic: str) -> int | None:
    """The ``max.message.bytes`` of the dead-letter topic (None when it cannot be read).

    Raises:
        TopicSetupError: the topic is compacted
            (:func:`streaming.topic_checks.dead_letter_limit`).
    """
    admin = _admin(config)
    try:
        if _partitions_of(admin, topic) is None:
            return None
        policy = _config_value(admin, topic, "cleanup.policy")
        value = _config_value(admin, topic, "max.message.bytes")
    except KafkaException as error:
        log.warning("could not read the configuration of %s: %s", topic, error)
        return None
    return dead_letter_limit(topic, policy, value)
