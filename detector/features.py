"""What the model sees of a reading: robustly normalized channels and the clock.

Both the training pipeline and the streaming step call these functions, so a reading is
prepared identically offline and online.
"""

from __future__ import annotations

import dataclasses

import numpy as np

MS_PER_DAY = 86_400_000
MS_PER_WEEK = 7 * MS_PER_DAY
# 1970-01-01 was a Thursday; shifting by 3 days puts Monday 00:00 at phase 0 of the week.
WEEK_SHIFT_MS = 3 * MS_PER_DAY
# Whole harmonics of each period: (period, shift, harmonics). Two of the day give its
# shape (a peak and a trough that need not be 12 hours apart), one of the week tells
# weekdays from the weekend.
CLOCK_HARMONICS = ((MS_PER_DAY, 0, 2), (MS_PER_WEEK, WEEK_SHIFT_MS, 1))
CLOCK_FEATURES = 2 * sum(harmonics for _, _, harmonics in CLOCK_HARMONICS)

# A period is learned from data that spans it at least this many times: one cycle cannot
# tell a periodic pattern from a trend or a one-off event.
MIN_CYCLES_TO_LEARN = 2


def covered_clock_periods(span_ms: int) -> list[int]:
    """The clock's periods (milliseconds) that data spanning ``span_ms`` covers
    ``MIN_CYCLES_TO_LEARN`` times."""
    return [period for period, _, _ in CLOCK_HARMONICS
            if span_ms >= MIN_CYCLES_TO_LEARN * period]


def covered_clock_features(span_ms: int) -> np.ndarray:
    """Which of :func:`clock_features`' columns data spanning ``span_ms`` can teach: bool
    ``[CLOCK_FEATURES]``, those of the periods it covers ``MIN_CYCLES_TO_LEARN`` times."""
    covered = covered_clock_periods(span_ms)
    return np.array([period in covered for period, _, harmonics in CLOCK_HARMONICS
                     for _ in range(2 * harmonics)], dtype=bool)


# The normal distribution's interquartile range in standard deviations.
_IQR_TO_SIGMA = 1.3489795


def clock_features(timestamps_ms: np.ndarray) -> np.ndarray:
    """Sine and cosine of whole harmonics of the day and the week, float32 ``[..., 6]``.

    In order: ``sin, cos`` of 1 and 2 cycles per day, then of 1 cycle per week. Whole
    harmonics are continuous where the period wraps, so 23:59 and 00:00 (and Sunday night
    and Monday morning) are as close to the model as any two readings a minute apart; a raw
    phase in [0, 1) jumps there, and a model fed with it surprises itself every midnight.
    Phases come from integer milliseconds, so float32 never has to hold an epoch timestamp.
    """
    ts = np.asarray(timestamps_ms, dtype=np.int64)
    features = []
    for period, shift, harmonics in CLOCK_HARMONICS:
        angle = (2.0 * np.pi / period) * ((ts + shift) % period).astype(np.float64)
        for harmonic in range(1, harmonics + 1):
            features += [np.sin(harmonic * angle), np.cos(harmonic * angle)]
    return np.stack(features, axis=-1).astype(np.float32)


def week_time(timestamps_ms: np.ndarray) -> np.ndarray:
    """A reading's time within the (Monday-based) week as float32 ``[..., 2]``: whole
    seconds (below 604,800, exact in float32) and the milliseconds left over.

    Everything the clock features need of a timestamp, exactly, in two floats: the state
    record keeps this for the two readings before the current one instead of six clock
    features each (:func:`from_week_time` gives back a timestamp with the same features).
    """
    phase = (np.asarray(timestamps_ms, dtype=np.int64) + WEEK_SHIFT_MS) % MS_PER_WEEK
    return np.stack([phase // 1000, phase % 1000], axis=-1).astype(np.float32)


def from_week_time(week: np.ndarray) -> np.ndarray:
    """A timestamp (int64 ms, in the first week after 1970-01-01 Monday 00:00 minus its
    shift) whose clock features equal those of the time :func:`week_time` encoded."""
    week = np.asarray(week)
    return (week[..., 0].astype(np.int64) * 1000 + week[..., 1].astype(np.int64)
            - WEEK_SHIFT_MS)


def hour_of_day(timestamps_ms: np.ndarray) -> np.ndarray:
    """The UTC hour of the day, 0 to 23, as int32, from integer milliseconds."""
    ts = np.asarray(timestamps_ms, dtype=np.int64)
    return ((ts % MS_PER_DAY) // (MS_PER_DAY // 24)).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class ChannelScaler:
    """Per-channel robust normalization: ``(x - median) / scale``, clipped for the model.

    The scale is the interquartile range in standard-deviation units, so a few extreme
    readings in the training data do not shrink every later residual. A channel with no
    spread (a constant sensor) falls back to its standard deviation and then to 1.

    Args:
        median: per-channel centre, raw units.
        scale: per-channel spread, raw units, strictly positive.
        clip: normalized model inputs are clipped to ``[-clip, clip]`` so one wild reading
            cannot saturate the memory cell for many steps; residuals use unclipped values.
    """

    median: tuple[float, ...]
    scale: tuple[float, ...]
    clip: float = 20.0

    def __post_init__(self) -> None:
        if len(self.median) != len(self.scale) or not self.median:
            raise ValueError(
                f"`median` and `scale` must be non-empty and of equal length, received "
                f"{len(self.median)} and {len(self.scale)}")
        if not all(np.isfinite(self.median)):
            raise ValueError(f"`median` must be finite, received: {self.median}")
        if not all(np.isfinite(s) and s > 0 for s in self.scale):
            raise ValueError(f"`scale` must be finite and > 0, received: {self.scale}")
        if not (np.isfinite(self.clip) and self.clip > 0):
            raise ValueError(f"`clip` must be finite and > 0, received: {self.clip}")

    @classmethod
    def fit(cls, values: np.ndarray, clip: float = 20.0) -> ChannelScaler:
        """Fits to ``values[..., F]``; NaNs are ignored, an all-NaN channel is an error."""
        flat = np.asarray(values, dtype=np.float64).reshape(-1, np.shape(values)[-1])
        empty = [i for i in range(flat.shape[1]) if not np.isfinite(flat[:, i]).any()]
        if empty:
            raise ValueError(f"channels {empty} have no finite value to fit a scale to")
        median = np.nanmedian(flat, axis=0)
        q75, q25 = np.nanpercentile(flat, [75, 25], axis=0)
        scale = (q75 - q25) / _IQR_TO_SIGMA
        std = np.nanstd(flat, axis=0)
        scale = np.where(scale > 1e-12, scale, np.where(std > 1e-12, std, 1.0))
        return cls(tuple(float(m) for m in median), tuple(float(s) for s in scale), clip)

    @property
    def channels(self) -> int:
        return len(self.median)

    def normalize(self, values: np.ndarray) -> np.ndarray:
        """Unclipped normalized values, float32."""
        median = np.asarray(self.median, dtype=np.float32)
        scale = np.asarray(self.scale, dtype=np.float32)
        return ((np.asarray(values, dtype=np.float32) - median) / scale).astype(np.float32)

    def model_input(self, normalized: np.ndarray) -> np.ndarray:
        """What the model sees of normalized values: clipped to ``[-clip, clip]``."""
        return np.clip(normalized, -self.clip, self.clip).astype(np.float32)

    def to_json(self) -> dict:
        return {"median": list(self.median), "scale": list(self.scale), "clip": self.clip}

    @classmethod
    def from_json(cls, data: dict) -> ChannelScaler:
        return cls(tuple(data["median"]), tuple(data["scale"]), float(data["clip"]))
