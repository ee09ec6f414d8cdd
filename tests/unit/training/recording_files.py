"""Recorded-data files written for the recording tests, and the errors reading them raises."""

from __future__ import annotations

from pathlib import Path

import pytest

from detector.readings import format_timestamp_ms, parse_timestamp_ms
from training.recordings import RecordingError, read_recording

T0 = parse_timestamp_ms("2024-03-01T00:00:00Z")
MINUTE = 60_000


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def iso(minutes: int) -> str:
    return format_timestamp_ms(T0 + minutes * MINUTE)


def problems_of(paths, **kwargs) -> RecordingError:
    with pytest.raises(RecordingError) as info:
        read_recording(paths, **kwargs)
    return info.value
