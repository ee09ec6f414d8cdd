"""Logging of the command line: one format, a quiet kafka-python, and no secret in any line.

kafka-python logs its whole configuration at debug level (``KafkaAdminClient`` does, with the
SASL and key passwords in it), and any library may put a setting into an error message. So
the secrets of the settings are masked in every record that reaches a handler of the root
logger, whichever logger made it, rather than by trusting each caller: :data:`SECRET_MASK`
is a filter on those handlers, and :func:`mask_secrets_of` tells it the values to mask once
the settings are read.
"""

from __future__ import annotations

import dataclasses
import json
import logging

from cellwatch.settings import REDACTED, SECTIONS, Secret, Settings

KAFKA_LOGGER = "kafka"
# librdkafka's lines, when kafka.client is confluent (cellwatch/kafka_clients.py).
CONFLUENT_LOGGER = "confluent_kafka"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class SecretMask(logging.Filter):
    """Replaces every known secret in a record's message and traceback by a mask.

    A secret is masked as written and as it appears inside a Python or JSON string literal
    (a dict in a log line shows ``repr`` of its values, where a backslash is doubled).
    """

    def __init__(self) -> None:
        super().__init__()
        self._forms: set[str] = set()

    def add(self, secret: str) -> None:
        if secret:
            self._forms |= {secret, repr(secret)[1:-1], json.dumps(secret)[1:-1]}

    def mask(self, text: str) -> str:
        # Longest first, so a secret that contains another is masked whole.
        for form in sorted(self._forms, key=len, reverse=True):
            text = text.replace(form, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._forms:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: the handler reports it as it would
            return True
        masked = self.mask(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.mask(record.exc_text)
        if record.stack_info:
            record.stack_info = self.mask(record.stack_info)
        return True


SECRET_MASK = SecretMask()


def configure_logging(level: str, kafka_level: str | None) -> None:
    """Logs at ``level`` to stderr; the Kafka clients at ``kafka_level``, or else at ``level`` but
    no more verbose than INFO (its debug lines are protocol traces, a flood for an operator
    who asked for cellwatch's debug lines)."""
    numeric = logging.getLevelName(level.upper())
    logging.basicConfig(level=numeric, format=LOG_FORMAT)
    root = logging.getLogger()
    root.setLevel(numeric)
    kafka_numeric = (logging.getLevelName(kafka_level.upper()) if kafka_level
                     else max(numeric, logging.INFO))
    logging.getLogger(KAFKA_LOGGER).setLevel(kafka_numeric)
    logging.getLogger(CONFLUENT_LOGGER).setLevel(kafka_numeric)
    for handler in root.handlers:
        if SECRET_MASK not in handler.filters:
            handler.addFilter(SECRET_MASK)


def mask_secrets_of(settings: Settings) -> None:
    """Masks the settings' secrets in every log record from now on."""
    for name in SECTIONS:
        section = getattr(settings, name)
        for field in dataclasses.fields(section):
            value = getattr(section, field.name)
            if isinstance(value, Secret):
                SECRET_MASK.add(value.reveal())
