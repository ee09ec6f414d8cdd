"""ReadingParser: every rejection reason from the input that deserves it; good readings parse."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest

from streaming.messages import ReadingParser, Rejection, RejectReason
from tests.unit.streaming.conftest import CHANNELS

GOOD_VALUES = {"temperature": 21.5, "pressure": 1.01, "flow": -3.25}


@pytest.fixture
def parser() -> ReadingParser:
    return ReadingParser(CHANNELS, max_message_bytes=1024)


def message(**overrides) -> bytes:
    payload = {"stream": "pump-7", "ts": 1_706_702_400_000, "values": dict(GOOD_VALUES)}
    payload.update(overrides)
    return json.dumps(payload).encode()


def rejection(parser: ReadingParser, raw: bytes | None) -> Rejection:
    parsed = parser.parse(raw)
    assert isinstance(parsed, Rejection), f"expected a rejection, parsed {parsed!r}"
    return parsed


# Good messages ------------------------------------------------------------------------------


def test_a_good_message_with_epoch_ms(parser: ReadingParser) -> None:
    stream, ts_ms, values = parser.parse(message())
    assert (stream, ts_ms) == ("pump-7", 1_706_702_400_000)
    assert values.dtype == np.float32
    np.testing.assert_array_equal(values, np.array([21.5, 1.01, -3.25], np.float32))


@pytest.mark.parametrize(("text", "expected"), [
    ("2024-01-31T12:00:00Z", dt.datetime(2024, 1, 31, 12, tzinfo=dt.UTC)),
    ("2024-01-31T12:00:00.250Z", dt.datetime(2024, 1, 31, 12, 0, 0, 250_000, tzinfo=dt.UTC)),
    ("2024-01-31T13:30:00+01:30", dt.datetime(2024, 1, 31, 12, tzinfo=dt.UTC)),
    ("2024-01-31T07:00:00-05:00", dt.datetime(2024, 1, 31, 12, tzinfo=dt.UTC)),
])
def test_rfc3339_timestamps_become_epoch_ms(parser: ReadingParser, text: str,
                                            expected: dt.datetime) -> None:
    _, ts_ms, _ = parser.parse(message(ts=text))
    assert ts_ms == int(expected.timestamp() * 1000)


def test_values_come_out_in_model_channel_order_whatever_the_json_order(
        parser: ReadingParser) -> None:
    raw = b'{"values":{"flow":3,"temperature":1,"pressure":2},"ts":5,"stream":"s"}'
    stream, ts_ms, values = parser.parse(raw)
    assert (stream, ts_ms) == ("s", 5)
    np.testing.assert_array_equal(values, np.array([1.0, 2.0, 3.0], np.float32))
    # Another model order gives another row order for the very same bytes.
    _, _, reordered = ReadingParser(("flow", "pressure", "temperature"), 1024).parse(raw)
    np.testing.assert_array_equal(reordered, np.array([3.0, 2.0, 1.0], np.float32))


def test_values_are_rounded_to_float32(parser: ReadingParser) -> None:
    _, _, values = parser.parse(message(values={**GOOD_VALUES, "pressure": 0.1}))
    assert values[1] == np.float32(0.1)
    assert values.dtype == np.float32


def test_a_message_of_exactly_the_limit_is_accepted() -> None:
    raw = message()
    assert isinstance(ReadingParser(CHANNELS, len(raw)).parse(raw), tuple)


# Rejections ---------------------------------------------------------------------------------


def test_oversized_is_rejected_before_decoding() -> None:
    raw = message()
    parser = ReadingParser(CHANNELS, len(raw) - 1)
    found = rejection(parser, raw)
    assert found.reason == RejectReason.OVERSIZED
    assert str(len(raw)) in found.detail and str(len(raw) - 1) in found.detail
    # Even bytes that are not UTF-8 are refused for their size first.
    assert rejection(parser, b"\xff" * len(raw)).reason == RejectReason.OVERSIZED


@pytest.mark.parametrize("raw", [b"\xff\xfe{}", b'{"stream":"\xc3\x28"}', b"\xed\xa0\x80"])
def test_invalid_utf8(parser: ReadingParser, raw: bytes) -> None:
    assert rejection(parser, raw).reason == RejectReason.INVALID_UTF8


@pytest.mark.parametrize("raw", [b"", b"{", b'{"stream": pump}', b"{'stream': 'x'}",
                                 b'{"stream":"s"} trailing', b"[" * 100_000])
def test_invalid_json(raw: bytes) -> None:
    found = rejection(ReadingParser(CHANNELS, 1_000_000), raw)
    assert found.reason == RejectReason.INVALID_JSON
    assert found.detail.startswith("not JSON")


def test_a_number_too_long_for_python_int_is_invalid_json_not_a_crash() -> None:
    # json.loads raises a plain ValueError (not JSONDecodeError) past 4300 digits.
    raw = b'{"stream":"s","ts":1,"values":{"temperature":' + b"1" * 5000 + b"}}"
    assert rejection(ReadingParser(CHANNELS, 65_536), raw).reason == RejectReason.INVALID_JSON


@pytest.mark.parametrize("raw", [b"[1, 2]", b'"text"', b"42", b"null", b"true"])
def test_json_that_is_not_an_object(parser: ReadingParser, raw: bytes) -> None:
    found = rejection(parser, raw)
    assert found.reason == RejectReason.WRONG_TYPE
    assert "JSON object" in found.detail


def test_a_tombstone_is_a_missing_field(parser: ReadingParser) -> None:
    assert rejection(parser, None).reason == RejectReason.MISSING_FIELD


@pytest.mark.parametrize("missing", [("stream",), ("ts",), ("values",), ("stream", "values")])
def test_missing_fields_are_named(parser: ReadingParser, missing: tuple[str, ...]) -> None:
    payload = {"stream": "s", "ts": 1, "values": dict(GOOD_VALUES)}
    for name in missing:
        del payload[name]
    found = rejection(parser, json.dumps(payload).encode())
    assert found.reason == RejectReason.MISSING_FIELD
    assert found.detail.startswith(f"missing field(s) {', '.join(missing)};")


@pytest.mark.parametrize(("field", "value"), [
    ("stream", 7), ("stream", ""), ("stream", None), ("stream", ["s"]), ("stream", True),
    ("ts", True), ("ts", None), ("ts", "yesterday"), ("ts", 1.5), ("ts", -1), ("ts", [1]),
    ("ts", "2024-13-01T00:00:00Z"), ("ts", 10**20),
    ("values", [1, 2, 3]), ("values", None), ("values", "21.5"), ("values", 3),
])
def test_wrong_field_types_name_the_field(parser: ReadingParser, field: str,
                                          value: object) -> None:
    found = rejection(parser, message(**{field: value}))
    assert found.reason == RejectReason.WRONG_TYPE
    assert found.detail.startswith(f"field {field}:")


@pytest.mark.parametrize("value", [True, False, "21.5", None, [21.5], {"v": 1}])
def test_a_channel_value_that_is_not_a_number(parser: ReadingParser, value: object) -> None:
    found = rejection(parser, message(values={**GOOD_VALUES, "pressure": value}))
    assert found.reason == RejectReason.WRONG_TYPE
    assert found.detail.startswith("channel 'pressure':")


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"3.5e38",
                                     b"-1e39", b"1" + b"0" * 39, b"1" + b"0" * 400])
def test_non_finite_and_beyond_float32_values(literal: bytes) -> None:
    raw = (b'{"stream":"s","ts":1,"values":{"temperature":1,"pressure":2,"flow":'
           + literal + b"}}")
    found = rejection(ReadingParser(CHANNELS, 4096), raw)
    assert found.reason == RejectReason.NON_FINITE
    assert found.detail.startswith("channel 'flow':")


def test_the_largest_float32_magnitudes_inside_the_limit_are_accepted(
        parser: ReadingParser) -> None:
    _, _, values = parser.parse(message(values={**GOOD_VALUES, "flow": -3.3e38}))
    assert np.isfinite(values).all() and values[2] == np.float32(-3.3e38)


def test_an_unknown_channel_is_named(parser: ReadingParser) -> None:
    found = rejection(parser, message(values={**GOOD_VALUES, "humidity": 40}))
    assert found.reason == RejectReason.UNKNOWN_CHANNEL
    assert "'humidity'" in found.detail


def test_a_missing_channel_is_named(parser: ReadingParser) -> None:
    values = dict(GOOD_VALUES)
    del values["pressure"]
    found = rejection(parser, message(values=values))
    assert found.reason == RejectReason.MISSING_CHANNEL
    assert found.detail == "missing channel(s) pressure"


def test_a_stream_id_that_cannot_be_utf8_is_rejected(parser: ReadingParser) -> None:
    # Valid UTF-8 JSON can still spell a lone surrogate; such an id cannot key an output record.
    found = rejection(parser, b'{"stream":"pump-\\ud800","ts":1,"values":'
                              b'{"temperature":1,"pressure":2,"flow":3}}')
    assert found.reason == RejectReason.INVALID_UTF8
    assert found.detail.startswith("field stream:")
    # A properly escaped non-ASCII character is fine.
    stream, _, _ = parser.parse(b'{"stream":"pump-\\u00fc","ts":1,"values":'
                                b'{"temperature":1,"pressure":2,"flow":3}}')
    assert stream == "pump-ü"

