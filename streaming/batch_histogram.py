"""A Prometheus histogram collector for values that arrive as NumPy arrays, a batch at a time.

One ``np.searchsorted`` + ``np.bincount`` per batch instead of one locked
``Histogram.observe`` per value, exposing exactly the ``_bucket``/``_count``/``_sum`` samples
a prometheus_client ``Histogram`` would for the same values. The worker's metrics
(:mod:`streaming.metrics`) declare their score, likelihood and latency histograms with it.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Iterable, Sequence

import numpy as np
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString


class _HistogramChild:
    """One labelled series of a ``BatchHistogram``: cumulative bucket counts and a sum."""

    __slots__ = ("_bounds", "_cumulative", "_finite_bounds", "_lock", "_sum")

    # Below this many values a binary search per value is cheaper than one pass per bound.
    _SEARCH_BELOW = 128

    def __init__(self, bounds: np.ndarray) -> None:
        self._bounds = bounds
        self._finite_bounds = bounds[:-1].tolist()  # the last bound is +Inf
        self._cumulative = np.zeros(len(bounds), dtype=np.int64)  # [i]: values <= bounds[i]
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        """One value; a non-finite value is ignored (it would poison ``_sum`` for good)."""
        value = float(value)
        if not math.isfinite(value):
            return
        # The first bucket whose upper bound is >= value, as Histogram.observe picks it.
        index = bisect.bisect_left(self._finite_bounds, value)
        with self._lock:
            self._cumulative[index:] += 1
            self._sum += value

    def observe_many(self, values: np.ndarray | Sequence[float]) -> None:
        """All ``values`` at once; non-finite ones are ignored."""
        array = np.asarray(values, dtype=np.float64).ravel()
        finite = np.isfinite(array)
        if not finite.all():
            array = array[finite]
        if array.size == 0:
            return
        if array.size < self._SEARCH_BELOW:
            # side="left": bounds[i-1] < v <= bounds[i], the bucket Histogram.observe picks.
            index = np.searchsorted(self._bounds, array, side="left")
            cumulative = np.cumsum(np.bincount(index, minlength=len(self._bounds)))
        else:
            # One vectorized comparison per bound beats a binary search per value.
            cumulative = np.empty(len(self._bounds), dtype=np.int64)
            for i, bound in enumerate(self._finite_bounds):
                cumulative[i] = np.count_nonzero(array <= bound)
            cumulative[-1] = array.size
        total = float(array.sum())
        with self._lock:
            self._cumulative += cumulative
            self._sum += total

    def snapshot(self) -> tuple[list[int], float]:
        """Cumulative bucket counts (the last one is the count) and the sum."""
        with self._lock:
            return self._cumulative.tolist(), self._sum


class BatchHistogram(Collector):
    """A histogram collector for values that arrive as NumPy arrays, one batch at a time.

    Exposes the same ``_bucket``/``_count``/``_sum`` samples (and ``le`` strings) as
    ``prometheus_client.Histogram``, but observes a whole array with one vectorized bucket
    search and a single lock acquisition. Label values must be declared up front
    (``label_values``), so the label set is bounded and every series exists from the start.
    Non-finite values are not observed. No ``_created`` sample is exposed.
    """

    def __init__(self, name: str, documentation: str, buckets: Sequence[float],
                 labelnames: Sequence[str] = (),
                 label_values: Iterable[Sequence[str]] = ()) -> None:
        bounds = [float(b) for b in buckets]
        if bounds != sorted(bounds) or len(set(bounds)) != len(bounds):
            raise ValueError(f"{name}: buckets must be strictly increasing, received {buckets}")
        if not bounds or bounds[-1] != math.inf:
            bounds.append(math.inf)
        if len(bounds) < 2:
            raise ValueError(f"{name}: at least one finite bucket is needed")
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.upper_bounds = tuple(bounds)
        self._le = [floatToGoString(b) for b in bounds]
        array = np.array(bounds, dtype=np.float64)
        combos = [tuple(str(v) for v in values) for values in label_values]
        if not self.labelnames:
            if combos:
                raise ValueError(f"{name}: label values given without label names")
            combos = [()]
        if not combos:
            raise ValueError(f"{name}: label names need their allowed label values")
        for combo in combos:
            if len(combo) != len(self.labelnames):
                raise ValueError(f"{name}: label values {combo} do not match {self.labelnames}")
        self._children = {combo: _HistogramChild(array) for combo in combos}

    def labels(self, *values: str) -> _HistogramChild:
        """The series of one declared label value combination."""
        key = tuple(str(v) for v in values)
        try:
            return self._children[key]
        except KeyError:
            raise ValueError(
                f"{self.name}: label values {key} are not among the declared "
                f"{sorted(self._children)}") from None

    def observe(self, value: float) -> None:
        self.labels().observe(value)

    def observe_many(self, values: np.ndarray | Sequence[float]) -> None:
        self.labels().observe_many(values)

    def describe(self) -> Iterable[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for combo, child in self._children.items():
            cumulative, total = child.snapshot()
            family.add_metric(list(combo),
                              [(le, float(c)) for le, c in zip(self._le, cumulative, strict=True)],
                              total)
        return [family]
