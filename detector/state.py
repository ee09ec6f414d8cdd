"""The per-stream state record: a fixed-size float32 vector with a versioned layout.

Every stream the worker has seen owns one record. It holds everything the streaming step needs
to continue that stream exactly where it stopped, so a record can be stored, checkpointed and
restored byte for byte, and a restored stream scores exactly as an uninterrupted one.

Layout version 9, in order (``M`` = memory units, ``F`` = channels, ``C`` = 2 when the model
reads the clock and 0 when not, ``T`` = 6 tests):

===========================  =====  =======================================================
field                        width  meaning
===========================  =====  =======================================================
``reading_t1``               F      clipped normalized values of the previous reading (t-1)
``week_time_t1``             C      its time in the week: whole seconds, then milliseconds
``reading_t2``               F      the same of the reading before that (t-2)
``week_time_t2``             C      its time in the week
``memory``                   M      the memory cell's state after the previous reading
``forecast_mean``            F      forecast of this reading, normalized units
``forecast_scale``           F      forecast standard deviation, normalized units
``score_average``            1      short moving average of raw scores
``score_mean``               1      long-run mean of ``score_average``
``score_var``                1      long-run variance of ``score_average``
``scale_ratio``              F      long-run mean square of the model's standardized
                                    residuals (the forecast scale's recalibration)
``level_mean``               F      long-run mean of each channel's normalized reading
``level_var``                F      long-run variance of the same
``shift_mean``               F      short-run average of each channel's deviation from
                                    ``level_mean`` (the shift test)
``shift_var``                F      long-run mean square of that average
``season_mean``              24F    each channel's mean normalized reading per hour of day
``season_visits``            24     readings learned from in each hour of the day
``season_var``               F      long-run variance of the deviations from those means
``season_covariance``        P      long-run covariance of each pair of channels' deviations
                                    from those means (``P = F (F - 1) / 2``, the pairs
                                    ``i < j`` row by row; none for one channel)
``change_short``             F      short-run mean square of reading-to-reading changes
``change_long``              F      long-run mean square of the same
``repeat_rate``              F      long-run fraction of readings repeating the previous one
``repeat_follow_hits``       F      repeats that followed a repeat, in completed runs
``repeat_follow_occasions``  F      repeats that could have been followed, same runs
``repeat_run``               F      readings in a row, to this one, repeating the previous
``exceed_rate``              T      per test: long-run rate of surprises above 1 (repeats:
                                    per completed run)
``uncensored_rate``          T      per test: the same, for surprises between 1 and 3
``excess_rate``              T      per test: long-run mean of the excess over 1, up to 2
``cluster_progress``         T-1    per Gaussian test: 0 outside a run of surprises above
                                    1, ``k`` in its ``k``-th reading learned from (up to
                                    ``average_span``), then ``average_span`` + the run's peak
``tail_rate``                1      long-run rate of clusters of single surprises above 3
``tail_excess``              1      long-run mean of their excess over 3 (0 if none)
``tail_run_peak``            1      the open cluster's peak single surprise (0: none)
``tail_run_gap``             1      readings since its last single surprise above 3
``evidence_average``         1      short moving average of the single surprises (x ln 10)
``evidence_average_long``    1      long moving average of the same
``evidence_spread``          1      long-run mean square of the short average's deviation
                                    from 1 (its variance, for the persistence test)
``surprise_peak``            1      recent peak surprise (doubled when reported), decaying
``flagged_run``              1      readings in a row, up to this one, that were flagged
``count``                    1      readings seen, saturating at ``COUNT_CAP``
===========================  =====  =======================================================

Version 9 added ``season_covariance`` (the season test judges each channel given the
others: :mod:`detector.channel_pairs`), 1,000 bytes for 4 channels. Version 8 replaced
``last_evidence`` and ``evidence_lag_product`` (the persistence test's lag-one
correlation) with ``evidence_average_long`` and ``evidence_spread`` (the test at a second,
longer span; the short average's own variance, from which the correlation follows), at
the same size. Version 7 added ``tail_run_peak`` and ``tail_run_gap`` (the
far tail learns clusters of surprises by their peaks, not the onsets that were reported).
Version 6 added
``cluster_progress`` (the calibrations learn a long run of exceedances
by its first readings and its peak, not reading by reading). Version 5 added the shift
test's and the far tail's fields, and keeps the two previous
readings' times (two floats each) instead of their encoded clock (the step encodes them
again), so the record stays within 1 KiB for 4 channels. Version 4 added ``scale_ratio``.
Version 3 added everything from ``season_mean`` to
``flagged_run`` except the peak (the season, variability and repeats tests, the calibration
and the persistence test, and learning only from readings that are not flagged), and feeds
the model the clock as whole harmonics. A changelog record of another version is not loaded
(the worker counts it and starts that stream's learning period again), and an artifact
written with another layout version fails to load and must be trained again.

Records survive restarts and rebalances: the streaming worker checkpoints each changed
stream's record, little-endian float32 (``record_bytes`` long) followed by its own bookkeeping,
to a compacted changelog topic and restores it from there (``streaming.changelog``).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

STATE_LAYOUT_VERSION = 9

# float32 counts exactly up to 2**24; the scorer only needs to know "past the learning period".
COUNT_CAP = float(2**24)

_WIRE_DTYPE = np.dtype("<f4")


@dataclasses.dataclass(frozen=True)
class StateLayout:
    """Where each field of a stream's state record lives.

    Args:
        channels: channels per reading (``F``).
        input_width: width of the model input per reading (``D``: channels plus encoded clock).
        memory_units: size of the memory cell state (``M``).
        version: layout version; records of another version cannot be read by this one.
    """

    channels: int
    input_width: int
    memory_units: int
    version: int = STATE_LAYOUT_VERSION

    def __post_init__(self) -> None:
        for name in ("channels", "input_width", "memory_units"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, received: {value!r}")
        if self.input_width < self.channels:
            raise ValueError(
                f"`input_width` must be at least `channels` ({self.channels}), "
                f"received: {self.input_width}")
        if self.version != STATE_LAYOUT_VERSION:
            raise ValueError(
                f"state layout version {self.version} is not supported; this build reads "
                f"version {STATE_LAYOUT_VERSION}")

    @property
    def clock_width(self) -> int:
        """Floats that keep a reading's time for its clock features (none without a clock)."""
        return 2 if self.input_width > self.channels else 0

    def _widths(self) -> list[tuple[str, int]]:
        return [
            ("reading_t1", self.channels),
            ("week_time_t1", self.clock_width),
            ("reading_t2", self.channels),
            ("week_time_t2", self.clock_width),
            ("memory", self.memory_units),
            ("forecast_mean", self.channels),
            ("forecast_scale", self.channels),
            ("score_average", 1),
            ("score_mean", 1),
            ("score_var", 1),
            ("scale_ratio", self.channels),
            ("level_mean", self.channels),
            ("level_var", self.channels),
            ("shift_mean", self.channels),
            ("shift_var", self.channels),
            ("season_mean", 24 * self.channels),
            ("season_visits", 24),
            ("season_var", self.channels),
            ("season_covariance", self.channels * (self.channels - 1) // 2),
            ("change_short", self.channels),
            ("change_long", self.channels),
            ("repeat_rate", self.channels),
            ("repeat_follow_hits", self.channels),
            ("repeat_follow_occasions", self.channels),
            ("repeat_run", self.channels),
            ("exceed_rate", 6),
            ("uncensored_rate", 6),
            ("excess_rate", 6),
            ("cluster_progress", 5),
            ("tail_rate", 1),
            ("tail_excess", 1),
            ("tail_run_peak", 1),
            ("tail_run_gap", 1),
            ("evidence_average", 1),
            ("evidence_average_long", 1),
            ("evidence_spread", 1),
            ("surprise_peak", 1),
            ("flagged_run", 1),
            ("count", 1),
        ]

    @property
    def fields(self) -> dict[str, slice]:
        offsets: dict[str, slice] = {}
        start = 0
        for name, width in self._widths():
            offsets[name] = slice(start, start + width)
            start += width
        return offsets

    @functools.cached_property
    def size(self) -> int:
        """Floats per record (once: :meth:`check` reads it at every step call)."""
        return sum(width for _, width in self._widths())

    @property
    def record_bytes(self) -> int:
        return self.size * _WIRE_DTYPE.itemsize

    def initial(self, streams: int) -> np.ndarray:
        """Records of streams never seen: zero history, as the Keras model's zero padding."""
        return np.zeros((streams, self.size), dtype=np.float32)

    def check(self, records: np.ndarray) -> None:
        """Raises ValueError unless ``records`` is a float32 ``[n, size]`` array."""
        if records.ndim != 2 or records.shape[1] != self.size or records.dtype != np.float32:
            raise ValueError(
                f"state records: expected float32 [n, {self.size}] (layout v{self.version}), "
                f"received {records.dtype} {list(records.shape)}")

    def to_json(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, int]) -> StateLayout:
        return cls(**data)
