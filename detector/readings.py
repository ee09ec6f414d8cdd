"""What a reading's timestamp may look like, parsed the same way for files and for Kafka.

Accepted: integer epoch milliseconds, or ISO 8601 / RFC 3339 text such as
``2024-01-31T12:00:00Z``, ``2024-01-31 12:00:00.250+01:00`` or ``2014-04-01 00:00:00``
(no offset means UTC, as in the NAB corpus). Integer text (``"1706702400000"``) is
epoch milliseconds too.
"""

from __future__ import annotations

import datetime as dt
import math

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
