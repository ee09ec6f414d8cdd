"""Checks of the topics the worker writes: the changelog's shape, the dead-letter topic's limit.

The rules (``changelog_problem``, ``readings_topic_missing``, ``output_partitions_match``,
``dead_letter_limit``) take what a client read and are shared by both clients' adapters
(kafka-python's here and in :mod:`streaming.kafka_topics`, librdkafka's in
:mod:`streaming.confluent_topics`).

The state changelog needs one partition per readings partition (the states of readings
partition ``p`` live in changelog partition ``p``) and ``cleanup.policy=compact`` (with
deletion by age, the states of quiet streams would vanish). A changelog deleted while the
worker runs breaks both at once on a broker with ``auto.create.topics.enable=true``: the
next metadata request that names it recreates it with ``num.partitions`` partitions and the
default ``cleanup.policy=delete``. The worker checks the shape at start (creating the topic
when missing) and before every checkpoint (:class:`ChangelogCheck`: one metadata and one
configs request, neither of which creates a topic), and stops with
:class:`~streaming.ports.TopicSetupError` naming what is wrong and what to do.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType
from kafka.errors import KafkaError

from streaming.ports import TopicSetupError

log = logging.getLogger(__name__)

_RECREATE = ("delete it (kafka-topics.sh --delete --topic {topic}) and restart the worker, "
             "which creates it again with {expected} partitions and cleanup.policy=compact "
             "(the streams restart their learning period), or set kafka.changelog_topic to a "
             "new name")


def changelog_problem(topic: str, expected_partitions: int, partitions: int | None,
                      cleanup_policy: str | None) -> str | None:
    """What is wrong with a changelog of ``partitions`` and ``cleanup_policy``, in one line
    that says what to do; None when it can take checkpoints."""
    fix = _RECREATE.format(topic=topic, expected=expected_partitions)
    if partitions is None:
        return (f"state changelog {topic!r} does not exist (deleted while the worker ran?); "
                f"the states it held are lost: restart the worker, which creates it")
    if partitions != expected_partitions:
        return (f"state changelog {topic!r}: expected {expected_partitions} partitions like "
                f"the readings topic (a partition's states live in the same-numbered "
                f"changelog partition), found {partitions} (a broker with "
                f"auto.create.topics.enable=true recreates a deleted topic with "
                f"num.partitions); {fix}")
    policy = cleanup_policy or "delete"
    if "compact" not in policy.split(","):
        return (f"state changelog {topic!r}: expected cleanup.policy=compact, found "
                f"cleanup.policy={policy} (stream states would be deleted by age); change it "
                f"with kafka-configs.sh --alter --add-config cleanup.policy=compact, or {fix}")
    return None


def readings_topic_missing(topic: str) -> TopicSetupError:
    """The error when the readings topic does not exist at start."""
    return TopicSetupError(f"the readings topic {topic!r} does not exist; create it "
                           f"(partitioned by stream id) before starting the worker")


def output_partitions_match(counts: Mapping[str, int | None], partitions: int,
                            source_topic: str) -> bool:
    """Whether every output topic in ``counts`` has the readings topic's ``partitions``
    (records then go to their reading's partition); logs the ones that do not."""
    mismatched = {topic: n for topic, n in counts.items() if n != partitions}
    if mismatched:
        log.warning("output topics %s do not have the %d partitions of %s; their records are "
                    "partitioned by key instead", mismatched, partitions, source_topic)
    return not mismatched


def dead_letter_limit(topic: str, cleanup_policy: str | None,
                      max_message_bytes: str | None) -> int | None:
    """The dead-letter topic's ``max.message.bytes`` as an int (None when unknown).

    Raises:
        TopicSetupError: the topic is compacted. A compacted topic refuses records without
            a key, and a reading without a Kafka key is a bad message like any other: its
            dead letter refused for good would stop a transactional worker on every
            restart (the letter is part of the transaction) and be lost otherwise.
    """
    if cleanup_policy is not None and "compact" in cleanup_policy:
        raise TopicSetupError(
            f"the dead-letter topic {topic!r} has cleanup.policy={cleanup_policy}: a "
            f"compacted topic refuses the dead letters of readings without a key; set "
            f"cleanup.policy=delete (kafka-configs.sh --alter --entity-type topics "
            f"--entity-name {topic} --add-config cleanup.policy=delete) or use another "
            f"dead-letter topic")
    if max_message_bytes is not None and max_message_bytes.isdigit():
        return int(max_message_bytes)
    return None


def config_value(described: Mapping[str, Any], topic: str, key: str) -> str | None:
    """One entry of a ``describe_configs`` answer about ``topic``."""
    for resources in described.values():
        entry = resources.get(topic, {}).get(key)
        if entry is not None:
            return entry.get("value") if isinstance(entry, Mapping) else str(entry)
    return None


def describe_topic(admin: KafkaAdminClient, topic: str, key: str) -> tuple[int | None,
                                                                            str | None]:
    """``(partitions, value of config key)`` of ``topic``; ``(None, None)`` when it does not
    exist. Never creates it: the admin client's metadata requests do not auto-create."""
    (described,) = admin.describe_topics([topic])
    if described.get("error_code", 0) != 0 or not described.get("partitions"):
        return None, None
    configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)],
                                     config_filter="all")
    return len(described["partitions"]), config_value(configs, topic, key)


class ChangelogCheck:
    """Raises :class:`TopicSetupError` when the changelog cannot take checkpoints.

    Keeps one admin client for the worker's life; a check the broker cannot answer (it is
    restarting, say) passes: the checkpoint that follows fails on its own if the broker stays
    away, and the check runs again after that failure.

    Args:
        client_options: kafka-python connection and security options.
        topic: the changelog topic.
        partitions: the readings topic's partition count.
    """

    def __init__(self, client_options: Mapping[str, Any], topic: str, partitions: int) -> None:
        self.topic = topic
        self.partitions = partitions
        self._options = dict(client_options)
        self._admin: KafkaAdminClient | None = None

    def __call__(self) -> None:
        try:
            if self._admin is None:
                self._admin = KafkaAdminClient(**self._options)
            found, policy = describe_topic(self._admin, self.topic, "cleanup.policy")
        except KafkaError as error:
            log.warning("could not check the state changelog %s: %s", self.topic, error)
            return
        problem = changelog_problem(self.topic, self.partitions, found, policy)
        if problem is not None:
            raise TopicSetupError(problem)

    def close(self) -> None:
        if self._admin is not None:
            self._admin.close()
            self._admin = None


def dead_letter_topic_limit(client_options: Mapping[str, Any], topic: str) -> int | None:
    """The ``max.message.bytes`` of the dead-letter topic (None when it cannot be read).

    Raises:
        TopicSetupError: the topic is compacted (:func:`dead_letter_limit`).
    """
    try:
        admin = KafkaAdminClient(**client_options)
    except KafkaError as error:
        log.warning("could not read the configuration of %s: %s", topic, error)
        return None
    try:
        _, policy = describe_topic(admin, topic, "cleanup.policy")
        _, value = describe_topic(admin, topic, "max.message.bytes")
    except KafkaError as error:
        log.warning("could not read the configuration of %s: %s", topic, error)
        return None
    finally:
        admin.close()
    return dead_letter_limit(topic, policy, value)
