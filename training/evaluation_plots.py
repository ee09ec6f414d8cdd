"""One PNG per scored stream, and a Markdown index of them.

Each plot shows the readings (every channel), the labeled readings shaded, the flagged
readings marked on the channel that contributed most, and below them the surprise with the
onsets and the flag threshold; when the first readings only trained the model (the SKAB
protocol), a dashed line marks where the scored part begins.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from training.detection_metrics import runs

if TYPE_CHECKING:
    from training.evaluation import StreamScores


def _standardized(values: np.ndarray) -> np.ndarray:
    """Each channel as z-scores, so channels of very different scales (SKAB's voltage near
    230 beside accelerations near 0.03) are all visible on one axis."""
    mean = np.nanmean(values, axis=0)
    spread = np.nanstd(values, axis=0)
    return (values - mean) / np.where(spread > 0, spread, 1.0)


def plot_stream(scores: StreamScores, channels: Sequence[str], label: np.ndarray | None,
                threshold_surprise: float, path: Path, title: str | None = None,
                test_start: int | None = None, standardize: bool = False) -> None:
    """The series (every channel), labeled windows shaded, surprise and onsets below, flags
    marked; ``test_start`` marks the first scored reading, ``standardize`` draws each
    channel as z-scores."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import dates as mdates
    from matplotlib import pyplot as plt

    when = scores.timestamps_ms.astype("datetime64[ms]")
    values = _standardized(scores.values) if standardize else scores.values
    figure, (top, bottom) = plt.subplots(
        2, 1, figsize=(11, 5), dpi=90, sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    for index, name in enumerate(channels):
        top.plot(when, values[:, index], linewidth=0.8, label=name)
    flagged = np.flatnonzero(scores.flag)
    if flagged.size:
        top.scatter(when[flagged], values[flagged, scores.top_channel[flagged]],
                    color="red", s=14, zorder=3, label="flagged")
    bottom.plot(when, scores.surprise, color="black", linewidth=0.8, label="surprise")
    onsets = np.flatnonzero(scores.onset > 0)
    bottom.scatter(when[onsets], scores.onset[onsets], color="tab:blue", marker="^", s=12,
                   zorder=3, label="onset")
    bottom.axhline(threshold_surprise, color="red", linestyle="--", linewidth=0.8,
                   label="threshold")
    if label is not None:
        for first, last in runs(label):
            for axes in (top, bottom):
                axes.axvspan(when[first], when[last], color="orange", alpha=0.25, linewidth=0)
    if test_start is not None and 0 < test_start < len(when):
        for axes in (top, bottom):
            axes.axvline(when[test_start], color="gray", linestyle="--", linewidth=1.0)
        top.annotate("training | scored", (when[test_start], 0.02), xycoords=("data",
                     "axes fraction"), ha="center", va="bottom", fontsize="small",
                     bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.7})
    top.set_title(title or scores.stream)
    top.legend(loc="upper left", fontsize="small", ncol=min(len(channels) + 1, 6))
    if standardize:
        top.set_ylabel("reading (z-score per channel)")
    bottom.set_ylabel("surprise (-log10 tail)")
    bottom.legend(loc="upper left", fontsize="small")
    bottom.xaxis.set_major_formatter(mdates.ConciseDateFormatter(bottom.xaxis.get_major_locator()))
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def write_plot_index(entries: Sequence[tuple[str, Path, str]], path: Path) -> None:
    """A Markdown page listing each stream's plot with a one-line summary; links are relative
    to the page, wherever the plots are."""
    lines = ["# cellwatch evaluation plots", ""]
    for stream, plot, summary in entries:
        link = Path(os.path.relpath(plot, path.parent)).as_posix()
        lines += [f"## {stream}", "", summary, "", f"![{stream}]({link})", ""]
    path.write_text("\n".join(lines), encoding="utf-8")


def safe_file_name(stream: str) -> str:
    """A stream id as a file name: ``valve1/0.csv`` -> ``valve1_0.csv``."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in stream)
