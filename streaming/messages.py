"""The readings topic's message format, and why a message is rejected.

A reading is a JSON object, UTF-8, keyed by its stream id::

    {"stream": "pump-7", "ts": 1706702400000, "values": {"temperature": 21.5, "pressure": 1.01}}

``ts`` is epoch milliseconds or RFC 3339 text; ``values`` has one finite number per channel of
the model, no more and no fewer. Anything else is rejected with one of
the :class:`RejectReason` values and goes to the dead-letter topic with the original bytes.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
from collections.abc import Sequence

import numpy as np

from detector.readings import parse_timestamp_ms


class RejectReason(enum.StrEnum):
    """Why a consumed reading was not scored: the dead-letter reason and the metric label."""

    INVALID_UTF8 = "invalid_utf8"
    INVALID_JSON = "invalid_json"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    NON_FINITE = "non_finite"
    UNKNOWN_CHANNEL = "unknown_channel"
    MISSING_CHANNEL = "missing_channel"
    OVERSIZED = "oversized"
    OUT_OF_ORDER = "out_of_order"
    DUPLICATE = "duplicate"



@dataclasses.dataclass(frozen=True, slots=True)
class Rejection:
    """Why one message cannot be scored."""

    reason: RejectReason
    detail: str


class ReadingParser:
    """Parses and validates reading messages against the model's channels.

    Args:
        channels: the model's channel names, in model order.
        max_message_bytes: larger messages are rejected before they are decoded.
    """

    def __init__(self, channels: Sequence[str], max_message_bytes: int) -> None:
        self.channels = tuple(channels)
        self.max_message_bytes = max_message_bytes
        self._channel_set = frozenset(self.channels)

    def parse(self, raw: bytes | None) -> tuple[str, int, np.ndarray] | Rejection:
        """``(stream, ts_ms, values[F] float32)`` or the :class:`Rejection`."""
        reason = RejectReason
        if raw is None:
            return Rejection(reason.MISSING_FIELD, "message has no value (a tombstone)")
        if len(raw) > self.max_message_bytes:
            return Rejection(reason.OVERSIZED, f"message is {len(raw)} bytes, more than the "
                                               f"{self.max_message_bytes} allowed")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            return Rejection(reason.INVALID_UTF8, f"not UTF-8: {error}")
        try:
            message = json.loads(text)
        except ValueError as error:  # JSONDecodeError, or an integer beyond 4300 digits
            return Rejection(reason.INVALID_JSON, f"not JSON: {error}")
        except RecursionError:
            return Rejection(reason.INVALID_JSON, "not JSON: nested too deeply")
        if not isinstance(message, dict):
            return Rejection(reason.WRONG_TYPE,
                             f"expected a JSON object, received {type(message).__name__}")
        missing = [key for key in ("stream", "ts", "values") if key not in message]
        if missing:
            return Rejection(reason.MISSING_FIELD, f"missing field(s) {', '.join(missing)}; "
                                                   f"expected stream, ts and values")
        stream = message["stream"]
        if not isinstance(stream, str) or not stream:
            return Rejection(reason.WRONG_TYPE,
                             f"field stream: expected a non-empty string, received {stream!r}")
        try:
            stream.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate escape such as "\ud800"
            return Rejection(reason.INVALID_UTF8,
                             f"field stream: {stream!r} has no UTF-8 form (lone surrogate)")
        try:
            ts_ms = parse_timestamp_ms(message["ts"])
        except ValueError as error:
            return Rejection(reason.WRONG_TYPE, f"field ts: {error}")
        values = message["values"]
        if not isinstance(values, dict):
            return Rejection(reason.WRONG_TYPE, f"field values: expected an object of channel: "
                                                f"number, received {type(values).__name__}")
        unknown = [name for name in values if name not in self._channel_set]
        if unknown:
            return Rejection(reason.UNKNOWN_CHANNEL,
                             f"unknown channel(s) {', '.join(map(repr, unknown))}; the model "
                             f"has {', '.join(self.channels)}")
        if len(values) != len(self.channels):
            absent = [name for name in self.channels if name not in values]
            return Rejection(reason.MISSING_CHANNEL, f"missing channel(s) {', '.join(absent)}")
        row = np.empty(len(self.channels), dtype=np.float32)
        for index, name in enumerate(self.channels):
            value = values[name]
            if isinstance(value, bool) or not isinstance(value, int | float):
                return Rejection(reason.WRONG_TYPE,
                                 f"channel {name!r}: expected a number, received {value!r}")
            if abs(value) > 3.4e38 or not math.isfinite(value):  # huge ints: no float()
                # Python's json accepts NaN and Infinity; float32 cannot hold beyond 3.4e38.
                return Rejection(reason.NON_FINITE, f"channel {name!r}: expected a finite "
                                                    f"number, received {value!r}")
            row[index] = value
        return stream, ts_ms, row
