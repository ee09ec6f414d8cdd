"""Numenta Anomaly Benchmark (NAB) scoring, and NAB's results file layout.

The NAB score rewards a detector for flagging each labeled anomaly window early, ignores
repeated flags inside a window, and charges for flags outside windows, less so shortly after
a window (a late but related alarm) than elsewhere. One threshold per cost profile turns
anomaly scores into flags for the whole corpus; it is the one that maximizes the corpus score.
The raw score is then normalized so that 0 is a detector that never flags anything and 100
is one that flags every window at its first row and nothing else. The three profiles weigh
missed windows and false alarms differently.

Reference: A. Lavin and S. Ahmad, "Evaluating Real-time Anomaly Detection Algorithms - the
Numenta Anomaly Benchmark", ICMLA 2015; the NAB repository (github.com/numenta/NAB, v1.1),
``nab/sweeper.py`` (per-row scores, threshold sweep) and ``nab/runner.py`` (normalization).

Rules, as in NAB's sweeper (row ``i`` counts from 0 within a file of ``n`` rows):

* Rows ``i < probation_rows(n)`` are not scored: flags there are neither TP nor FP, and a
  window whose rows all lie there is neither TP nor FN (nor counted in the normalization).
  A window that straddles the probation end is scored on its remaining rows, with its position
  and length still measured on the whole window, so the best reachable TP is below 1.0. A
  window in the probationary period still counts as the "previous window" of later false
  positives. All of this is what NAB's sweeper does.
* A flag in a window scores ``scaled_sigmoid(-(right - i + 1) / length) * tp / max_tp``;
  only the earliest flag of each window counts; a window without any flag costs ``fn``.
* A flag outside every window scores ``-fp`` if no window ended before it, else
  ``scaled_sigmoid((i - prev_right) / (prev_length - 1)) * fp``; every such flag counts.

Choices where NAB's code is silent or cannot run:

* Windows are matched to rows by ``start <= timestamp <= end`` (NAB requires both limits to be
  timestamps of the file). A window that contains no row at all (e.g. beyond the end of the
  data) can be neither detected nor missed and is ignored everywhere.
* A previous window of one row makes ``prev_length - 1`` zero, which NAB divides by (and
  crashes); here the distance is then infinite and the flag costs the full ``-fp``.
* NAB's sweep starts at threshold 1.1, which flags nothing; that candidate is kept, so a
  detector whose every flag hurts scores exactly the "null" score (normalized 0), as NAB's
  null detector does. Anomaly scores must therefore lie in [0, 1], as NAB requires.
* ``null = -fn * W`` and ``perfect = tp * W`` with ``W`` the scored windows. NAB's runner
  takes null from a run of its null detector (which, by the candidate above, scores exactly
  this) and counts every labeled window in perfect; on NAB's corpus, whose windows all lie
  after the probationary period, the two agree.
* ``tn_weight`` is part of NAB's profiles but NAB's score never uses it; neither does this one.
"""

from __future__ import annotations

import bisect
import datetime as dt
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detector.readings import parse_timestamp_ms

PROBATION_FRACTION = 0.15
# NAB caps the probationary period at the fraction of this many rows (750 rows).
PROBATION_CAP_ROWS = 5000
# Above every allowed anomaly score: the sweep's "flag nothing" candidate, as in NAB.
NO_DETECTION_THRESHOLD = 1.1

RESULTS_HEADER = ("timestamp", "value", "anomaly_score", "label")


@dataclass(frozen=True)
class CostProfile:
    """Weights of one NAB application profile (NAB's ``config/profiles.json``)."""

    name: str
    tp_weight: float
    fp_weight: float
    fn_weight: float
    tn_weight: float = 1.0


PROFILES: dict[str, CostProfile] = {
    profile.name: profile
    for profile in (
        CostProfile("standard", tp_weight=1.0, fp_weight=0.11, fn_weight=1.0, tn_weight=1.0),
        CostProfile("reward_low_FP_rate", tp_weight=1.0, fp_weight=0.22, fn_weight=1.0,
                    tn_weight=1.0),
        CostProfile("reward_low_FN_rate", tp_weight=1.0, fp_weight=0.11, fn_weight=2.0,
                    tn_weight=1.0),
    )
}


def scaled_sigmoid(y: float) -> float:
    """NAB's ``scaledSigmoid``: about 0.987 at -1 (window start), 0 at 0, -1 beyond 3."""
    if y > 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * y)) - 1.0


MAX_TP = scaled_sigmoid(-1.0)


def _scaled_sigmoid_array(y: np.ndarray) -> np.ndarray:
    # Clipping only avoids exp overflow for the rows the `y > 3` branch replaces anyway.
    inner = 2.0 / (1.0 + np.exp(5.0 * np.minimum(y, 3.0))) - 1.0
    return np.where(y > 3.0, -1.0, inner)


def probation_rows(n: int) -> int:
    """Rows at the start of an ``n``-row file that NAB does not score."""
    # Same float expression as NAB, so the rounding matches too.
    return int(min(math.floor(PROBATION_FRACTION * n), PROBATION_FRACTION * PROBATION_CAP_ROWS))


@dataclass(frozen=True, eq=False)
class ScoredFile:
    """One corpus file: its rows' timestamps and anomaly scores, and its labeled windows.

    ``key`` is the corpus path as in ``combined_windows.json`` (``"category/file.csv"``).
    Timestamps are epoch milliseconds, strictly increasing; anomaly scores lie in [0, 1];
    windows are ``(start_ms, end_ms)``, inclusive, in time order and not overlapping.
    """

    key: str
    timestamps_ms: np.ndarray
    anomaly_scores: np.ndarray
    windows: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        timestamps = np.asarray(self.timestamps_ms)
        if timestamps.size == 0:
            timestamps = timestamps.astype(np.int64)
        if timestamps.ndim != 1 or timestamps.dtype.kind not in "iu":
            raise ValueError(f"{self.key}: timestamps_ms must be a 1-D array of integers")
        timestamps = timestamps.astype(np.int64)
        scores = np.asarray(self.anomaly_scores, dtype=np.float64)
        if scores.shape != timestamps.shape:
            raise ValueError(f"{self.key}: {scores.size} anomaly scores for "
                             f"{timestamps.size} timestamps")
        if np.any(np.diff(timestamps) <= 0):
            raise ValueError(f"{self.key}: timestamps must be strictly increasing")
        if not np.all((scores >= 0.0) & (scores <= 1.0)):
            raise ValueError(f"{self.key}: anomaly scores must lie in [0, 1] (NAB's range)")
        windows = tuple((int(start), int(end)) for start, end in self.windows)
        _check_windows(windows, self.key)
        object.__setattr__(self, "timestamps_ms", timestamps)
        object.__setattr__(self, "anomaly_scores", scores)
        object.__setattr__(self, "windows", windows)

    def window_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """First and last row index of each window that contains at least one row."""
        firsts = np.searchsorted(self.timestamps_ms, [w[0] for w in self.windows], "left")
        lasts = np.searchsorted(self.timestamps_ms, [w[1] for w in self.windows], "right") - 1
        keep = firsts <= lasts
        return firsts[keep].astype(np.int64), lasts[keep].astype(np.int64)


def _check_windows(windows: Sequence[tuple[int, int]], where: str) -> None:
    for number, (start, end) in enumerate(windows):
        if start > end:
            raise ValueError(f"{where}: window {number} starts after it ends")
        if number and start <= windows[number - 1][1]:
            raise ValueError(f"{where}: window {number} does not start after window "
                             f"{number - 1} ends (windows must be in order, not overlapping)")


@dataclass(frozen=True)
class ProfileResult:
    """Corpus score for one profile at one threshold.

    ``raw`` is the sum of the files' NAB scores; ``normalized`` is
    ``100 * (raw - null) / (perfect - null)`` (NaN when the corpus has no scored window).
    Counts are of windows (detected / missed) and of flagged rows outside windows.
    """

    profile: str
    threshold: float
    raw: float
    normalized: float
    null: float
    perfect: float
    tp_windows: int
    fn_windows: int
    fp_rows: int


@dataclass(frozen=True, eq=False)
class ThresholdSweep:
    """Corpus score at every candidate threshold, highest threshold first.

    The first candidate is ``NO_DETECTION_THRESHOLD`` (nothing flagged); the others are the
    distinct anomaly scores of the scored rows, a row being flagged when its score is
    ``>=`` the threshold.
    """

    profile: CostProfile
    thresholds: np.ndarray
    raw: np.ndarray
    tp_windows: np.ndarray
    fn_windows: np.ndarray
    fp_rows: np.ndarray
    scored_windows: int

    def result(self, index: int) -> ProfileResult:
        return _profile_result(self.profile, float(self.thresholds[index]),
                               float(self.raw[index]), self.scored_windows,
                               int(self.tp_windows[index]), int(self.fn_windows[index]),
                               int(self.fp_rows[index]))


def _profile_result(profile: CostProfile, threshold: float, raw: float, scored_windows: int,
                    tp: int, fn: int, fp: int) -> ProfileResult:
    null = -profile.fn_weight * scored_windows
    perfect = profile.tp_weight * scored_windows
    normalized = 100.0 * (raw - null) / (perfect - null) if perfect != null else math.nan
    return ProfileResult(profile=profile.name, threshold=threshold, raw=raw,
                         normalized=normalized, null=null, perfect=perfect,
                         tp_windows=tp, fn_windows=fn, fp_rows=fp)


def _checked_files(files: Iterable[ScoredFile]) -> list[ScoredFile]:
    files = list(files)
    seen: set[str] = set()
    for scored in files:
        if scored.key in seen:
            raise ValueError(f"{scored.key}: appears twice in the corpus")
        seen.add(scored.key)
    return files


def score_at_threshold(files: Iterable[ScoredFile], profile: CostProfile,
                       threshold: float) -> ProfileResult:
    """Corpus NAB score when rows with ``anomaly_score >= threshold`` are flagged.

    Computed directly from the rules, file by file; ``threshold_sweep`` gets the same numbers
    for every threshold at once.
    """
    raw = 0.0
    tp = fn = fp = scored_windows = 0
    for scored in _checked_files(files):
        probation = probation_rows(len(scored.timestamps_ms))
        firsts, lasts = (a.tolist() for a in scored.window_rows())
        flagged = [i for i in np.flatnonzero(scored.anomaly_scores >= threshold).tolist()
                   if i >= probation]
        for first, last in zip(firsts, lasts, strict=True):
            if last < probation:
                continue
            scored_windows += 1
            inside = [i for i in flagged if first <= i <= last]
            if inside:
                length = last - first + 1
                position = -(last - inside[0] + 1) / length
                raw += scaled_sigmoid(position) * profile.tp_weight / MAX_TP
                tp += 1
            else:
                raw -= profile.fn_weight
                fn += 1
        for i in flagged:
            window = bisect.bisect_right(firsts, i) - 1
            if window >= 0 and i <= lasts[window]:
                continue
            previous = bisect.bisect_left(lasts, i) - 1
            if previous < 0:
                unweighted = -1.0
            else:
                previous_length = lasts[previous] - firsts[previous] + 1
                distance = abs(lasts[previous] - i)
                position = distance / (previous_length - 1) if previous_length > 1 else math.inf
                unweighted = scaled_sigmoid(position)
            raw += unweighted * profile.fp_weight
            fp += 1
    return _profile_result(profile, float(threshold), raw, scored_windows, tp, fn, fp)


@dataclass(frozen=True, eq=False)
class _CorpusRows:
    """Every scored row of a corpus, with its profile-free contribution when flagged."""

    anomaly_scores: np.ndarray
    rows: np.ndarray  # row index within its file
    windows: np.ndarray  # corpus-wide window id, -1 outside windows
    tp_unweighted: np.ndarray  # scaled_sigmoid(position) / MAX_TP inside windows, else 0
    fp_unweighted: np.ndarray  # the FP score before fp_weight outside windows, else 0
    scored_windows: int


def _corpus_rows(files: Iterable[ScoredFile]) -> _CorpusRows:
    parts: list[tuple[np.ndarray, ...]] = []
    window_offset = 0
    scored_windows = 0
    for scored in _checked_files(files):
        n = len(scored.timestamps_ms)
        probation = probation_rows(n)
        firsts, lasts = scored.window_rows()
        rows = np.arange(probation, n, dtype=np.int64)
        window = np.full(rows.shape, -1, dtype=np.int64)
        tp_part = np.zeros(rows.shape)
        fp_part = np.full(rows.shape, -1.0)
        if firsts.size:
            lengths = lasts - firsts + 1
            candidate = np.maximum(np.searchsorted(firsts, rows, "right") - 1, 0)
            inside = (rows >= firsts[candidate]) & (rows <= lasts[candidate])
            position = -(lasts[candidate] - rows + 1) / lengths[candidate]
            tp_part = np.where(inside, _scaled_sigmoid_array(position) / MAX_TP, 0.0)
            window = np.where(inside, window_offset + candidate, -1)
            previous = np.searchsorted(lasts, rows, "left") - 1
            has_previous = previous >= 0
            previous = np.maximum(previous, 0)
            # Rows without a previous window may divide 0 by 0 here; np.where drops them.
            with np.errstate(divide="ignore", invalid="ignore"):
                past = np.abs(lasts[previous] - rows) / (lengths[previous] - 1.0)
            fp_part = np.where(has_previous, _scaled_sigmoid_array(past), -1.0)
            fp_part = np.where(inside, 0.0, fp_part)
            scored_windows += int(np.count_nonzero(lasts >= probation))
            window_offset += firsts.size
        parts.append((scored.anomaly_scores[probation:], rows, window, tp_part, fp_part))
    if not parts:
        no_floats, no_ints = np.zeros(0), np.zeros(0, dtype=np.int64)
        parts.append((no_floats, no_ints, no_ints, no_floats, no_floats))
    columns = [np.concatenate(column) for column in zip(*parts, strict=True)]
    return _CorpusRows(*columns, scored_windows=scored_windows)


@dataclass(frozen=True, eq=False)
class _SweepTotals:
    """Profile-free running totals at each candidate threshold, highest threshold first."""

    thresholds: np.ndarray
    tp_unweighted: np.ndarray  # sum over detected windows of their best TP / tp_weight
    fp_unweighted: np.ndarray  # sum over flagged rows outside windows of their FP / fp_weight
    tp_windows: np.ndarray
    fp_rows: np.ndarray
    scored_windows: int


def _sweep_totals(corpus: _CorpusRows) -> _SweepTotals:
    order = np.argsort(-corpus.anomaly_scores, kind="stable")
    scores = corpus.anomaly_scores[order]
    windows = corpus.windows[order]
    rows = corpus.rows[order]
    in_window = windows >= 0

    fp_total = np.cumsum(np.where(in_window, 0.0, corpus.fp_unweighted[order]))
    fp_count = np.cumsum(~in_window)

    # A window's TP is its earliest flagged row (the largest TP, as the TP score falls along
    # the window). Lowering the threshold row by row, that row is the running minimum of the
    # row index within the window. Grouping by window, highest id first, lets one minimum
    # accumulate over all windows: key = window * stride + row, and every key of the next
    # group is below every key of the groups before it, so the minimum restarts per window.
    ranks = np.flatnonzero(in_window)
    tp_windows = windows[ranks]
    grouped = np.lexsort((ranks, -tp_windows))
    ranks, tp_windows = ranks[grouped], tp_windows[grouped]
    stride = int(rows.max(initial=0)) + 1
    keys = tp_windows * stride + rows[ranks]
    best_keys = np.minimum.accumulate(keys) if keys.size else keys
    key_order = np.argsort(keys)
    tp_by_key = corpus.tp_unweighted[order][ranks][key_order]
    best = tp_by_key[np.searchsorted(keys[key_order], best_keys)]
    first_of_window = np.ones(ranks.shape, dtype=bool)
    first_of_window[1:] = tp_windows[1:] != tp_windows[:-1]
    before = np.zeros(best.shape)
    before[1:] = best[:-1]
    tp_gain = np.zeros(scores.shape)
    tp_gain[ranks] = best - np.where(first_of_window, 0.0, before)
    tp_new = np.zeros(scores.shape, dtype=np.int64)
    tp_new[ranks] = first_of_window

    # Rows with equal scores are flagged together: read the totals after the last of them.
    last_of_score = np.ones(scores.shape, dtype=bool)
    last_of_score[:-1] = scores[1:] != scores[:-1]
    ends = np.flatnonzero(last_of_score)
    return _SweepTotals(
        thresholds=np.concatenate(([NO_DETECTION_THRESHOLD], scores[ends])),
        tp_unweighted=np.concatenate(([0.0], np.cumsum(tp_gain)[ends])),
        fp_unweighted=np.concatenate(([0.0], fp_total[ends])),
        tp_windows=np.concatenate(([0], np.cumsum(tp_new)[ends])),
        fp_rows=np.concatenate(([0], fp_count[ends])),
        scored_windows=corpus.scored_windows,
    )


def _weighted(totals: _SweepTotals, profile: CostProfile) -> ThresholdSweep:
    # Every term of the score is one of three unweighted parts times its weight, so the
    # expensive pass over the rows serves all profiles.
    fn_windows = totals.scored_windows - totals.tp_windows
    raw = (profile.tp_weight * totals.tp_unweighted + profile.fp_weight * totals.fp_unweighted
           - profile.fn_weight * fn_windows)
    return ThresholdSweep(profile=profile, thresholds=totals.thresholds, raw=raw,
                          tp_windows=totals.tp_windows, fn_windows=fn_windows,
                          fp_rows=totals.fp_rows, scored_windows=totals.scored_windows)


def threshold_sweep(files: Iterable[ScoredFile], profile: CostProfile) -> ThresholdSweep:
    """Corpus score at every candidate threshold, in one pass over the rows sorted by score."""
    return _weighted(_sweep_totals(_corpus_rows(files)), profile)


def _best(sweep: ThresholdSweep) -> ProfileResult:
    # argmax takes the first maximum, i.e. the highest threshold on ties, as NAB does.
    return sweep.result(int(np.argmax(sweep.raw)))


def optimize_threshold(files: Iterable[ScoredFile], profile: CostProfile) -> ProfileResult:
    """The corpus-wide threshold with the highest raw score, and the score there."""
    return _best(threshold_sweep(files, profile))


def nab_scores(files: Iterable[ScoredFile],
               profiles: Mapping[str, CostProfile] = PROFILES) -> dict[str, ProfileResult]:
    """NAB's final scores: per profile, the optimized threshold and its (normalized) score."""
    totals = _sweep_totals(_corpus_rows(files))
    return {name: _best(_weighted(totals, profile)) for name, profile in profiles.items()}


def load_windows(path: str | Path) -> dict[str, list[tuple[int, int]]]:
    """Windows of NAB's ``labels/combined_windows.json``: key -> [(start_ms, end_ms), ...]."""
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not JSON: {error}") from None
    if not isinstance(document, dict):
        raise ValueError(f"{path}: expected an object mapping file keys to window lists")
    windows: dict[str, list[tuple[int, int]]] = {}
    for key, entries in document.items():
        where = f"{path}: {key!r}"
        if not isinstance(entries, list):
            raise ValueError(f"{where}: expected a list of [start, end] windows, "
                             f"received {entries!r}")
        parsed: list[tuple[int, int]] = []
        for number, entry in enumerate(entries):
            if not (isinstance(entry, list) and len(entry) == 2
                    and all(isinstance(limit, str) for limit in entry)):
                raise ValueError(f"{where}: window {number}: expected [start, end] timestamp "
                                 f"strings, received {entry!r}")
            try:
                start, end = (parse_timestamp_ms(limit) for limit in entry)
            except ValueError as error:
                raise ValueError(f"{where}: window {number}: {error}") from None
            parsed.append((start, end))
        _check_windows(parsed, where)
        windows[key] = parsed
    return windows


def _nab_timestamps(timestamps_ms: np.ndarray) -> list[str]:
    # pandas (which NAB writes with) prints whole seconds without a fraction, and a column
    # with any sub-second time with microseconds on every row.
    layout = "%Y-%m-%d %H:%M:%S" if np.all(timestamps_ms % 1000 == 0) else "%Y-%m-%d %H:%M:%S.%f"
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return [(epoch + dt.timedelta(milliseconds=int(ms))).strftime(layout)
            for ms in timestamps_ms]


def results_path(out_dir: str | Path, detector_name: str, key: str) -> Path:
    """``<out>/<detector>/<category>/<detector>_<file>.csv``, where NAB's scorer looks."""
    parts = key.split("/")
    if len(parts) != 2 or any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"expected a key like 'category/file.csv', received {key!r}")
    if detector_name in ("", ".", "..") or "/" in detector_name or "\\" in detector_name:
        raise ValueError(f"expected a detector name without path separators, "
                         f"received {detector_name!r}")
    category, file_name = parts
    return Path(out_dir) / detector_name / category / f"{detector_name}_{file_name}"


def write_nab_results(out_dir: str | Path, detector_name: str, key: str,
                      timestamps_ms: Sequence[int] | np.ndarray,
                      values: Sequence[float] | np.ndarray,
                      anomaly_scores: Sequence[float] | np.ndarray,
                      windows: Sequence[tuple[int, int]]) -> Path:
    """Write one file's results as NAB's detectors do, and return its path.

    Columns ``timestamp,value,anomaly_score,label``; ``label`` is 1 for rows inside a window
    (including the probationary period), else 0. Numbers are written in full precision, so
    NAB's scorer reads back exactly the scores that were written.
    """
    path = results_path(out_dir, detector_name, key)
    timestamps = np.asarray(timestamps_ms, dtype=np.int64)
    values = np.asarray(values, dtype=np.float64)
    scores = np.asarray(anomaly_scores, dtype=np.float64)
    if not timestamps.ndim == values.ndim == scores.ndim == 1 or not (
            timestamps.size == values.size == scores.size):
        raise ValueError(f"{key}: timestamps, values and anomaly scores must be 1-D arrays of "
                         f"one length, received {timestamps.shape}, {values.shape}, "
                         f"{scores.shape}")
    if not np.all((scores >= 0.0) & (scores <= 1.0)):
        raise ValueError(f"{key}: anomaly scores must lie in [0, 1] (NAB's range)")
    labels = np.zeros(timestamps.shape, dtype=bool)
    for start, end in windows:
        labels |= (timestamps >= start) & (timestamps <= end)
    lines = [",".join(RESULTS_HEADER)]
    lines.extend(
        f"{stamp},{float(value)!r},{float(score)!r},{int(label)}"
        for stamp, value, score, label in zip(_nab_timestamps(timestamps), values, scores,
                                              labels, strict=True)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
