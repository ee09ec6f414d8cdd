"""NAB results files get a row per input row, a dropped repeat scoring 0."""

from __future__ import annotations

import numpy as np
import pytest

from training.nab_results import scores_per_input_row


def test_a_dropped_repeat_scores_zero_and_every_other_row_keeps_its_score():
    inputs = np.array([0, 10, 20, 10, 20, 30, 40])  # 10 and 20 repeat (a daylight-saving hour)
    scored = np.array([0, 10, 20, 30, 40])
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    assert scores_per_input_row(inputs, scored, scores, "f.csv").tolist() == [
        0.1, 0.2, 0.3, 0.0, 0.0, 0.4, 0.5]


def test_rows_that_do_not_match_the_scored_series_are_an_error():
    with pytest.raises(ValueError, match=r"f\.csv: its rows no longer match the series that "
                                         r"was scored \(4 advancing rows, 3 scored\)"):
        scores_per_input_row(np.array([0, 10, 20, 30]), np.array([0, 10, 20]),
                             np.array([0.1, 0.2, 0.3]), "f.csv")
