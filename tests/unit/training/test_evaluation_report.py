"""The text report: each F1 line names its rule, and every figure it prints is in the JSON."""

from __future__ import annotations

import datetime as dt
import json
import re

import numpy as np

from training.evaluation import StreamScores, evaluate_scores, found_by_kind
from training.evaluation_report import report_lines

START_MS = int(dt.datetime(2014, 4, 1, tzinfo=dt.UTC).timestamp() * 1000)


def made_up_scores(stream: str, length: int, flagged: list[int], seed: int) -> StreamScores:
    rng = np.random.default_rng(seed)
    flag = np.zeros(length, bool)
    flag[flagged] = True
    surprise = rng.random(length).astype(np.float32) + 3.0 * flag
    onset = np.where(flag, surprise, 0.0).astype(np.float32)
    return StreamScores(stream, START_MS + 300_000 * np.arange(length, dtype=np.int64),
                        rng.normal(size=(length, 1)), surprise, np.zeros(length, np.float32),
                        surprise, flag, np.zeros(length, np.int32), onset)


def a_report(tmp_path) -> dict:
    scored = {"cat/a.csv": made_up_scores("cat/a.csv", 60, [12, 40, 41, 55], 1),
              "cat/b.csv": made_up_scores("cat/b.csv", 50, [30], 2)}
    labels = {key: np.zeros(len(s.flag), bool) for key, s in scored.items()}
    labels["cat/a.csv"][38:45] = True
    labels["cat/b.csv"][5:8] = True  # inside b's training prefix: not judged
    labels["cat/b.csv"][20:25] = True
    windows = {"cat/a.csv": [(int(scored["cat/a.csv"].timestamps_ms[38]),
                              int(scored["cat/a.csv"].timestamps_ms[44]))], "cat/b.csv": []}
    return evaluate_scores(scored, ["value"], labels, windows, tmp_path, threshold=0.999,
                           test_start={"cat/a.csv": 10, "cat/b.csv": 10})


def numbers_of(document) -> list[float]:
    if isinstance(document, dict):
        return [n for value in document.values() for n in numbers_of(value)]
    if isinstance(document, list):
        return [n for value in document for n in numbers_of(value)]
    if isinstance(document, bool) or not isinstance(document, int | float):
        return []
    return [float(document)]


def strings_of(document) -> list[str]:
    if isinstance(document, dict):
        return [*document, *(s for value in document.values() for s in strings_of(value))]
    if isinstance(document, list):
        return [s for value in document for s in strings_of(value)]
    return [document] if isinstance(document, str) else []


def test_every_figure_of_the_text_report_is_in_the_json(tmp_path):
    report = json.loads(json.dumps(a_report(tmp_path)))  # exactly what --json prints
    text = "\n".join(report_lines(report))
    # Names, paths and rule texts are JSON strings; what is left are the figures.
    for string in sorted(strings_of(report), key=len, reverse=True):
        if len(string) > 2:
            text = text.replace(string, " ")
    figures = re.findall(r"(?<![\w.])\d+(?:\.\d+)?(?![\w.])", text)
    assert len(figures) > 40
    numbers = numbers_of(report)
    for figure in figures:
        decimals = len(figure.partition(".")[2])
        assert any(f"{number:.{decimals}f}" == figure for number in numbers), figure


def test_each_f1_line_names_its_detection_rule(tmp_path):
    lines = report_lines(a_report(tmp_path))
    text = "\n".join(lines)
    assert "point-wise F1 " in text and (
        "(flag = likelihood >= 0.999, every reading a case)") in text
    assert "all-flag baseline F1 " in text and "(every reading flagged)" in text
    # Windows: a's found, b's (20-24) missed, recall 1/2; episodes: a's 12, 40-41 and 55 and
    # b's 30, of which 40-41 is right, precision 1/4; F1 = 2 * 1/2 * 1/4 / (3/4) = 1/3.
    assert ("window-wise F1 0.333 (a labelled window found by a flag inside it; an episode "
            "of flags ends after 3 unflagged readings (as the worker's), right when it overlaps "
            "a window)") in text
    assert "ROC AUC " in text and "ties averaged" in text
    # Only readings from each stream's test_start on are judged: b's early window is not.
    assert "labelled anomalous: 12 of the 90 evaluated readings" in text
    assert any(line.split()[:1] == ["cat/b.csv"] and line.split()[1:4] == ["40", "5", "1"]
               for line in lines)


def test_the_report_is_strict_json_with_undefined_figures_as_null() -> None:
    import json
    import math

    from training.evaluation_report import report_json

    report = {"nab": {"standard": {"normalized": math.nan, "raw": -3.5}},
              "per_stream": [{"auc": math.inf}, {"auc": 0.75}], "streams": 2}
    text = report_json(report)
    assert json.loads(text) == {"nab": {"standard": {"normalized": None, "raw": -3.5}},
                                "per_stream": [{"auc": None}, {"auc": 0.75}], "streams": 2}
    assert "NaN" not in text and "Infinity" not in text


def test_anomalies_found_per_kind_are_those_with_a_flag_inside(tmp_path):
    scored = {"a": made_up_scores("a", 60, [12, 40, 41, 55], 1),
              "b": made_up_scores("b", 50, [30], 2)}
    at = {key: scores.timestamps_ms for key, scores in scored.items()}
    windows = {"a": [(int(at["a"][12]), int(at["a"][12])),  # spike: flagged at 12
                     (int(at["a"][20]), int(at["a"][30])),  # drift: no flag inside
                     (int(at["a"][38]), int(at["a"][44]))],  # drift: flagged at 40 and 41
               "b": [(int(at["b"][29]), int(at["b"][31])),  # spike: flagged at 30
                     (int(at["b"][-1]) + 1, int(at["b"][-1]) + 9)],  # no reading: left out
               "c": [(int(at["a"][0]), int(at["a"][-1]))]}  # no such stream: left out
    kinds = {"a": ["spike", "drift", "drift"], "b": ["spike", "dropout"], "c": ["stuck"]}
    by_kind = found_by_kind(scored, windows, kinds)
    assert by_kind == {"drift": {"anomalies": 2, "found": 1},
                       "spike": {"anomalies": 2, "found": 2}}
    report = {**a_report(tmp_path), "by_kind": by_kind}
    assert ("anomalies found by kind (a flag inside the labelled anomaly): drift 1/2, "
            "spike 2/2") in report_lines(report)
