"""How well flags and scores match anomaly labels: point-wise, window-wise and ROC AUC.

Every function takes per-stream arrays (one per stream, in any order) and pools them, so a
corpus is judged as one set of readings. Each metric's dictionary carries a ``rule``: the
detection rule in words, which the text report prints beside the figure.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from detector.episodes import episode_spans


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Inclusive (first, last) index pairs of the True runs of ``mask`` (labeled windows;
    flags fold into episodes by :func:`detector.episodes.episode_spans` instead)."""
    index = np.flatnonzero(np.asarray(mask, dtype=bool))
    if index.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(index) > 1)
    starts = np.concatenate([[index[0]], index[breaks + 1]])
    ends = np.concatenate([index[breaks], [index[-1]]])
    return [(int(a), int(b)) for a, b in zip(starts, ends, strict=True)]


def f1_from_counts(true_positives: int, false_positives: int, false_negatives: int) -> float:
    """TP / (TP + (FP + FN) / 2), SKAB's way of writing F1; 0 when there is nothing to find
    and nothing was flagged (no case can be right)."""
    denominator = true_positives + (false_positives + false_negatives) / 2
    return true_positives / denominator if denominator else 0.0


def _ratio(a: int, b: int) -> float:
    return a / b if b else 0.0


def _pooled(arrays: Sequence[np.ndarray], dtype: type) -> np.ndarray:
    return (np.concatenate([np.asarray(a, dtype) for a in arrays]) if len(arrays)
            else np.zeros(0, dtype))


def pointwise_metrics(flags: Sequence[np.ndarray], labels: Sequence[np.ndarray],
                      threshold: float | None = None) -> dict:
    """Precision, recall and F1 over every reading of every stream, each reading a case."""
    flag, label = _pooled(flags, bool), _pooled(labels, bool)
    tp = int(np.sum(flag & label))
    fp = int(np.sum(flag & ~label))
    fn = int(np.sum(~flag & label))
    rule = "every reading a case"
    if threshold is not None:
        rule = f"flag = likelihood >= {threshold:g}, {rule}"
    return {"precision": _ratio(tp, tp + fp), "recall": _ratio(tp, tp + fn),
            "f1": f1_from_counts(tp, fp, fn), "true_positives": tp, "false_positives": fp,
            "false_negatives": fn, "rule": rule}


def all_flag_baseline(labels: Sequence[np.ndarray]) -> dict:
    """The point-wise figures of flagging every reading: the trivial detector any F1 must be
    quoted next to, since on data with long faults it already scores high."""
    label = _pooled(labels, bool)
    positives = int(label.sum())
    negatives = int(label.size - positives)
    return {"precision": _ratio(positives, label.size), "recall": 1.0 if positives else 0.0,
            "f1": f1_from_counts(positives, negatives, 0), "readings": int(label.size),
            "labeled_readings": positives, "rule": "every reading flagged"}


def roc_auc(scores: Sequence[np.ndarray], labels: Sequence[np.ndarray]) -> dict:
    """The ROC AUC of pooled per-reading scores against labels (rank-based, ties averaged).

    The AUC is the chance that a random anomalous reading scores above a random normal one
    (a tie counting half): the Mann-Whitney U of the anomalous readings' ranks over
    ``positives * negatives``. ``auc`` is None when either class is absent (no ranking to
    judge).
    """
    score, label = _pooled(scores, np.float64), _pooled(labels, bool)
    positives = int(label.sum())
    negatives = int(label.size - positives)
    rule = "rank of every reading's surprise against its label, ties averaged"
    if positives == 0 or negatives == 0:
        return {"auc": None, "positives": positives, "negatives": negatives, "rule": rule}
    order = np.argsort(score, kind="stable")
    ordered = score[order]
    # Tied scores share the mean of the 1-based ranks they span.
    group_starts = np.flatnonzero(np.concatenate([[True], ordered[1:] != ordered[:-1]]))
    group_ends = np.concatenate([group_starts[1:], [ordered.size]])
    mean_rank = (group_starts + 1 + group_ends) / 2.0
    ranks = np.empty(score.size, dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, group_ends - group_starts)
    u_statistic = ranks[label].sum() - positives * (positives + 1) / 2.0
    return {"auc": float(u_statistic / (positives * negatives)), "positives": positives,
            "negatives": negatives, "rule": rule}


def windowwise_metrics(flags: Sequence[np.ndarray], labels: Sequence[np.ndarray],
                       episode_gap: int = 3) -> dict:
    """Labeled windows found, and detection episodes that were right, over every stream.

    A labeled window (a run of labeled readings) is found when a flag falls inside it; a
    detection episode is correct when it overlaps a labeled window. Episodes are the
    worker's (:mod:`detector.episodes`): one ends after ``episode_gap`` unflagged readings,
    so flags separated by fewer belong to one episode.
    """
    windows = found = episodes = correct = 0
    for flag, label in zip(flags, labels, strict=True):
        label = np.asarray(label, bool)
        flag = np.asarray(flag, bool)
        for first, last in runs(label):
            windows += 1
            found += bool(flag[first: last + 1].any())
        for first, last in episode_spans(flag, episode_gap):
            episodes += 1
            correct += bool(label[first: last + 1].any())
    precision, recall = _ratio(correct, episodes), _ratio(found, windows)
    f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1, "windows": windows,
            "windows_found": found, "episodes": episodes, "episodes_correct": correct,
            "rule": f"a labelled window found by a flag inside it; an episode of flags ends "
                    f"after {episode_gap} unflagged readings (as the worker's), right when it "
                    f"overlaps a window"}
