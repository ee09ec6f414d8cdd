"""The fault-injection suite's load and its dead-letter check (``test_fault_injection_kafka.py``):
a seeded stream of good readings with bad messages of every reason mixed in, and how the
dead letters a run produced differ from one per bad message. Pure: no broker needed."""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from tests.integration.streaming_support import CHANNELS, reading_bytes, readings

# A reading time in 2100: far beyond the worker's clock plus worker.max_future_seconds.
FAR_FUTURE_MS = 4_102_444_800_000


@dataclasses.dataclass(frozen=True)
class Message:
    """One message of the load: a good reading (``reading`` is its stream and ts) or a bad
    one (``reason`` is the dead-letter reason it must get)."""

    key: bytes | None
    value: bytes | None
    reading: tuple[str, int] | None = None
    reason: str | None = None


# --- the seeded load --------------------------------------------------------------------------


def bad_message(kind: str, stream: str, ts: int, last_ts: int, values: list[float],
                rng: np.random.Generator) -> Message:
    """A message of ``stream`` that the worker must reject as ``kind``; ``ts`` is a time no
    good reading of the stream has, ``last_ts`` the stream's last good reading's time (the
    message is produced after that reading, so the engine's order checks apply)."""
    key = stream.encode()
    good = json.loads(reading_bytes(stream, ts, values))

    def encoded(**changes: object) -> bytes:
        return json.dumps({**good, **changes}).encode()

    if kind == "invalid_json":
        value = reading_bytes(stream, ts, values)[:-int(rng.integers(1, 20))]
    elif kind == "invalid_utf8":
        value = b"\xff\xfe" + reading_bytes(stream, ts, values)
    elif kind == "missing_field":
        value = json.dumps({k: v for k, v in good.items() if k != "values"}).encode()
    elif kind == "tombstone":  # no value at all: also missing_field
        value = None
    elif kind == "wrong_type":
        value = encoded(ts="not a time") if rng.random() < 0.5 else json.dumps(
            [stream, ts]).encode()
    elif kind == "non_finite":
        value = encoded(values={**good["values"], CHANNELS[1]: float("nan")})
    elif kind == "unknown_channel":
        value = encoded(values={**good["values"], "humidity": 0.5})
    elif kind == "missing_channel":
        value = encoded(values={c: v for c, v in good["values"].items() if c != CHANNELS[2]})
    elif kind == "oversized":  # more than worker.max_message_bytes (65536)
        value = encoded(pad="x" * 70_000)
    elif kind == "out_of_order":
        value = reading_bytes(stream, last_ts - 1, values)
    elif kind == "duplicate":
        value = reading_bytes(stream, last_ts, [v + 1.0 for v in values])
    elif kind == "future":
        value = reading_bytes(stream, FAR_FUTURE_MS, values)
    elif kind == "implausible_ts":  # epoch seconds
        value = reading_bytes(stream, ts // 1000, values)
    elif kind == "out_of_range":
        value = reading_bytes(stream, ts, [values[0], 1e30, values[2]])
    elif kind == "key_mismatch":
        key = None if rng.random() < 0.5 else b"another-stream"
        value = reading_bytes(stream, ts, values)
    elif kind == "stream_id_too_long":
        long_id = stream + "-" + "y" * 300
        key, value = long_id.encode(), reading_bytes(long_id, ts, values)
    else:
        raise ValueError(kind)
    reason = "missing_field" if kind == "tombstone" else kind
    return Message(key, value, reason=reason)


BAD_KINDS = ("invalid_json", "invalid_utf8", "missing_field", "tombstone", "wrong_type",
             "non_finite", "unknown_channel", "missing_channel", "oversized", "out_of_order",
             "duplicate", "future", "implausible_ts", "out_of_range", "key_mismatch",
             "stream_id_too_long")


def seeded_load(seed: int, streams: int, per_stream: int
                ) -> tuple[list[tuple[str, int, list[float]]], list[Message]]:
    """The good readings (in order, per stream) and every message to produce: the good
    readings with about one bad message in twenty between them, each after its stream's
    first good reading."""
    rng = np.random.default_rng(seed)
    rows = readings(streams=streams, per_stream=per_stream, seed=seed)
    last_ts: dict[str, int] = {}
    messages: list[Message] = []
    for stream, ts, values in rows:
        if stream in last_ts and rng.random() < 0.05:
            kind = BAD_KINDS[int(rng.integers(len(BAD_KINDS)))]
            messages.append(bad_message(kind, stream, ts - 1, last_ts[stream], values, rng))
        messages.append(Message(stream.encode(), reading_bytes(stream, ts, values),
                                reading=(stream, ts)))
        last_ts[stream] = ts
    return rows, messages


# --- checks -----------------------------------------------------------------------------------


def dead_letter_discrepancies(records, sent: dict[tuple[int, int], Message], topic: str,
                              exactly_once: bool) -> list[str]:
    """How the dead letters differ from one per bad message (``sent`` maps each produced
    message's partition and offset to it): a bad message without one, or with the wrong
    reason, key or bytes, copies that differ, more than one when ``exactly_once``, or a dead
    letter of a good reading or of no message produced."""
    letters: dict[tuple[int, int], list] = {}
    found: list[str] = []
    for record in records:
        headers = dict(record.headers)
        if headers.get("cellwatch.source.topic") != topic.encode():
            found.append(f"dead letter from another topic: {headers}")
            continue
        origin = (int(headers["cellwatch.source.partition"]),
                  int(headers["cellwatch.source.offset"]))
        letters.setdefault(origin, []).append(record)
    for origin, message in sorted(sent.items()):
        copies = letters.pop(origin, [])
        where = f"partition {origin[0]} offset {origin[1]}"
        if message.reason is None:
            if copies:
                reasons = [dict(r.headers)["cellwatch.reason"].decode() for r in copies]
                found.append(f"{where}: good reading {message.reading} dead-lettered {reasons}")
            continue
        if not copies:
            found.append(f"{where}: {message.reason} message never dead-lettered")
            continue
        if exactly_once and len(copies) > 1:
            found.append(f"{where}: {len(copies)} dead letters for one {message.reason} message")
        distinct = {(r.key, r.value, tuple(r.headers)) for r in copies}
        if len(distinct) > 1:
            found.append(f"{where}: {len(distinct)} different dead letters for one message")
        for key, value, headers in distinct:
            reason = dict(headers)["cellwatch.reason"].decode()
            if reason != message.reason:
                found.append(f"{where}: reason {reason!r}, expected {message.reason!r}: "
                             f"{dict(headers).get('cellwatch.detail')!r}")
            if (key, value) != (message.key, message.value):
                found.append(f"{where}: dead letter carries other bytes than the message")
    found += [f"partition {p} offset {o}: dead letter of no message produced"
              for p, o in sorted(letters)]
    return found


def duplicates(records, key) -> int:
    return len(records) - len({key(record) for record in records})
