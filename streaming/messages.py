"""The readings topic's message format: read (and validated) here, and why a message is rejected.

The topics' formats at the edge of the worker: readings here (the writer,
:class:`~detector.readings.ReadingMessageWriter`, lives in :mod:`detector.readings` because
``training`` writes readings too and may not import ``streaming``; it is re-exported here),
scores and anomaly episodes in :mod:`streaming.output_records`, dead letters and their
headers in :mod:`streaming.dead_letters`.

A reading is a JSON object, UTF-8, keyed by its stream id::

    {"stream": "pump-7", "ts": 1706702400000, "values": {"temperature": 21.5, "pressure": 1.01}}

``ts`` is epoch **milliseconds** (a JSON integer) or RFC 3339 text; ``values`` has one finite
number per channel of the model, no more and no fewer. The Kafka key is the stream id, UTF-8.
Anything else is rejected with one of the :class:`RejectReason` values and goes to the
dead-letter topic with the original bytes.

Checks a worker configures (the parser's defaults leave them off):

* ``earliest_ts_ms``: a time before it is ``implausible_ts``. The worker sets 10^11 ms
  (1973-03-03): epoch *seconds* of any date since 1973 fall before it, so a producer sending
  seconds is told so instead of having its readings read as January 1970.
* ``latest_ts_ms`` (per call, from the wall clock plus ``worker.max_future_seconds``): a
  later time is ``future``. A reading from year 9999 would otherwise become its stream's
  last time and every later reading would be ``out_of_order``.
* ``max_abs_value``: a channel value of larger magnitude is ``out_of_range`` (a value such as
  1e30 would poison the stream's state).
* ``max_stream_id_bytes``: a longer stream id (UTF-8) is ``stream_id_too_long``: ids are
  kept in memory per stream and sent with every output record.
* :meth:`ReadingParser.check_key`: a record whose Kafka key is not its stream id (null, or
  another stream's) is ``key_mismatch``. Streams are partitioned by key; a stream seen in
  two partitions would get a state, and a changelog record, in each.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
from collections.abc import Sequence

import numpy as np

from detector.readings import ReadingMessageWriter, parse_timestamp_ms, reading_message

__all__ = ["EARLIEST_TS_MS", "ReadingMessageWriter", "ReadingParser", "RejectReason",
           "Rejection", "reading_message"]


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
    FUTURE = "future"
    IMPLAUSIBLE_TS = "implausible_ts"
    OUT_OF_RANGE = "out_of_range"
    KEY_MISMATCH = "key_mismatch"
    STREAM_ID_TOO_LONG = "stream_id_too_long"

# Before 1973-03-03T09:46:40Z: where epoch seconds of any date since 1973 land if they are
# read as milliseconds.
EARLIEST_TS_MS = 100_000_000_000


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
        max_abs_value: larger channel magnitudes are ``out_of_range`` (None: no bound
            besides float32's).
        max_stream_id_bytes: longer stream ids are ``stream_id_too_long`` (None: no bound).
        earliest_ts_ms: earlier reading times are ``implausible_ts`` (None: no bound).
    """

    def __init__(self, channels: Sequence[str], max_message_bytes: int, *,
                 max_abs_value: float | None = None, max_stream_id_bytes: int | None = None,
                 earliest_ts_ms: int | None = None) -> None:
        self.channels = tuple(channels)
        self.max_message_bytes = max_message_bytes
        self.max_abs_value = math.inf if max_abs_value is None else max_abs_value
        self.max_stream_id_bytes = max_stream_id_bytes
        self.earliest_ts_ms = earliest_ts_ms
        self._channel_set = frozenset(self.channels)

    def check_key(self, key: bytes | None, parsed: tuple[str, int, np.ndarray]
                  ) -> tuple[str, int, np.ndarray] | Rejection:
        """``parsed`` if the record's Kafka ``key`` is its stream id, else ``key_mismatch``."""
        stream = parsed[0]
        if key is None or key != stream.encode():
            shown = "null" if key is None else repr(key[:100].decode("utf-8", "replace"))
            return Rejection(RejectReason.KEY_MISMATCH,
                             f"record key {shown} is not the stream id {stream[:100]!r}; "
                             f"key each reading by its stream id")
        return parsed

    def parse(self, raw: bytes | None, *, latest_ts_ms: int | None = None
              ) -> tuple[str, int, np.ndarray] | Rejection:
        """``(stream, ts_ms, values[F] float32)`` or the :class:`Rejection`; a reading
        later than ``latest_ts_ms`` is ``future``."""
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
        if "stream" not in message or "ts" not in message or "values" not in message:
            missing = [key for key in ("stream", "ts", "values") if key not in message]
            return Rejection(reason.MISSING_FIELD, f"missing field(s) {', '.join(missing)}; "
                                                   f"expected stream, ts and values")
        stream = message["stream"]
        if not isinstance(stream, str) or not stream:
            return Rejection(reason.WRONG_TYPE,
                             f"field stream: expected a non-empty string, received {stream!r}")
        try:
            stream_bytes = len(stream.encode("utf-8"))
        except UnicodeEncodeError:  # a lone surrogate escape such as "\ud800"
            return Rejection(reason.INVALID_UTF8,
                             f"field stream: {stream!r} has no UTF-8 form (lone surrogate)")
        if self.max_stream_id_bytes is not None and stream_bytes > self.max_stream_id_bytes:
            return Rejection(reason.STREAM_ID_TOO_LONG,
                             f"field stream: {stream_bytes} bytes (UTF-8), more than the "
                             f"{self.max_stream_id_bytes} allowed; starts {stream[:100]!r}")
        try:
            ts_ms = parse_timestamp_ms(message["ts"])
        except ValueError as error:
            return Rejection(reason.WRONG_TYPE, f"field ts: {error}")
        values = message["values"]
        if not isinstance(values, dict):
            return Rejection(reason.WRONG_TYPE, f"field values: expected an object of channel: "
                                                f"number, received {type(values).__name__}")
        # One set comparison for the usual message; the lists only to say what is wrong.
        if values.keys() != self._channel_set:
            unknown = [name for name in values if name not in self._channel_set]
            if unknown:
                return Rejection(reason.UNKNOWN_CHANNEL,
                                 f"unknown channel(s) {', '.join(map(repr, unknown))}; the "
                                 f"model has {', '.join(self.channels)}")
            absent = [name for name in self.channels if name not in values]
            return Rejection(reason.MISSING_CHANNEL, f"missing channel(s) {', '.join(absent)}")
        row = np.empty(len(self.channels), dtype=np.float32)
        for index, name in enumerate(self.channels):
            value = values[name]
            # JSON numbers are float or int; bool is an int to isinstance.
            if type(value) is not float and (
                    isinstance(value, bool) or not isinstance(value, int | float)):
                return Rejection(reason.WRONG_TYPE,
                                 f"channel {name!r}: expected a number, received {value!r}")
            magnitude = abs(value)
            if magnitude > 3.4e38 or not math.isfinite(value):  # huge ints: no float()
                # Python's json accepts NaN and Infinity; float32 cannot hold beyond 3.4e38.
                return Rejection(reason.NON_FINITE, f"channel {name!r}: expected a finite "
                                                    f"number, received {value!r}")
            if magnitude > self.max_abs_value:
                return Rejection(reason.OUT_OF_RANGE,
                                 f"channel {name!r}: {value!r} is beyond the allowed "
                                 f"magnitude {self.max_abs_value:g} (worker.max_abs_value)")
            row[index] = value
        # Time checks last: the message is otherwise good, so the detail is about time only.
        if self.earliest_ts_ms is not None and ts_ms < self.earliest_ts_ms:
            numeric = (isinstance(message["ts"], int | float)
                       or str(message["ts"]).strip().isdigit())
            unit = " (epoch seconds? ts is epoch milliseconds)" if numeric else ""
            return Rejection(reason.IMPLAUSIBLE_TS,
                             f"field ts: {message['ts']!r} is before 1973-03-03, the earliest "
                             f"reading time accepted{unit}")
        if latest_ts_ms is not None and ts_ms > latest_ts_ms:
            return Rejection(reason.FUTURE,
                             f"field ts: {message['ts']!r} ({ts_ms} ms) is ahead of the "
                             f"worker's clock by more than worker.max_future_seconds")
        return stream, ts_ms, row
