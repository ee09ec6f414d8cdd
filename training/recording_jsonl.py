"""The JSON lines reader: flat objects or the Kafka message shape, one per line.

Internal to :func:`training.recordings.read_recording`, which documents the format.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from training.recording_parsing import (
    FLUSH_ROWS,
    FileData,
    JsonTextError,
    Part,
    Source,
    load_json,
    parse_cell,
    parse_timestamps,
    report_undecodable,
    show,
)
from training.recording_series import RESERVED_NAMES

_JSON_EXPECTED = ('{"stream": ..., "ts": ..., "values": {"<channel>": number, ...}} or '
                  '{"stream": ..., "ts": ..., "<channel>": number, ...}, optionally "label"')


@dataclass(frozen=True)
class _JsonSchema:
    line: int
    channels: tuple[str, ...]
    has_labels: bool
    channel_set: frozenset[str]
    # Key sets of well-formed objects, checked first for speed: {timestamp key: keys}.
    nested_keys: dict[str, frozenset[str]]
    flat_keys: dict[str, frozenset[str]]


def _json_schema(source: Source, record: dict, line: int) -> _JsonSchema | None:
    values = record.get("values")
    if isinstance(values, dict):
        channels = tuple(values)
    else:
        channels = tuple(key for key in record if key not in RESERVED_NAMES)
    received = f"received keys {', '.join(map(repr, record)) or 'none'}"
    if not channels:
        source.problem(line, None, f"no channel keys (expected {_JSON_EXPECTED}, {received})")
        return None
    for name in channels:
        if not name or name in RESERVED_NAMES:
            source.problem(line, f"key 'values.{name}'",
                           f"cannot be a channel name (expected {_JSON_EXPECTED}, {received})")
            return None
    label = {"label"} if "label" in record else set()
    return _JsonSchema(
        line, channels, "label" in record, frozenset(channels),
        {key: frozenset({"stream", key, "values"} | label) for key in ("ts", "timestamp")},
        {key: frozenset({"stream", key, *channels} | label) for key in ("ts", "timestamp")})


def _fast_json_record(schema: _JsonSchema, record: dict, line: int,
                      buckets: dict[str, _JsonBucket]) -> bool:
    """Add a well-formed object to its bucket without building any message; False if it
    needs the full validation of _json_record (which then reports what is wrong)."""
    keys = record.keys()
    for timestamp_key in ("ts", "timestamp"):
        if keys == schema.nested_keys[timestamp_key]:
            channel_values = record["values"]
            if type(channel_values) is not dict or channel_values.keys() != schema.channel_set:
                return False
            break
        if keys == schema.flat_keys[timestamp_key]:
            channel_values = record
            break
    else:
        return False
    stream = record["stream"]
    if type(stream) is not str or not stream or stream != stream.strip():
        return False
    label = False
    if schema.has_labels:
        label = record["label"]
        if type(label) not in (int, bool) or label not in (0, 1):
            return False
    row = []
    for name in schema.channels:
        value = channel_values[name]
        kind = type(value)
        if kind is float:
            if value - value != 0.0 and value == value:  # infinite
                return False
        elif kind is int:
            if abs(value) > 2**1023:
                return False
            value = float(value)
        elif value is None:
            value = math.nan
        else:
            return False
        row.append(value)
    _bucket(buckets, stream, schema).add(line, record[timestamp_key], timestamp_key, row,
                                         bool(label))
    return True


def _json_value(value: object) -> float | None:
    """A JSON value as a float, NaN when missing; None when it is not a usable number."""
    if value is None:
        return math.nan
    if type(value) is bool:
        return None
    if isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:
            return None
    elif isinstance(value, str):
        number = parse_cell(value)
        if number is None:
            return None
    else:
        return None
    return None if math.isinf(number) else number


def _bucket(buckets: dict[str, _JsonBucket], stream: str, schema: _JsonSchema) -> _JsonBucket:
    bucket = buckets.get(stream)
    if bucket is None:
        bucket = buckets[stream] = _JsonBucket(len(schema.channels))
    return bucket


class _JsonBucket:
    def __init__(self, channels: int) -> None:
        self.lines: list[int] = []
        self.timestamps: list[object] = []
        self.timestamp_keys: list[str] = []
        self.values: list[list[float]] = []
        self.labels: list[bool] = []
        self.bad = np.zeros(channels, dtype=bool)

    def add(self, line: int, timestamp: object, timestamp_key: str, row: list[float],
            label: bool) -> None:
        self.lines.append(line)
        self.timestamps.append(timestamp)
        self.timestamp_keys.append(timestamp_key)
        self.values.append(row)
        self.labels.append(label)

    def part(self, source: Source, has_labels: bool) -> Part:
        where = [f"key {key!r}" for key in self.timestamp_keys]
        timestamps, ok = parse_timestamps(source, self.timestamps, self.lines, where)
        values = np.array(self.values, dtype=np.float64).reshape(len(self.lines), -1)
        labels = np.array(self.labels, dtype=bool) if has_labels else None
        line_array = np.array(self.lines, dtype=np.int64)
        if not ok.all():
            line_array, timestamps, values = line_array[ok], timestamps[ok], values[ok]
            labels = None if labels is None else labels[ok]
        return Part(line_array, timestamps, values, labels, self.bad)


def read_jsonl(source: Source) -> FileData | None:
    schema: _JsonSchema | None = None
    data: FileData | None = None
    buckets: dict[str, _JsonBucket] = {}
    buffered = 0
    seen_text = False

    def flush() -> None:
        assert data is not None
        for key, bucket in buckets.items():
            data.parts.setdefault(key, []).append(bucket.part(source, data.has_labels))
        buckets.clear()

    try:
        with open(source.path, encoding="utf-8-sig") as handle:
            for number, text in enumerate(handle, 1):
                if not text.strip():
                    continue
                seen_text = True
                try:
                    record = load_json(text)
                except JsonTextError as error:
                    at = "" if error.column is None else f" at column {error.column}"
                    source.problem(number, None, f"invalid JSON: {error.reason}{at} (expected "
                                                 f"one JSON object per line, received "
                                                 f"{show(text.strip())})")
                    continue
                if not isinstance(record, dict):
                    source.problem(number, None, f"not a JSON object (expected "
                                                 f"{_JSON_EXPECTED}, received "
                                                 f"{show(record)})")
                    continue
                if schema is None:
                    schema = _json_schema(source, record, number)
                    if schema is None:
                        return None
                    data = FileData(source, schema.channels, schema.has_labels, "key",
                                    "ts" if "ts" in record else "timestamp",
                                    isinstance(record.get("values"), dict), kind="jsonl")
                if (_fast_json_record(schema, record, number, buckets)
                        or _json_record(source, schema, record, number, buckets)):
                    buffered += 1
                    if buffered >= FLUSH_ROWS:
                        flush()
                        buffered = 0
            if data is not None:
                flush()
    except UnicodeDecodeError:
        report_undecodable(source)
        return None
    except OSError as exc:
        source.problem(None, None, f"cannot read the file ({exc.strerror or exc})")
        return None
    if not seen_text:
        source.problem(None, None, "empty file (expected one JSON object per line, "
                                   "received no text)")
    return data


def _json_record(source: Source, schema: _JsonSchema, record: dict, line: int,
                 buckets: dict[str, _JsonBucket]) -> bool:
    """Validate one JSON object and add it to its stream's bucket; False if it was dropped."""
    before = source.problems.total
    expected_keys = ["stream", "ts", *schema.channels] + (["label"] if schema.has_labels else [])
    received = f"received keys {', '.join(map(repr, record))}"

    def missing(key: str) -> None:
        source.problem(line, None, f"missing key {key!r} (expected the keys of line "
                                   f"{schema.line}: {', '.join(expected_keys)}; {received})")

    stream = record.get("stream")
    if "stream" not in record:
        missing("stream")
    elif not isinstance(stream, str) or not stream.strip():
        source.problem(line, "key 'stream'",
                       f"expected a non-empty string, received {show(stream)}")
    timestamp_key = "ts" if "ts" in record else "timestamp"
    if "ts" in record and "timestamp" in record:
        source.problem(line, None, "both 'ts' and 'timestamp' (expected one of them, "
                                   "received both)")
    elif timestamp_key not in record:
        missing("ts")
    dropped = source.problems.total > before

    label = False
    if schema.has_labels:
        if "label" not in record:
            missing("label")
        else:
            value = record["label"]
            if type(value) not in (int, bool) or value not in (0, 1):
                source.problem(line, "key 'label'", f"not a label (expected 0 or 1, 1 meaning "
                                                    f"anomalous, received {show(value)})")
            else:
                label = bool(value)

    allowed = {"stream", "ts", "timestamp"} | ({"label"} if schema.has_labels else set())
    if "values" in record:
        channel_values = record["values"]
        if not isinstance(channel_values, dict):
            source.problem(line, "key 'values'", f"expected an object of channel values, "
                                                 f"received {show(channel_values)}")
            return False
        prefix = "values."
        extra = [key for key in record if key not in allowed and key != "values"]
        extra += [prefix + key for key in channel_values if key not in schema.channel_set]
    else:
        prefix, channel_values = "", record
        extra = [key for key in record if key not in allowed and key not in schema.channel_set]
    for key in extra:
        source.problem(line, f"key {key!r}",
                       f"unknown key (expected only the keys of line {schema.line}: "
                       f"{', '.join(expected_keys)}; {received})")

    row: list[float] = []
    bad_channels: list[int] = []
    for j, name in enumerate(schema.channels):
        if name not in channel_values:
            missing(prefix + name)
            bad_channels.append(j)
            row.append(math.nan)
            continue
        raw = channel_values[name]
        value = _json_value(raw)
        if value is None:
            source.problem(line, f"key {prefix + name!r}",
                           f"not a number (expected a finite JSON number, or null for a "
                           f"missing value, received {show(raw)})")
            bad_channels.append(j)
            value = math.nan
        row.append(value)
    if dropped:
        return False
    bucket = _bucket(buckets, stream.strip(), schema)
    bucket.add(line, record[timestamp_key], timestamp_key, row, label)
    if bad_channels:
        bucket.bad[bad_channels] = True
    return True

