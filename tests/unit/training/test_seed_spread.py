"""An evaluation protocol over several training seeds: every seed's report kept, the key
figures' spread summarized."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.seed_spread import evaluate_over_seeds, parse_seeds, spread_lines
from training.trainer import TrainingOptions


def fake_protocol(calls: list):
    """A protocol whose figures depend on the seed it trains with, as a real one's do."""

    def run_once(options: TrainingOptions, directory: Path) -> dict:
        calls.append((options.seed, directory))
        seed = options.seed
        return {"protocol": "skab", "pointwise": {"f1": 0.5 + seed / 100, "precision": 0.9,
                                                  "recall": None},
                "roc_auc": {"auc": 0.8 - seed / 1000}}

    return run_once


def test_each_seed_runs_once_and_the_summary_spreads_its_figures(tmp_path):
    calls: list = []
    summary = evaluate_over_seeds(fake_protocol(calls), TrainingOptions(epochs=1), [7, 9],
                                  tmp_path)
    assert calls == [(7, tmp_path / "seed-7"), (9, tmp_path / "seed-9")]
    written = json.loads((tmp_path / "seed-9" / "evaluation.json").read_text())
    assert written["pointwise"]["f1"] == pytest.approx(0.59)
    assert summary["per_seed"]["7"] == {"f1": pytest.approx(0.57), "precision": 0.9,
                                        "recall": None, "roc_auc": pytest.approx(0.793)}
    assert summary["spread"]["f1"] == {"mean": pytest.approx(0.58), "min": pytest.approx(0.57),
                                       "max": pytest.approx(0.59), "seeds": 2}
    assert summary["spread"]["recall"] is None  # undefined for every seed
    assert "nab_standard" not in summary["spread"]  # SKAB's protocol has no NAB scores
    lines = spread_lines(summary)
    assert lines[0].startswith("protocol skab over training seeds 7, 9")
    assert "f1: 0.570 / 0.590; mean 0.580, range 0.570 to 0.590" in lines


def test_seeds_are_distinct_whole_numbers():
    assert parse_seeds("7,8,9") == [7, 8, 9]
    for text in ("7,x", "7,7", "-1", ""):
        with pytest.raises(ValueError, match="received"):
            parse_seeds(text)
    with pytest.raises(ValueError, match="distinct"):
        evaluate_over_seeds(fake_protocol([]), TrainingOptions(), [], Path("unused"))
