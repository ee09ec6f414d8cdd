"""Labeled synthetic recordings: seasonal multichannel sensor streams with injected anomalies.

Each stream has ``channels`` channels sampled every ``interval_s`` seconds. Per channel the
stream's generator draws a noise sigma ``s`` (10^U(-1, 2), so channels differ in units) and,
in units of ``s``: a level of 40-80 s, a daily sinusoid of amplitude 3-8 s, a weekly one of
1-3 s (random phases), a linear trend that moves 2 s at most over the stream, and Gaussian
noise of sigma ``s``. The channels of a stream are correlated: each seasonal component mixes
a factor shared by the stream's channels (weight 0.8-0.95) with the channel's own sinusoid.

Anomalies (``kinds``; none in the first 15% of a stream, its learning period; at least 20
readings apart) are sized so that each is plain to see in a plot at the default settings:

``spike``           1-3 consecutive readings of one channel pushed 8-12 s up or down.
``level_shift``     one channel stepped 5-8 s up or down for 60-240 readings.
``drift``           one channel ramped linearly, over 120-360 readings, to 8-12 s away.
``stuck``           one channel repeats its last good value exactly for 40-160 readings.
``variance_burst``  one channel's noise grows to 5-8 s for 40-160 readings.
``dropout``         every channel reads exactly 0 for 10-60 readings (the level is 40 s or
                    more, so 0 is at least ~20 s below the normal signal).

``anomaly_rate`` is the expected number of anomalies per 10,000 readings of a stream (the
count is Poisson; kinds take turns in a random order so a stream with at least as many
anomalies as kinds has every kind). Anomalies that do not fit a short stream are dropped.
The recording's labels are True exactly on the readings an anomaly changed, and each
:class:`AnomalyLabel` spans its first to its last affected reading (both inclusive).

Reproducible: the same arguments give bit-identical output. Stream ``i`` draws from
``SeedSequence(seed).spawn(...)[i]`` (its signal and its anomalies from that sequence's two
children), so it does not depend on how many streams are generated, and its signal does not
depend on the anomaly settings: ``generate(..., anomaly_rate=0)`` gives the clean signal.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from detector.readings import format_timestamp_ms, parse_timestamp_ms
from training.recordings import Recording, RecordingError, StreamSeries

ALL_KINDS = ("spike", "level_shift", "drift", "stuck", "variance_burst", "dropout")
DEFAULT_START_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
LEARNING_FRACTION = 0.15
MIN_SEPARATION = 20  # readings between two anomalies

# Duration in readings (inclusive bounds) and size in noise sigmas of each kind.
DURATIONS = {
    "spike": (1, 3),
    "level_shift": (60, 240),
    "drift": (120, 360),
    "stuck": (40, 160),
    "variance_burst": (40, 160),
    "dropout": (10, 60),
}
SPIKE_SIGMAS = (8.0, 12.0)
LEVEL_SHIFT_SIGMAS = (5.0, 8.0)
DRIFT_SIGMAS = (8.0, 12.0)
BURST_SIGMAS = (5.0, 8.0)

_DAY_S = 86_400.0
_WEEK_S = 7 * _DAY_S


@dataclass(frozen=True)
class AnomalyLabel:
    """One injected anomaly: its stream, kind, first and last affected reading's time
    (epoch ms, both inclusive) and the channels it changed."""

    stream: str
    kind: str
    start_ms: int
    end_ms: int
    channels: tuple[str, ...]

    def covers(self, timestamps_ms: np.ndarray) -> np.ndarray:
        """Which of ``timestamps_ms`` fall inside this anomaly's window."""
        timestamps = np.asarray(timestamps_ms)
        return (timestamps >= self.start_ms) & (timestamps <= self.end_ms)


def stream_name(index: int) -> str:
    """The id of the ``index``-th synthetic stream."""
    return f"synth-{index:03d}"


def generate(
    streams: int = 10,
    channels: int | Sequence[str] = 4,
    length: int = 10_000,
    interval_s: float = 60.0,
    start_ms: int = DEFAULT_START_MS,
    seed: int = 0,
    anomaly_rate: float = 5.0,
    kinds: Sequence[str] = ALL_KINDS,
) -> tuple[Recording, list[AnomalyLabel]]:
    """A labeled synthetic recording and its anomaly windows; see the module docstring.

    ``channels`` is a count (named ``ch0``, ``ch1``, ...) or the names.
    """
    names = _channel_names(channels)
    kinds = tuple(kinds)
    unknown = [kind for kind in kinds if kind not in ALL_KINDS]
    if unknown:
        raise ValueError(f"kinds: expected some of {', '.join(ALL_KINDS)}, received {unknown}")
    if isinstance(streams, bool) or not isinstance(streams, int) or streams < 1:
        raise ValueError(f"streams: expected a whole number >= 1, received {streams!r}")
    if isinstance(length, bool) or not isinstance(length, int) or length < 2:
        raise ValueError(f"length: expected a whole number >= 2, received {length!r}")
    interval_ms = round(interval_s * 1000) if math.isfinite(interval_s) else 0
    if interval_ms < 1:
        raise ValueError(f"interval_s: expected at least 0.001 seconds, received {interval_s!r}")
    if not (math.isfinite(anomaly_rate) and anomaly_rate >= 0):
        raise ValueError(f"anomaly_rate: expected a number >= 0, received {anomaly_rate!r}")
    timestamps = int(start_ms) + np.arange(length, dtype=np.int64) * interval_ms
    parse_timestamp_ms(int(timestamps[-1]))  # raises if the range leaves 1970..9999

    series: list[StreamSeries] = []
    labels: list[AnomalyLabel] = []
    for index in range(streams):
        stream = stream_name(index)
        signal_seed, anomaly_seed = np.random.SeedSequence(seed, spawn_key=(index,)).spawn(2)
        values, sigma = _signal(np.random.default_rng(signal_seed), timestamps, len(names))
        flags = np.zeros(length, dtype=bool)
        rng = np.random.default_rng(anomaly_seed)
        for kind, start, stop, affected in _inject(rng, values, sigma, kinds, anomaly_rate):
            flags[start:stop] = True
            labels.append(AnomalyLabel(stream, kind, int(timestamps[start]),
                                       int(timestamps[stop - 1]),
                                       tuple(names[c] for c in affected)))
        series.append(StreamSeries(stream, timestamps, values, flags))
    return Recording.from_series(names, series), labels


def _channel_names(channels: int | Sequence[str]) -> tuple[str, ...]:
    if isinstance(channels, int) and not isinstance(channels, bool):
        if channels < 1:
            raise ValueError(f"channels: expected a count >= 1 or names, received {channels}")
        return tuple(f"ch{j}" for j in range(channels))
    if isinstance(channels, str):
        raise ValueError(f"channels: expected a count or a list of names, received {channels!r}")
    return tuple(channels)


def _signal(rng: np.random.Generator, timestamps: np.ndarray,
            channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Seasonal, trending, correlated, noisy values [n, channels] and each channel's sigma."""
    sigma = 10.0 ** rng.uniform(-1.0, 2.0, channels)
    level = rng.uniform(40.0, 80.0, channels) * sigma
    daily_amplitude = rng.uniform(3.0, 8.0, channels) * sigma
    weekly_amplitude = rng.uniform(1.0, 3.0, channels) * sigma
    trend_total = rng.uniform(-2.0, 2.0, channels) * sigma
    coupling = rng.uniform(0.8, 0.95, channels)
    shared_phase = rng.uniform(0.0, 2 * np.pi, 2)  # daily, weekly
    own_phase = rng.uniform(0.0, 2 * np.pi, (2, channels))
    noise = rng.standard_normal((len(timestamps), channels))

    seconds = (timestamps / 1000.0)[:, None]
    own_weight = np.sqrt(1.0 - coupling**2)

    def seasonal(period_s: float, which: int) -> np.ndarray:
        angle = 2 * np.pi * seconds / period_s
        return (coupling * np.sin(angle + shared_phase[which])
                + own_weight * np.sin(angle + own_phase[which]))

    daily, weekly = seasonal(_DAY_S, 0), seasonal(_WEEK_S, 1)
    trend = np.linspace(0.0, 1.0, len(timestamps))[:, None] * trend_total
    values = (level + daily_amplitude * daily + weekly_amplitude * weekly + trend
              + noise * sigma)
    return values, sigma


def _inject(rng: np.random.Generator, values: np.ndarray, sigma: np.ndarray,
            kinds: tuple[str, ...], rate: float) -> list[tuple[str, int, int, tuple[int, ...]]]:
    """Change ``values`` in place; returns (kind, start, stop, channels) per anomaly."""
    length, channels = values.shape
    count = int(rng.poisson(rate * length / 10_000)) if kinds and rate > 0 else 0
    if count == 0:
        return []
    turns = math.ceil(count / len(kinds))
    order = np.concatenate([rng.permutation(len(kinds)) for _ in range(turns)])[:count]
    chosen = [kinds[k] for k in order]
    durations = [int(rng.integers(DURATIONS[kind][0], DURATIONS[kind][1] + 1))
                 for kind in chosen]
    learning = math.ceil(LEARNING_FRACTION * length)
    available = length - learning
    fitting = []  # keep, in order, the anomalies that still fit
    used = 0
    for kind, duration in zip(chosen, durations, strict=True):
        if used + duration + MIN_SEPARATION <= available:
            fitting.append((kind, duration))
            used += duration + MIN_SEPARATION
    if not fitting:
        return []
    chosen, durations = [kind for kind, _ in fitting], [duration for _, duration in fitting]
    slack = available - sum(durations) - MIN_SEPARATION * len(chosen)
    offsets = np.sort(rng.integers(0, slack + 1, len(chosen)))
    before = np.concatenate([[0], np.cumsum(durations)[:-1]])
    starts = learning + offsets + before + MIN_SEPARATION * np.arange(len(chosen))

    injected = []
    for kind, start, duration in zip(chosen, starts.tolist(), durations, strict=True):
        stop = start + duration
        channel = int(rng.integers(channels))
        sign = 1.0 if rng.random() < 0.5 else -1.0
        scale = sigma[channel]
        affected: tuple[int, ...] = (channel,)
        if kind == "spike":
            values[start:stop, channel] += sign * rng.uniform(*SPIKE_SIGMAS, duration) * scale
        elif kind == "level_shift":
            values[start:stop, channel] += sign * rng.uniform(*LEVEL_SHIFT_SIGMAS) * scale
        elif kind == "drift":
            ramp = np.arange(1, duration + 1) / duration
            values[start:stop, channel] += sign * rng.uniform(*DRIFT_SIGMAS) * scale * ramp
        elif kind == "stuck":
            values[start:stop, channel] = values[start - 1, channel]
        elif kind == "variance_burst":
            extra = math.sqrt(rng.uniform(*BURST_SIGMAS) ** 2 - 1.0)
            values[start:stop, channel] += rng.standard_normal(duration) * extra * scale
        else:  # dropout
            values[start:stop, :] = 0.0
            affected = tuple(range(channels))
        injected.append((kind, start, stop, affected))
    return injected


def write_labels(labels: Sequence[AnomalyLabel], path: str | os.PathLike[str]) -> None:
    """Write anomaly windows as a JSON list of objects
    ``{"stream", "kind", "start", "end", "channels"}`` with RFC 3339 UTC times."""
    items = [{"stream": label.stream, "kind": label.kind,
              "start": format_timestamp_ms(label.start_ms),
              "end": format_timestamp_ms(label.end_ms),
              "channels": list(label.channels)} for label in labels]
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(items, handle, indent=1)
        handle.write("\n")


def read_labels(path: str | os.PathLike[str]) -> list[AnomalyLabel]:
    """Anomaly windows written by :func:`write_labels` (times may also be epoch ms).

    Raises RecordingError naming each item and key that is wrong.
    """
    name = str(path)
    try:
        with open(path, encoding="utf-8") as handle:
            items = json.load(handle)
    except json.JSONDecodeError as exc:
        raise RecordingError([f"{name}:{exc.lineno}: invalid JSON: {exc.msg} at column "
                              f"{exc.colno} (expected a JSON list of anomaly objects)"]) from None
    if not isinstance(items, list):
        raise RecordingError([f"{name}: expected a JSON list of anomaly objects, received "
                              f"{type(items).__name__}"])
    problems: list[str] = []
    labels: list[AnomalyLabel] = []
    for number, item in enumerate(items, 1):
        where = f"{name}: item {number}"
        if not isinstance(item, dict):
            problems.append(f"{where}: expected an object, received {item!r:.60}")
            continue
        missing = [key for key in ("stream", "kind", "start", "end", "channels")
                   if key not in item]
        if missing:
            problems.append(f"{where}: missing keys {missing} (expected stream, kind, start, "
                            f"end, channels; received {list(item)})")
            continue
        before = len(problems)
        times = []
        for key in ("start", "end"):
            try:
                times.append(parse_timestamp_ms(item[key]))
            except ValueError as exc:
                problems.append(f"{where}: key {key!r}: unparsable time ({exc})")
        if item["kind"] not in ALL_KINDS:
            problems.append(f"{where}: key 'kind': expected one of {', '.join(ALL_KINDS)}, "
                            f"received {item['kind']!r:.60}")
        if not isinstance(item["stream"], str) or not item["stream"]:
            problems.append(f"{where}: key 'stream': expected a non-empty string, received "
                            f"{item['stream']!r:.60}")
        channels = item["channels"]
        if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
            problems.append(f"{where}: key 'channels': expected a list of channel names, "
                            f"received {channels!r:.60}")
        if len(times) == 2 and times[1] < times[0]:
            problems.append(f"{where}: key 'end': expected a time at or after start, "
                            f"received {item['end']!r} before {item['start']!r}")
        if len(problems) == before:
            labels.append(AnomalyLabel(item["stream"], item["kind"], times[0], times[1],
                                       tuple(channels)))
    if problems:
        raise RecordingError(problems[:20], len(problems))
    return labels
