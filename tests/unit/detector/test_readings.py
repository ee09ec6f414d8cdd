"""Timestamp parsing shared by the file readers and the Kafka message validation."""

from __future__ import annotations

import pytest

from detector.readings import format_timestamp_ms, parse_timestamp_ms


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1_706_702_400_000, 1_706_702_400_000),
        ("1706702400000", 1_706_702_400_000),
        (1_706_702_400_000.0, 1_706_702_400_000),
        ("2024-01-31T12:00:00Z", 1_706_702_400_000),
        ("2024-01-31T13:00:00+01:00", 1_706_702_400_000),
        ("2024-01-31 12:00:00", 1_706_702_400_000),
        ("2024-01-31 12:00:00.250", 1_706_702_400_250),
        ("2014-04-01 00:00:00.000000", 1_396_310_400_000),
    ],
)
def test_accepted_forms(value, expected):
    assert parse_timestamp_ms(value) == expected


@pytest.mark.parametrize("value", ["yesterday", "2024-13-01T00:00:00Z", "", None, True, 1.5,
                                   float("nan"), -5, [1]])
def test_rejected_forms_say_what_was_expected(value):
    with pytest.raises(ValueError, match=r"expected .*received"):
        parse_timestamp_ms(value)


def test_format_round_trips():
    assert format_timestamp_ms(1_706_702_400_250) == "2024-01-31T12:00:00.250Z"
    assert parse_timestamp_ms(format_timestamp_ms(1_706_702_400_250)) == 1_706_702_400_250
