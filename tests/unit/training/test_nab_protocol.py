"""NAB's protocol end to end on a tiny made-up corpus (no NAB data needed)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np

from training.evaluation import run_nab_protocol
from training.trainer import TrainingOptions

OPTIONS = TrainingOptions(epochs=2, batch_size=8, sequence_length=16, memory_units=4,
                          hidden_units=4, verbose=0)
START = dt.datetime(2014, 4, 1)


def _write(path: Path, values: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["timestamp,value"] + [
        f"{(START + dt.timedelta(minutes=5 * i)):%Y-%m-%d %H:%M:%S},{v:.4f}"
        for i, v in enumerate(values)]
    path.write_text("\n".join(lines) + "\n")


def _ms(row: int) -> int:
    return int((START + dt.timedelta(minutes=5 * row)).replace(tzinfo=dt.UTC).timestamp() * 1000)


def test_files_are_scored_independently_of_the_files_before_them(tmp_path):
    """Through the shared model cache, a file scores exactly as when it is the only one:
    each file's model starts from the same seeded weights."""
    rng = np.random.default_rng(3)
    t = np.arange(1000)
    quiet = 10 + np.sin(2 * np.pi * t / 288) + 0.1 * rng.normal(size=t.size)
    spiky = quiet.copy()
    spiky[700:705] += 8.0
    _write(tmp_path / "both" / "cat" / "a.csv", quiet)
    _write(tmp_path / "both" / "cat" / "b.csv", spiky)
    _write(tmp_path / "alone" / "cat" / "b.csv", spiky)
    windows = {"cat/a.csv": [], "cat/b.csv": [(_ms(680), _ms(730))]}

    both = run_nab_protocol(tmp_path / "both", windows, tmp_path / "out-both", OPTIONS)
    alone = run_nab_protocol(tmp_path / "alone", {"cat/b.csv": windows["cat/b.csv"]},
                             tmp_path / "out-alone", OPTIONS)
    result = Path("results/cellwatch/cat/cellwatch_b.csv")
    assert (tmp_path / "out-both" / result).read_text() == (
        tmp_path / "out-alone" / result).read_text()
    assert alone["files"]["cat/b.csv"]["epochs"] == both["files"]["cat/b.csv"]["epochs"]
    assert both["protocol"] == "nab" and set(both["files"]) == {"cat/a.csv", "cat/b.csv"}
    assert both["files"]["cat/b.csv"]["probation_rows"] == 150
    # The spike is far outside the quiet level: its onset finds the window.
    assert both["nab"]["standard"]["tp_windows"] == 1
