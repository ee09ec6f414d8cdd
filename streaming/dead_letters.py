"""Dead letters: a rejected record with why and where from, in a record that always fits.

A dead letter carries the rejected record's key, value and headers, then headers naming the
reason, a detail, and the source topic, partition and offset. The dead-letter topic takes
records up to its ``max.message.bytes`` (the broker's ``message.max.bytes``, about 1 MiB,
unless set on the topic), while the readings topic may take larger ones, and an
``oversized`` reading is large by definition: a dead letter carrying all of it plus ~200
bytes of headers can be refused, and a refused record used to stop the worker, on the same
reading after every restart. So every dead letter is kept within a byte budget below the
topic's limit. When the whole record would not fit, the value is cut to its first bytes
(header ``cellwatch.truncated`` says what was cut, ``cellwatch.original.bytes`` the value's
size); if that is not enough the original headers are dropped too, and last the key is cut.
A dead letter that the broker still refuses is dropped and counted, never retried (see
:meth:`streaming.ports.RecordSink.send`, ``best_effort``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from streaming.messages import Rejection
from streaming.ports import SourceRecord

DETAIL_LIMIT = 1000
# The broker's default message.max.bytes: the dead-letter topic's limit unless told otherwise.
DEFAULT_TOPIC_MAX_BYTES = 1_048_588
# Room for the record batch header (61 bytes), the record's own framing and the varints of
# its headers, with a wide margin: the estimate below counts payload bytes only.
_FRAMING_BYTES = 1024
_PER_HEADER_BYTES = 10


def dead_letter_headers(record: SourceRecord, rejection: Rejection) -> list[tuple[str, bytes]]:
    """The original headers, then why and where from."""
    return [*(record.headers or ()), *_origin_headers(record, rejection)]


def _origin_headers(record: SourceRecord, rejection: Rejection) -> list[tuple[str, bytes]]:
    return [("cellwatch.reason", str(rejection.reason).encode()),
            ("cellwatch.detail", rejection.detail[:DETAIL_LIMIT].encode("utf-8", "replace")),
            ("cellwatch.source.topic", record.topic.encode()),
            ("cellwatch.source.partition", str(record.partition).encode()),
            ("cellwatch.source.offset", str(record.offset).encode())]


def _headers_bytes(headers: Sequence[tuple[str, bytes]]) -> int:
    return sum(len(name.encode()) + len(value or b"") + _PER_HEADER_BYTES
               for name, value in headers)


@dataclasses.dataclass(frozen=True)
class DeadLetter:
    """The record to send to the dead-letter topic."""

    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    truncated: bool


def dead_letter(record: SourceRecord, rejection: Rejection, topic_max_bytes: int
                ) -> DeadLetter:
    """The dead letter of ``record``, at most ``topic_max_bytes`` on the wire (unless the
    topic takes less than the reason and origin headers alone: then it carries nothing else,
    and the broker may still refuse it)."""
    key, value = record.key, record.value
    original = list(record.headers or ())
    origin = _origin_headers(record, rejection)
    fixed = _headers_bytes(origin) + 2 * _headers_bytes([("cellwatch.truncated", b"value,")])
    budget = max(topic_max_bytes - _FRAMING_BYTES, fixed)
    size = len(key or b"") + len(value or b"") + _headers_bytes(original) + fixed
    if size <= budget:
        return DeadLetter(key, value, [*original, *origin], truncated=False)
    cut: list[str] = []
    notes = [("cellwatch.original.bytes", str(len(value or b"")).encode())]
    room = budget - fixed - _headers_bytes(notes) - len(key or b"") - _headers_bytes(original)
    if value is not None:
        cut.append("value")
        value = value[:max(0, room)]
        room -= len(value)
    if room < 0 and original:
        cut.append("headers")
        notes.append(("cellwatch.original.headers", str(len(original)).encode()))
        room += _headers_bytes(original) - _headers_bytes(notes[-1:])
        original = []
    if room < 0 and key:
        cut.append("key")
        key = key[:max(0, len(key) + room)]
    headers = [*original, *origin, ("cellwatch.truncated", ",".join(cut).encode()), *notes]
    return DeadLetter(key, value, headers, truncated=True)


@dataclasses.dataclass(frozen=True, slots=True)
class DeadLetterOrigin:
    """What a dead letter's headers say: why the record was rejected and where it was read,
    and what was cut to make it fit (empty when nothing was)."""

    reason: str
    detail: str
    topic: str
    partition: int
    offset: int
    truncated: tuple[str, ...] = ()
    original_bytes: int | None = None  # the value's size before it was cut


def read_dead_letter_headers(headers: Sequence[tuple[str, bytes]]) -> DeadLetterOrigin:
    """The cellwatch headers of a dead letter (its original headers are ignored); KeyError
    naming the first one missing when the record is not a cellwatch dead letter."""
    found = {name: value for name, value in headers if name.startswith("cellwatch.")}
    try:
        truncated = found.get("cellwatch.truncated", b"").decode()
        original = found.get("cellwatch.original.bytes")
        return DeadLetterOrigin(
            reason=found["cellwatch.reason"].decode(),
            detail=found["cellwatch.detail"].decode("utf-8", "replace"),
            topic=found["cellwatch.source.topic"].decode(),
            partition=int(found["cellwatch.source.partition"]),
            offset=int(found["cellwatch.source.offset"]),
            truncated=tuple(truncated.split(",")) if truncated else (),
            original_bytes=None if original is None else int(original))
    except KeyError as missing:
        raise KeyError(f"not a cellwatch dead letter: header {missing} missing") from None
