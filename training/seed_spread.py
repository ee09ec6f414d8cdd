"""One evaluation protocol run once per training seed, and the spread of its key figures.

The per-file protocols (NAB's, SKAB's) train each file's model on a few hundred readings,
so the seed of the weights and of the batch order moves the scores: on NAB's 35 labelled
files, the same code scored 59.3, 55.6 and 61.3 (standard profile) with seeds 7, 8 and 9.
Two configurations compared on one seed each differ by that much for no reason; compared
over several seeds, the mean and the range say what a change did. Each seed's run is the
ordinary protocol, written whole to ``<out>/seed-<seed>/``; the summary sits beside them.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path

from training.evaluation_report import report_json
from training.trainer import TrainingOptions

# The report's figures that the summary gathers, by the path to each in a report; a
# protocol reports the ones it has (SKAB has no NAB scores).
KEY_FIGURES = {
    "nab_standard": ("nab", "standard", "normalized"),
    "nab_reward_low_FP_rate": ("nab", "reward_low_FP_rate", "normalized"),
    "nab_reward_low_FN_rate": ("nab", "reward_low_FN_rate", "normalized"),
    "f1": ("pointwise", "f1"),
    "precision": ("pointwise", "precision"),
    "recall": ("pointwise", "recall"),
    "roc_auc": ("roc_auc", "auc"),
}


def parse_seeds(text: str) -> list[int]:
    """``"7,8,9"`` as ``[7, 8, 9]``: whole numbers from 0, each once.

    Raises:
        ValueError: naming what was received and what is expected.
    """
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"expected comma-separated whole numbers such as 7,8,9, received: "
                         f"{text!r}") from None
    if min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise ValueError(f"expected distinct seeds of 0 or more, received: {text!r}")
    return seeds


def seed_directory(out_dir: Path, seed: int) -> Path:
    return Path(out_dir) / f"seed-{seed}"


def key_figures(report: dict) -> dict[str, float | None]:
    """The :data:`KEY_FIGURES` a report holds (``None`` where a figure is undefined, as a
    NAB score over no windows or a ROC AUC without both classes)."""
    figures: dict[str, float | None] = {}
    for name, path in KEY_FIGURES.items():
        value: object = report
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if path[0] in report:
            figures[name] = None if value is None else float(value)
    return figures


def evaluate_over_seeds(run_once: Callable[[TrainingOptions, Path], dict],
                        options: TrainingOptions, seeds: Sequence[int], out_dir: Path,
                        progress: Callable[[str], None] | None = None) -> dict:
    """Runs ``run_once(options with seed s, <out>/seed-<s>)`` for every seed, writes each
    report as that directory's ``evaluation.json``, and returns the summary: every seed's
    key figures and their mean, minimum and maximum over the seeds.

    Raises:
        ValueError: no seed, or one given twice.
    """
    seeds = list(seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct and at least one, received: {seeds}")
    per_seed: dict[str, dict[str, float | None]] = {}
    protocol = None
    for number, seed in enumerate(seeds, start=1):
        if progress is not None:
            progress(f"seed {seed} ({number} of {len(seeds)})")
        directory = seed_directory(out_dir, seed)
        report = run_once(dataclasses.replace(options, seed=seed), directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "evaluation.json").write_text(report_json(report) + "\n")
        per_seed[str(seed)] = key_figures(report)
        protocol = report.get("protocol", protocol)
    names = [name for name in KEY_FIGURES if name in per_seed[str(seeds[0])]]
    spread = {}
    for name in names:
        values = [figures[name] for figures in per_seed.values() if figures[name] is not None]
        spread[name] = ({"mean": statistics.fmean(values), "min": min(values),
                         "max": max(values), "seeds": len(values)} if values else None)
    return {"protocol": protocol, "seeds": seeds, "per_seed": per_seed, "spread": spread,
            "reports": [str(seed_directory(out_dir, seed) / "evaluation.json")
                        for seed in seeds],
            "rule": "the protocol run once per training seed (weights and batch order); "
                    "mean, minimum and maximum over the seeds where the figure is defined"}


def spread_lines(summary: dict) -> list[str]:
    """The summary as text: one line per key figure, every seed's value, then the spread."""
    seeds = summary["seeds"]
    lines = [f"protocol {summary['protocol']} over training seeds "
             f"{', '.join(str(seed) for seed in seeds)} (each seed's full report in "
             f"seed-<seed>/evaluation.json)"]
    for name, spread in summary["spread"].items():
        values = [summary["per_seed"][str(seed)][name] for seed in seeds]
        digits = 1 if name.startswith("nab_") else 3  # NAB's scores run from 0 to 100
        shown = " / ".join("n/a" if value is None else f"{value:.{digits}f}"
                           for value in values)
        tail = ("n/a" if spread is None else
                f"mean {spread['mean']:.{digits}f}, range {spread['min']:.{digits}f} to "
                f"{spread['max']:.{digits}f}")
        lines.append(f"{name}: {shown}; {tail}")
    return lines
