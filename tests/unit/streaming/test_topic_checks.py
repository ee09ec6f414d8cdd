"""The topic rules both Kafka clients' adapters apply to what they read from the broker."""

from __future__ import annotations

import logging

import pytest

from streaming.ports import TopicSetupError
from streaming.topic_checks import (
    changelog_problem,
    dead_letter_limit,
    output_partitions_match,
    readings_topic_missing,
)


def test_a_compacted_dead_letter_topic_is_refused_with_the_command_that_fixes_it():
    with pytest.raises(TopicSetupError, match=r"'dlq' has cleanup.policy=compact,delete: a "
                                              r"compacted topic refuses .* --entity-name dlq"):
        dead_letter_limit("dlq", "compact,delete", "1048588")


@pytest.mark.parametrize(("policy", "value", "limit"), [
    ("delete", "1048588", 1_048_588), (None, "20000", 20_000), ("delete", None, None),
    ("delete", "not a number", None)])
def test_the_dead_letter_limit_is_the_topics_max_message_bytes_when_readable(
        policy, value, limit):
    assert dead_letter_limit("dlq", policy, value) == limit


def test_output_topics_with_other_partition_counts_are_reported(caplog):
    with caplog.at_level(logging.WARNING, logger="streaming.topic_checks"):
        assert output_partitions_match({"scores": 8, "anomalies": 8}, 8, "readings")
        assert not caplog.records
        assert not output_partitions_match({"scores": 8, "anomalies": 3}, 8, "readings")
    assert "{'anomalies': 3}" in caplog.text and "partitioned by key" in caplog.text


def test_a_missing_readings_topic_names_it():
    error = readings_topic_missing("sensor-readings")
    assert isinstance(error, TopicSetupError)
    assert "'sensor-readings' does not exist" in str(error)


def test_a_changelog_must_match_the_readings_partitions_and_be_compacted():
    assert changelog_problem("state", 4, 4, "compact") is None
    assert "does not exist" in changelog_problem("state", 4, None, None)
    assert "expected 4 partitions" in changelog_problem("state", 4, 1, "compact")
    assert "expected cleanup.policy=compact" in changelog_problem("state", 4, 4, "delete")
