"""The Kafka client the worker runs on (``kafka.client``): its options, adapters and admin.

Two clients sit behind the same ports (:mod:`streaming.ports`): kafka-python (the default;
:mod:`streaming.kafka_io`, :mod:`streaming.kafka_topics`, :mod:`streaming.topic_checks`)
and confluent-kafka, librdkafka's binding (:mod:`streaming.confluent_io`,
:mod:`streaming.confluent_topics`; the ``confluent`` extra). :func:`kafka_client` returns
one :class:`KafkaClient` with the connection options in the client's own names and the
constructors and admin calls of its adapters; nothing else in cellwatch names a client. The
confluent modules are imported only when chosen, so a kafka-python install never needs
confluent-kafka.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from cellwatch.logging_setup import CONFLUENT_LOGGER
from cellwatch.settings import KafkaSettings

log = logging.getLogger(__name__)


def kafka_client_options(kafka: KafkaSettings) -> dict[str, Any]:
    """kafka-python connection and security options of the ``kafka`` section."""
    options: dict[str, Any] = {
        "bootstrap_servers": list(kafka.bootstrap_servers),
        "client_id": kafka.client_id,
        "security_protocol": kafka.security_protocol,
        "request_timeout_ms": kafka.request_timeout_ms,
        # kafka-python's own wait for a first broker (30 s, an ERROR line per attempt);
        # wait_for_brokers has waited before any client starts.
        "bootstrap_timeout_ms": int(kafka.startup_timeout_seconds * 1000),
    }
    if kafka.sasl_mechanism is not None:
        options["sasl_mechanism"] = kafka.sasl_mechanism
    if kafka.sasl_username is not None:
        options["sasl_plain_username"] = kafka.sasl_username
    if kafka.sasl_password is not None:
        options["sasl_plain_password"] = kafka.sasl_password.reveal()
    for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        value = getattr(kafka, key)
        if value is not None:
            options[key] = str(value)
    if kafka.ssl_password is not None:
        options["ssl_password"] = kafka.ssl_password.reveal()
    return options


# Settings -> librdkafka property, for the optional ones passed through as they are.
_LIBRDKAFKA_NAMES = {
    "sasl_mechanism": "sasl.mechanisms",
    "sasl_username": "sasl.username",
    "ssl_cafile": "ssl.ca.location",
    "ssl_certfile": "ssl.certificate.location",
    "ssl_keyfile": "ssl.key.location",
}
_LIBRDKAFKA_SECRETS = {"sasl_password": "sasl.password", "ssl_password": "ssl.key.password"}


def confluent_client_config(kafka: KafkaSettings) -> dict[str, Any]:
    """librdkafka connection and security properties of the ``kafka`` section.

    librdkafka logs through the ``confluent_kafka`` Python logger (so the log handlers'
    secret filter sees its lines too, :mod:`cellwatch.logging_setup`). Nagle's algorithm is
    off: the worker's requests are small and latency-bound (a flush waits for each batch's
    acknowledgement), the way kafka-python already sends them.
    """
    config: dict[str, Any] = {
        "bootstrap.servers": ",".join(kafka.bootstrap_servers),
        "client.id": kafka.client_id,
        "security.protocol": kafka.security_protocol.lower(),
        "socket.timeout.ms": kafka.request_timeout_ms,
        "socket.nagle.disable": True,
        "logger": logging.getLogger(CONFLUENT_LOGGER),
    }
    for key, name in _LIBRDKAFKA_NAMES.items():
        value = getattr(kafka, key)
        if value is not None:
            config[name] = str(value)
    for key, name in _LIBRDKAFKA_SECRETS.items():
        value = getattr(kafka, key)
        if value is not None:
            config[name] = value.reveal()
    return config


@dataclasses.dataclass(frozen=True)
class KafkaClient:
    """One client library's options, adapters and admin calls (same signatures for both).

    ``options`` goes first to every callable; the adapters are the ports'
    (:class:`~streaming.ports.ReadingSource`, :class:`~streaming.ports.RecordSink`,
    :class:`~streaming.ports.ChangelogReader`).
    """

    name: str
    options: dict[str, Any]
    reading_source: Callable[..., Any]
    record_sink: Callable[..., Any]
    changelog_reader: Callable[..., Any]
    changelog_check: Callable[..., Any]
    partition_count: Callable[..., int | None]
    ensure_topic: Callable[..., int]
    ensure_topics: Callable[..., bool]
    ensure_changelog: Callable[..., None]
    dead_letter_topic_limit: Callable[..., int | None]


def kafka_client(kafka: KafkaSettings) -> KafkaClient:
    """The client ``kafka.client`` names, with the options of the ``kafka`` section."""
    if kafka.client == "confluent":
        from streaming import confluent_io, confluent_topics

        return KafkaClient(
            name="confluent", options=confluent_client_config(kafka),
            reading_source=confluent_io.ConfluentReadingSource,
            record_sink=confluent_io.ConfluentRecordSink,
            changelog_reader=confluent_io.ConfluentChangelogReader,
            changelog_check=confluent_topics.ConfluentChangelogCheck,
            partition_count=confluent_topics.partition_count,
            ensure_topic=confluent_topics.ensure_topic,
            ensure_topics=confluent_topics.ensure_topics,
            ensure_changelog=confluent_topics.ensure_changelog,
            dead_letter_topic_limit=confluent_topics.dead_letter_topic_limit)
    from streaming import kafka_io, kafka_topics, topic_checks

    return KafkaClient(
        name="kafka-python", options=kafka_client_options(kafka),
        reading_source=kafka_io.KafkaReadingSource,
        record_sink=kafka_io.KafkaRecordSink,
        changelog_reader=kafka_io.KafkaChangelogReader,
        changelog_check=topic_checks.ChangelogCheck,
        partition_count=kafka_topics.partition_count,
        ensure_topic=kafka_topics.ensure_topic,
        ensure_topics=kafka_topics.ensure_topics,
        ensure_changelog=kafka_topics.ensure_changelog,
        dead_letter_topic_limit=topic_checks.dead_letter_topic_limit)
