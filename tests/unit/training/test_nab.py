"""NAB scoring: hand-computed cases, the sweep against the direct score, file formats.

Arithmetic in the comments uses scaled_sigmoid(y) = 2 / (1 + exp(5y)) - 1 = -tanh(5y / 2), so
max_tp = scaled_sigmoid(-1) = tanh(2.5) = 0.9866142981514303.
"""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from detector.readings import parse_timestamp_ms
from training.nab import (
    MAX_TP,
    NO_DETECTION_THRESHOLD,
    PROFILES,
    ScoredFile,
    load_windows,
    nab_scores,
    optimize_threshold,
    probation_rows,
    scaled_sigmoid,
    score_at_threshold,
    threshold_sweep,
    write_nab_results,
)

STANDARD = PROFILES["standard"]
BASE_MS = 1_396_310_400_000  # 2014-04-01 00:00:00 UTC
STEP_MS = 300_000  # five minutes


def row_ms(row: int) -> int:
    return BASE_MS + STEP_MS * row


def make_file(n: int, window_rows: list[tuple[int, int]], flags: dict[int, float],
              key: str = "test/file.csv") -> ScoredFile:
    """n rows five minutes apart; windows given as (first row, last row); other scores 0."""
    scores = np.zeros(n)
    for row, score in flags.items():
        scores[row] = score
    timestamps = np.array([row_ms(row) for row in range(n)], dtype=np.int64)
    return ScoredFile(key, timestamps, scores,
                      tuple((row_ms(first), row_ms(last)) for first, last in window_rows))


def test_scaled_sigmoid_matches_nab() -> None:
    assert scaled_sigmoid(-1.0) == pytest.approx(0.9866142981514303)  # tanh(2.5)
    assert scaled_sigmoid(-1.0) == MAX_TP
    assert scaled_sigmoid(-0.5) == pytest.approx(0.8482836399575129)  # tanh(1.25)
    assert scaled_sigmoid(0.0) == 0.0
    # The cut-off is y > 3: at exactly 3 the sigmoid still applies, -tanh(7.5).
    assert scaled_sigmoid(3.0) == pytest.approx(-0.9999993881955461, abs=1e-15)
    assert scaled_sigmoid(3.0) != -1.0
    assert scaled_sigmoid(3.0001) == -1.0


@pytest.mark.parametrize(("n", "rows"), [(0, 0), (6, 0), (7, 1), (20, 3), (40, 6), (100, 15),
                                         (5000, 750), (5001, 750), (10_000, 750)])
def test_probation_rows(n: int, rows: int) -> None:
    # floor(0.15 n), at most 0.15 * 5000 = 750: 6 -> floor(0.9) = 0, 7 -> floor(1.05) = 1.
    assert probation_rows(n) == rows


def test_detection_at_window_start_scores_full_tp() -> None:
    # 20 rows, probation 3; window rows 10..14 (length 5); flag at row 10.
    # position = -(14 - 10 + 1) / 5 = -1 -> scaled_sigmoid(-1) / max_tp * 1.0 = 1.0.
    # null = -1 * 1 window, perfect = 1 * 1 window -> 100 * (1 - -1) / (1 - -1) = 100.
    corpus = [make_file(20, [(10, 14)], {10: 1.0})]
    result = score_at_threshold(corpus, STANDARD, 0.5)
    assert result.raw == pytest.approx(1.0)
    assert result.normalized == pytest.approx(100.0)
    assert (result.null, result.perfect) == (-1.0, 1.0)
    assert (result.tp_windows, result.fn_windows, result.fp_rows) == (1, 0, 0)
    # Candidates: 1.1 (nothing, -1), 1.0 (row 10 only, +1.0) and 0.0 (every row from 3 on:
    # +1.0 and 12 false positives); 1.0 is the best.
    best = optimize_threshold(corpus, STANDARD)
    assert best.threshold == 1.0
    assert best.raw == pytest.approx(1.0)
    assert best.normalized == pytest.approx(100.0)


def test_detection_at_window_end_scores_small_tp() -> None:
    # Flag at row 14, the last row of window 10..14: position = -(14 - 14 + 1) / 5 = -0.2.
    # scaled_sigmoid(-0.2) = tanh(0.5) = 0.46211715726000974; / max_tp = 0.4683868439022782.
    # normalized = 100 * (0.4683868439022782 + 1) / 2 = 73.41934219511391.
    result = score_at_threshold([make_file(20, [(10, 14)], {14: 1.0})], STANDARD, 0.5)
    assert result.raw == pytest.approx(0.4683868439022782)
    assert result.normalized == pytest.approx(73.41934219511391)
    assert (result.tp_windows, result.fn_windows, result.fp_rows) == (1, 0, 0)


def test_false_positive_before_any_window_costs_full_fp_weight() -> None:
    # Flag at row 5, before window 10..14, which is then missed: -0.11 - 1.0 = -1.11.
    # normalized = 100 * (-1.11 - -1) / (1 - -1) = -5.5.
    result = score_at_threshold([make_file(20, [(10, 14)], {5: 1.0})], STANDARD, 0.5)
    assert result.raw == pytest.approx(-1.11)
    assert result.normalized == pytest.approx(-5.5)
    assert (result.tp_windows, result.fn_windows, result.fp_rows) == (0, 1, 1)


def test_false_positive_shortly_after_window_costs_little() -> None:
    # Window 10..14 hit at row 10 (+1.0); flag at row 15: position_past = |14 - 15| / (5 - 1)
    # = 0.25; scaled_sigmoid(0.25) = -tanh(0.625) = -0.5545997223493823; * 0.11 =
    # -0.06100596945843205. raw = 1 - 0.06100596945843205 = 0.9389940305415679.
    result = score_at_threshold([make_file(20, [(10, 14)], {10: 1.0, 15: 1.0})], STANDARD, 0.5)
    assert result.raw == pytest.approx(0.9389940305415679)
    assert (result.tp_windows, result.fn_windows, result.fp_rows) == (1, 0, 1)


def test_false_positive_far_after_window_costs_full_fp_weight() -> None:
    # Window 10..11 (length 2) hit at row 10; flag at row 15: position_past = 4 / (2 - 1) = 4
    # > 3 -> -1.0 * 0.11. raw = 1 - 0.11 = 0.89.
    result = score_at_threshold([make_file(20, [(10, 11)], {10: 1.0, 15: 1.0})], STANDARD, 0.5)
    assert result.raw == pytest.approx(0.89)
    # At row 14 the position is exactly 3: -tanh(7.5) * 0.11 = -0.10999993270151008, so
    # raw = 0.8900000672984899, not quite the full penalty.
    result = score_at_threshold([make_file(20, [(10, 11)], {10: 1.0, 14: 1.0})], STANDARD, 0.5)
    assert result.raw == pytest.approx(0.8900000672984899, abs=1e-12)
    assert result.raw != pytest.approx(0.89, abs=1e-9)


def test_false_positive_after_one_row_window_costs_full_fp_weight() -> None:
    # Window 10..10 has length 1, so prev_length - 1 = 0 (NAB would divide by zero); the
    # distance counts as infinite: 1.0 (hit at row 10) - 0.11 (flag at row 11) = 0.89.
    result = score_at_threshold([make_file(20, [(10, 10)], {10: 1.0, 11: 1.0})], STANDARD, 0.5)
    assert result.raw == pytest.approx(0.89)
    assert (result.tp_windows, result.fn_windows, result.fp_rows) == (1, 0, 1)


def test_no_detection_scores_null() -> None:
    # Two windows, every score 0.2 < threshold 0.5: raw = -1.0 * 2 windows, normalized 0.
    scored = make_file(20, [(4, 6), (10, 14)], dict.fromkeys(range(20), 0.2))
    result = score_at_threshold([scored], STANDARD, 0.5)
    assert result.raw == pytest.approx(-2.0)
    assert result.normalized == pytest.approx(0.0)
    assert (result.tp_windows, result.fn_windows, result.fp_rows) == (0, 2, 0)


def test_constant_detector_is_best_flagging_nothing() -> None:
    # NAB's null detector: a constant 0.5 on 40 rows (probation 6), window 30..34.
    # Threshold 0.5 flags rows 6..39: 24 FPs before the window = -24 * 0.11 = -2.64; row 30
    # = +1.0; rows 35..39 at positions 1/4 .. 5/4: -0.11 * (tanh(0.625) + tanh(1.25) +
    # tanh(1.875) + tanh(2.5) + tanh(3.125)) = -0.11 * (0.55460 + 0.84828 + 0.95405 +
    # 0.98661 + 0.99615) = -0.47737; raw = -2.117365839644278.
    # Threshold 1.1 (nothing flagged) = -1.0, which wins: normalized 0.
    scored = make_file(40, [(30, 34)], dict.fromkeys(range(40), 0.5))
    assert score_at_threshold([scored], STANDARD, 0.5).raw == pytest.approx(-2.117365839644278)
    best = optimize_threshold([scored], STANDARD)
    assert best.threshold == NO_DETECTION_THRESHOLD
    assert best.raw == pytest.approx(-1.0)
    assert best.normalized == pytest.approx(0.0)
    assert (best.tp_windows, best.fn_windows, best.fp_rows) == (0, 1, 0)


def test_two_detections_in_one_window_count_once_the_earlier() -> None:
    # Window 10..14; row 12 scores 0.9, row 11 scores 0.8.
    # Threshold 0.9: row 12, position -(14 - 12 + 1) / 5 = -0.6 -> tanh(1.5) / tanh(2.5)
    #   = 0.9051482536448664 / 0.9866142981514303 = 0.9174286804284078.
    # Threshold 0.8: rows 11 and 12; the earlier, row 11, counts alone: position -0.8 ->
    #   tanh(2.0) / tanh(2.5) = 0.9640275800758169 / 0.9866142981514303 = 0.9771068409226047.
    corpus = [make_file(20, [(10, 14)], {12: 0.9, 11: 0.8})]
    at_09 = score_at_threshold(corpus, STANDARD, 0.9)
    at_08 = score_at_threshold(corpus, STANDARD, 0.8)
    assert at_09.raw == pytest.approx(0.9174286804284078)
    assert at_08.raw == pytest.approx(0.9771068409226047)
    assert (at_08.tp_windows, at_08.fn_windows, at_08.fp_rows) == (1, 0, 0)
    sweep = threshold_sweep(corpus, STANDARD)
    assert sweep.thresholds.tolist() == [NO_DETECTION_THRESHOLD, 0.9, 0.8, 0.0]
    assert sweep.raw[:3] == pytest.approx([-1.0, 0.9174286804284078, 0.9771068409226047])
    assert sweep.tp_windows[:3].tolist() == [0, 1, 1]


def test_equal_scores_choose_the_higher_threshold() -> None:
    # Row 10 (window start) scores 0.9, row 12 scores 0.8: both thresholds give exactly 1.0,
    # since row 12 does not beat row 10; 0.0 adds 12 FPs. Ties go to the higher threshold.
    best = optimize_threshold([make_file(20, [(10, 14)], {10: 0.9, 12: 0.8})], STANDARD)
    assert best.threshold == 0.9
    assert best.raw == pytest.approx(1.0)


def test_probationary_period_is_ignored() -> None:
    # 20 rows, probation 3 (rows 0..2). Window 1..2 lies inside it: flags at row 0 (outside
    # windows) and row 1 (inside) count as nothing, and the window is neither TP nor FN.
    # Window 10..14 hit at its start: raw = 1.0; null = -1, perfect = 1 (one scored window).
    result = score_at_threshold([make_file(20, [(1, 2), (10, 14)], {0: 1.0, 1: 1.0, 10: 1.0})],
                                STANDARD, 0.5)
    assert result.raw == pytest.approx(1.0)
    assert (result.null, result.perfect, result.normalized) == (-1.0, 1.0, pytest.approx(100.0))
    assert (result.tp_windows, result.fn_windows, result.fp_rows) == (1, 0, 0)


def test_window_straddling_probation_keeps_its_full_length() -> None:
    # Window 2..5 (length 4) starts in the probation (rows 0..2): the flag at row 2 is
    # ignored; row 4 counts at position -(5 - 4 + 1) / 4 = -0.5 -> tanh(1.25) / tanh(2.5)
    # = 0.8597925669097837; normalized = 100 * (0.8597925669097837 + 1) / 2 = 92.98962834548918.
    result = score_at_threshold([make_file(20, [(2, 5)], {2: 1.0, 4: 1.0})], STANDARD, 0.5)
    assert result.raw == pytest.approx(0.8597925669097837)
    assert result.normalized == pytest.approx(92.98962834548918)


def test_window_in_probation_still_precedes_later_false_positives() -> None:
    # Window 1..2 (length 2) is in the probation; a flag at row 4 is 2 / (2 - 1) = 2 past it:
    # scaled_sigmoid(2) = -tanh(5) = -0.9999092042625951; * 0.11 = -0.10999001246888546.
    # No window is scored, so null = perfect = 0 and the normalized score is undefined.
    result = score_at_threshold([make_file(20, [(1, 2)], {4: 1.0})], STANDARD, 0.5)
    assert result.raw == pytest.approx(-0.10999001246888546)
    assert (result.tp_windows, result.fn_windows, result.fp_rows) == (0, 0, 1)
    assert math.isnan(result.normalized)


def test_window_without_rows_is_ignored() -> None:
    # A window between rows 5 and 6 contains no row: it can be neither hit nor missed.
    scored = make_file(20, [(10, 14)], {10: 1.0})
    gap = ScoredFile("test/gap.csv", scored.timestamps_ms, scored.anomaly_scores,
                     ((row_ms(5) + 60_000, row_ms(5) + 120_000), *scored.windows))
    result = score_at_threshold([gap], STANDARD, 0.5)
    assert (result.raw, result.null, result.tp_windows, result.fn_windows) == (
        pytest.approx(1.0), -1.0, 1, 0)


def profile_corpus() -> list[ScoredFile]:
    return [
        make_file(40, [(36, 37)], {37: 1.0}, key="artificialWithAnomaly/a.csv"),
        make_file(20, [(10, 14), (17, 19)], {16: 1.0}, key="realKnownCause/b.csv"),
    ]


# Corpus of profile_corpus(), weights tp = 1, fp = f, fn = m; 3 scored windows.
# a.csv: 40 rows, probation 6, window 36..37 (length 2), row 37 scores 1, the rest 0.
# b.csv: 20 rows, probation 3, windows 10..14 and 17..19, row 16 scores 1, the rest 0.
# Threshold 1.1: nothing flagged: -3m.
# Threshold 1.0: a: row 37 at -(37 - 37 + 1) / 2 = -0.5 -> tanh(1.25) / tanh(2.5) =
#   0.8597925669097837. b: row 16 is |14 - 16| / (5 - 1) = 0.5 past window 10..14 ->
#   -tanh(1.25) f = -0.8482836399575129 f; both windows missed: -2m.
#   Total 0.8597925669097837 - 0.8482836399575129 f - 2m.
# Threshold 0.0: a: rows 6..35 are 30 FPs before any window (-30 f), row 36 hits the window
#   start (+1), rows 38, 39 are 1 and 2 past window 36..37: -(tanh(2.5) + tanh(5)) f =
#   -(0.9866142981514303 + 0.9999092042625951) f. b: rows 3..9 are 7 FPs (-7 f), rows 10
#   and 17 hit the window starts (+2), rows 15, 16 are 0.25 and 0.5 past window 10..14:
#   -(tanh(0.625) + tanh(1.25)) f = -(0.5545997223493823 + 0.8482836399575129) f.
#   Total 3 - 40.38940686622091 f.
# standard (f 0.11, m 1): -3 | 0.85979 - 0.09331 - 2 = -1.2335186334855428 | 3 - 4.44283
#   = -1.4428347551193013 -> 1.0 wins; normalized 100 * (-1.23352 + 3) / 6 = 29.44135610857.
# reward_low_FP_rate (f 0.22, m 1): -3 | -1.3268298338808693 | -5.8856695102386025 -> 1.0;
#   normalized 100 * (-1.32683 + 3) / 6 = 27.886169435318845.
# reward_low_FN_rate (f 0.11, m 2): -6 | -3.233518633485543 | -1.4428347551193013 -> 0.0;
#   normalized 100 * (-1.44283 + 6) / (3 + 6) = 50.63516938756331.
@pytest.mark.parametrize(("name", "threshold", "raw", "normalized", "null", "counts"), [
    ("standard", 1.0, -1.2335186334855428, 29.441356108574286, -3.0, (1, 2, 1)),
    ("reward_low_FP_rate", 1.0, -1.3268298338808693, 27.886169435318845, -3.0, (1, 2, 1)),
    ("reward_low_FN_rate", 0.0, -1.4428347551193013, 50.63516938756331, -6.0, (3, 0, 41)),
])
def test_profiles_on_a_small_corpus(name: str, threshold: float, raw: float, normalized: float,
                                    null: float, counts: tuple[int, int, int]) -> None:
    result = nab_scores(profile_corpus())[name]
    assert result.profile == name
    assert result.threshold == threshold
    assert result.raw == pytest.approx(raw)
    assert result.normalized == pytest.approx(normalized)
    assert (result.null, result.perfect) == (null, 3.0)
    assert (result.tp_windows, result.fn_windows, result.fp_rows) == counts
    direct = score_at_threshold(profile_corpus(), PROFILES[name], threshold)
    assert (direct.raw, direct.fp_rows) == (pytest.approx(result.raw), result.fp_rows)


def random_corpus(seed: int) -> list[ScoredFile]:
    """Irregular timestamps, windows on and between rows, tied scores, and one file with
    every edge case: a window in the probation, one straddling it, a one-row window and a
    window without rows; plus a file without windows."""
    rng = np.random.default_rng(seed)
    files = []
    for number in range(5):
        n = int(rng.integers(8, 160))
        timestamps = BASE_MS + np.cumsum(rng.integers(1, 4, size=n)) * 60_000
        windows = []
        cursor = int(timestamps[0]) - 120_000
        while True:
            start = cursor + int(rng.integers(0, 40)) * 60_000 + int(rng.integers(0, 2)) * 30_000
            end = start + int(rng.integers(0, 12)) * 60_000
            if end > timestamps[-1] + 60_000:
                break
            windows.append((start, end))
            cursor = end + 60_000
        scores = np.round(rng.random(n) ** 2 * 20) / 20
        files.append(ScoredFile(f"random/f{number}.csv", timestamps, scores, tuple(windows)))
    edge = make_file(40, [(1, 2), (5, 8), (12, 12), (30, 35)], {}, key="edge/e.csv")
    edge_windows = (*edge.windows[:3], (row_ms(20) + 60_000, row_ms(20) + 120_000),
                    edge.windows[3])
    files.append(ScoredFile("edge/e.csv", edge.timestamps_ms,
                            np.round(rng.random(40) * 10) / 10, edge_windows))
    files.append(ScoredFile("edge/no_windows.csv", edge.timestamps_ms,
                            np.round(rng.random(40) * 10) / 10, ()))
    return files


@pytest.mark.parametrize("seed", [7, 2015])
def test_sweep_equals_direct_score_at_every_threshold(seed: int) -> None:
    corpus = random_corpus(seed)
    scored_scores = {float(s) for f in corpus
                     for s in f.anomaly_scores[probation_rows(len(f.anomaly_scores)):]}
    for profile in PROFILES.values():
        sweep = threshold_sweep(corpus, profile)
        assert sweep.thresholds[0] == NO_DETECTION_THRESHOLD
        assert set(sweep.thresholds[1:].tolist()) == scored_scores
        assert np.all(np.diff(sweep.thresholds) < 0)
        direct = [score_at_threshold(corpus, profile, float(t)) for t in sweep.thresholds]
        for index, expected in enumerate(direct):
            got = sweep.result(index)
            assert got.raw == pytest.approx(expected.raw, abs=1e-9), (profile.name, index)
            assert (got.tp_windows, got.fn_windows, got.fp_rows) == (
                expected.tp_windows, expected.fn_windows, expected.fp_rows)
            assert got.normalized == pytest.approx(expected.normalized, abs=1e-9)
        best_raw = max(result.raw for result in direct)
        highest_best = next(r for r in direct if r.raw >= best_raw - 1e-9)
        best = optimize_threshold(corpus, profile)
        assert best.raw == pytest.approx(best_raw, abs=1e-9)
        assert best.threshold == highest_best.threshold
        assert nab_scores(corpus)[profile.name] == best


def test_scores_are_in_the_corpus_not_per_file() -> None:
    # The same threshold serves every file: the corpus score is the sum of the files' scores.
    first, second = profile_corpus()
    both = score_at_threshold([first, second], STANDARD, 1.0)
    apart = [score_at_threshold([f], STANDARD, 1.0) for f in (first, second)]
    assert both.raw == pytest.approx(sum(r.raw for r in apart))
    assert both.fp_rows == sum(r.fp_rows for r in apart)


def test_load_windows_reads_nab_labels(tmp_path) -> None:
    path = tmp_path / "combined_windows.json"
    path.write_text(
        '{"realKnownCause/nyc_taxi.csv": [["2014-04-01 00:00:00.000000", '
        '"2014-04-01 01:00:00.000000"], ["2014-04-02 00:00:00.000000", '
        '"2014-04-02 00:05:00.000000"]], "artificialNoAnomaly/flat.csv": []}',
        encoding="utf-8")
    # 2014-04-01 00:00 UTC = 1396310400 s; + 3600 s; + 86400 s; + 86700 s.
    assert load_windows(path) == {
        "realKnownCause/nyc_taxi.csv": [(1_396_310_400_000, 1_396_314_000_000),
                                        (1_396_396_800_000, 1_396_397_100_000)],
        "artificialNoAnomaly/flat.csv": [],
    }


@pytest.mark.parametrize(("text", "fragment"), [
    ('{"a/b.csv": [["2014-04-01 00:00:00"]]}', "window 0: expected [start, end]"),
    ('{"a/b.csv": "2014-04-01 00:00:00"}', "expected a list"),
    ('{"a/b.csv": [["yesterday", "2014-04-01 00:00:00"]]}', "'yesterday'"),
    ('{"a/b.csv": [["2014-04-02 00:00:00", "2014-04-01 00:00:00"]]}', "starts after it ends"),
    ('{"a/b.csv": [["2014-04-01 00:00:00", "2014-04-01 02:00:00"], '
     '["2014-04-01 01:00:00", "2014-04-01 03:00:00"]]}', "not overlapping"),
])
def test_load_windows_names_file_and_key(tmp_path, text: str, fragment: str) -> None:
    path = tmp_path / "labels.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError) as raised:
        load_windows(path)
    message = str(raised.value)
    assert str(path) in message
    assert "'a/b.csv'" in message
    assert fragment in message


@pytest.mark.parametrize("text", ["[1, 2]", "{not json"])
def test_load_windows_names_file_when_not_an_object(tmp_path, text: str) -> None:
    path = tmp_path / "labels.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=r"labels\.json"):
        load_windows(path)


def test_write_nab_results_layout(tmp_path) -> None:
    timestamps = [row_ms(row) for row in range(4)]
    path = write_nab_results(tmp_path, "cellwatch", "realKnownCause/nyc_taxi.csv", timestamps,
                             [10.0, 12.5, 100.0, 11.0], [0.0, 0.25, 0.9, 0.125],
                             [(row_ms(1), row_ms(2))])
    assert path == tmp_path / "cellwatch" / "realKnownCause" / "cellwatch_nyc_taxi.csv"
    assert path.read_text(encoding="utf-8") == (
        "timestamp,value,anomaly_score,label\n"
        "2014-04-01 00:00:00,10.0,0.0,0\n"
        "2014-04-01 00:05:00,12.5,0.25,1\n"
        "2014-04-01 00:10:00,100.0,0.9,1\n"
        "2014-04-01 00:15:00,11.0,0.125,0\n"
    )
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [parse_timestamp_ms(r["timestamp"]) for r in rows] == timestamps
    assert [float(r["anomaly_score"]) for r in rows] == [0.0, 0.25, 0.9, 0.125]


def test_write_nab_results_keeps_sub_second_times(tmp_path) -> None:
    path = write_nab_results(tmp_path, "cw", "c/f.csv", [BASE_MS, BASE_MS + 1500], [1.0, 2.0],
                             [0.0, 1.0], [])
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[1:] == ["2014-04-01 00:00:00.000000,1.0,0.0,0",
                         "2014-04-01 00:00:01.500000,2.0,1.0,0"]


@pytest.mark.parametrize(("detector", "key"), [("cw", "nyc_taxi.csv"), ("cw", "../x/y.csv"),
                                                ("cw", "a/b/c.csv"), ("c/w", "a/b.csv")])
def test_write_nab_results_rejects_paths_outside_the_layout(tmp_path, detector: str,
                                                            key: str) -> None:
    with pytest.raises(ValueError):
        write_nab_results(tmp_path, detector, key, [BASE_MS], [1.0], [0.5], [])


@pytest.mark.parametrize(("timestamps", "scores", "windows", "fragment"), [
    ([BASE_MS, BASE_MS + 1], [0.1], (), "1 anomaly scores for 2 timestamps"),
    ([BASE_MS + 1, BASE_MS], [0.1, 0.2], (), "strictly increasing"),
    ([BASE_MS, BASE_MS + 1], [0.1, 1.5], (), "[0, 1]"),
    ([BASE_MS, BASE_MS + 1], [0.1, float("nan")], (), "[0, 1]"),
    ([BASE_MS, BASE_MS + 1], [0.1, 0.2], ((BASE_MS, BASE_MS + 1), (BASE_MS + 1, BASE_MS + 2)),
     "not overlapping"),
])
def test_scored_file_rejects_bad_input(timestamps, scores, windows, fragment: str) -> None:
    with pytest.raises(ValueError) as raised:
        ScoredFile("cat/bad.csv", np.array(timestamps, dtype=np.int64), scores, windows)
    assert "cat/bad.csv" in str(raised.value)
    assert fragment in str(raised.value)


def test_corpus_rejects_a_file_twice() -> None:
    scored = make_file(20, [(10, 14)], {10: 1.0})
    with pytest.raises(ValueError, match=r"test/file\.csv"):
        nab_scores([scored, scored])
