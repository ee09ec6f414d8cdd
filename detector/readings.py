"""What a reading looks like: its timestamp, parsed the same way for files and for Kafka,
and its message shape, written the same way by everything that writes readings.

Timestamps accepted: integer epoch milliseconds, or ISO 8601 / RFC 3339 text such as
``2024-01-31T12:00:00Z``, ``2024-01-31 12:00:00.250+01:00`` or ``2014-04-01 00:00:00``
(no offset means UTC, as in the NAB corpus). Integer text (``"1706702400000"``) is
epoch milliseconds too.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Sequence

TIMESTAMP_FORMATS = "epoch milliseconds, or ISO 8601 / RFC 3339 text like 2024-01-31T12:00:00Z"

# Epoch milliseconds this cellwatch accepts: 1970-01-01 up to 9999-12-31.
_MAX_MS = 253_402_300_799_999


def parse_timestamp_ms(value: object) -> int:
    """Epoch milliseconds of ``value``; raises ValueError saying what was expected."""
    if isinstance(value, bool):
        raise ValueError(f"expected {TIMESTAMP_FORMATS}, received {value!r}")
    if isinstance(value, int):
        ms = value
    elif isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            raise ValueError(
                f"expected {TIMESTAMP_FORMATS} (a whole number), received {value!r}")
        ms = int(value)
    elif isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            ms = int(text)
        else:
            try:
                parsed = dt.datetime.fromisoformat(text)
            except ValueError:
                raise ValueError(f"expected {TIMESTAMP_FORMATS}, received {value!r}") from None
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=dt.UTC)
            delta = parsed - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
            ms = (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
    else:
        raise ValueError(f"expected {TIMESTAMP_FORMATS}, received {value!r}")
    if not 0 <= ms <= _MAX_MS:
        raise ValueError(f"expected a time between 1970 and 9999, received {value!r}")
    return ms


def format_timestamp_ms(ms: int) -> str:
    """RFC 3339 text of epoch milliseconds, in UTC, to the millisecond."""
    moment = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(milliseconds=int(ms))
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _json_number(value: float | None) -> str:
    """A value as JSON: ``repr`` of the float (what ``json.dumps`` writes), ``null`` for a
    missing (None or NaN) or infinite one."""
    if value is None:
        return "null"
    value = float(value)
    return repr(value) if math.isfinite(value) else "null"


class ReadingMessageWriter:
    """Writes readings in the readings topic's message shape, the one shape every writer of
    readings uses (replay into Kafka, JSON Lines recordings, the benchmarks' producers)::

        {"stream":"pump-7","ts":1706702400000,"values":{"temperature":21.5,"pressure":1.01}}

    Compact JSON, ASCII (other characters escaped), channels in model order, values as
    Python's ``repr`` of the float; ``ts`` as given (epoch milliseconds, or RFC 3339 text
    such as recordings carry); a missing value (NaN) as ``null``, which only recordings may
    hold (the worker rejects it). ``label`` (0 or 1) follows ``values`` in labeled
    recordings. The worker's parser is :class:`streaming.messages.ReadingParser`.
    """

    def __init__(self, channels: Sequence[str]) -> None:
        self.channels = tuple(channels)
        self._names = [f"{json.dumps(name)}:" for name in self.channels]

    def text(self, stream: str, ts: int | str, values: Sequence[float],
             label: int | None = None) -> str:
        """The message as text; ValueError unless ``values`` has one value per channel."""
        if len(values) != len(self._names):
            raise ValueError(f"values: expected {len(self._names)} (one per channel "
                             f"{', '.join(self.channels)}), received {len(values)}")
        when = json.dumps(ts) if isinstance(ts, str) else str(int(ts))
        body = ",".join([name + _json_number(value)
                         for name, value in zip(self._names, values, strict=True)])
        tail = "}" if label is None else f',"label":{int(label)}}}'
        return f'{{"stream":{json.dumps(stream)},"ts":{when},"values":{{{body}}}{tail}'

    def message(self, stream: str, ts_ms: int, values: Sequence[float]) -> bytes:
        """The Kafka message value (UTF-8) of a reading."""
        return self.text(stream, ts_ms, values).encode()


def reading_message(stream: str, ts_ms: int, values: Sequence[float],
                    channels: Sequence[str]) -> bytes:
    """One reading's Kafka message value (see :class:`ReadingMessageWriter`)."""
    return ReadingMessageWriter(channels).message(stream, ts_ms, values)
