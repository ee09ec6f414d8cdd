"""Point-wise F1 as SKAB writes it, the all-flag baseline and the rank-based ROC AUC."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from training.detection_metrics import (
    all_flag_baseline,
    f1_from_counts,
    pointwise_metrics,
    roc_auc,
    windowwise_metrics,
)


def test_pointwise_f1_is_tp_over_tp_plus_half_the_errors_pooled_over_streams():
    flags = [np.array([1, 1, 0, 0], bool), np.array([1, 0, 0], bool)]
    labels = [np.array([1, 0, 1, 0], bool), np.array([1, 1, 0], bool)]
    result = pointwise_metrics(flags, labels, threshold=0.999)
    assert (result["true_positives"], result["false_positives"],
            result["false_negatives"]) == (2, 1, 2)
    assert result["f1"] == pytest.approx(2 / (2 + 3 / 2))
    assert result["precision"] == pytest.approx(2 / 3) and result["recall"] == 0.5
    assert result["rule"] == "flag = likelihood >= 0.999, every reading a case"
    assert f1_from_counts(0, 0, 0) == 0.0


def test_all_flag_baseline_flags_every_reading():
    labels = [np.array([0, 0, 1, 1, 1], bool), np.array([0, 0, 0, 0, 0], bool)]
    baseline = all_flag_baseline(labels)
    # TP = 3 labeled, FP = 7 normal, FN = 0.
    assert baseline["f1"] == pytest.approx(3 / (3 + 7 / 2))
    assert baseline["precision"] == pytest.approx(0.3) and baseline["recall"] == 1.0
    assert (baseline["readings"], baseline["labeled_readings"]) == (10, 3)


def _pairwise_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """The AUC by its definition: over every (anomalous, normal) pair, 1 when the anomalous
    reading scores higher, 1/2 on a tie."""
    positive, negative = scores[labels], scores[~labels]
    wins = [1.0 if p > n else 0.5 if p == n else 0.0
            for p, n in itertools.product(positive, negative)]
    return float(np.mean(wins))


def test_roc_auc_ranks_scores_with_ties_averaged():
    assert roc_auc([np.array([0.1, 0.2, 0.9, 0.8])],
                   [np.array([0, 0, 1, 1], bool)])["auc"] == 1.0
    assert roc_auc([np.array([0.9, 0.8, 0.1, 0.2])],
                   [np.array([0, 0, 1, 1], bool)])["auc"] == 0.0
    assert roc_auc([np.full(6, 3.0)], [np.array([0, 1, 0, 1, 0, 0], bool)])["auc"] == 0.5
    rng = np.random.default_rng(4)
    scores = rng.integers(0, 5, size=60).astype(float)  # many ties
    labels = rng.random(60) < 0.3
    pooled = roc_auc([scores[:25], scores[25:]], [labels[:25], labels[25:]])
    assert pooled["auc"] == pytest.approx(_pairwise_auc(scores, labels), abs=1e-12)
    assert (pooled["positives"], pooled["negatives"]) == (int(labels.sum()),
                                                          int((~labels).sum()))


def test_roc_auc_is_none_when_a_class_is_missing():
    assert roc_auc([np.array([0.1, 0.2])], [np.array([0, 0], bool)])["auc"] is None
    assert roc_auc([np.array([0.1, 0.2])], [np.array([1, 1], bool)])["auc"] is None


def test_windowwise_rule_names_the_episode_gap():
    flags = [np.array([0, 1, 0, 0, 1, 0, 0, 0, 0, 1], bool)]
    labels = [np.array([0, 1, 1, 0, 0, 0, 0, 0, 0, 0], bool)]
    result = windowwise_metrics(flags, labels, episode_gap=3)
    # Flags at 1 and 4 are one episode (two quiet readings), the flag at 9 another (after
    # four): an episode ends after 3 unflagged readings, as in the worker.
    assert (result["windows"], result["windows_found"]) == (1, 1)
    assert (result["episodes"], result["episodes_correct"]) == (2, 1)
    assert "an episode of flags ends after 3 unflagged readings" in result["rule"]
    three_quiet = [np.array([1, 0, 0, 0, 1], bool)]
    assert windowwise_metrics(three_quiet, [np.zeros(5, bool)], 3)["episodes"] == 2
    assert windowwise_metrics(three_quiet, [np.zeros(5, bool)], 4)["episodes"] == 1
