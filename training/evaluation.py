"""Evaluation of a model artifact on labeled recordings, through the worker's streaming step.

Every stream is scored reading by reading with :class:`detector.step.StreamingStep`, all
streams advancing together in one vectorized call per time index, exactly as the worker
scores them (in process, without Kafka). From the flags and labels come:

* point-wise precision, recall and F1 (each reading is a case);
* window-wise precision, recall and F1: a labeled window (a run of labeled readings) is found
  when a flag falls inside it; a detection episode (a run of flags, gaps of up to
  ``episode_gap`` readings merged) is correct when it overlaps a labeled window;
* the NAB score, for NAB-layout data with its windows (:mod:`training.nab`);
* one PNG per stream: the series, labeled windows shaded, the score below, detections
  marked; and an ``index.md`` linking them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from detector.scorer import MAX_SURPRISE
from detector.step import StreamingStep


@dataclasses.dataclass(frozen=True)
class StreamScores:
    """A stream's readings with what the step said of each."""

    stream: str
    timestamps_ms: np.ndarray
    values: np.ndarray
    score: np.ndarray
    likelihood: np.ndarray
    surprise: np.ndarray
    flag: np.ndarray
    top_channel: np.ndarray
    onset: np.ndarray

    @property
    def anomaly_score(self) -> np.ndarray:
        """The onset mapped onto [0, 1] (float64), the form NAB's results files take.

        The onset (see :mod:`detector.scorer`) rather than the surprise: NAB charges every
        flagged reading outside a window, and the onset reports a burst of surprise once."""
        return np.minimum(self.onset.astype(np.float64), MAX_SURPRISE) / MAX_SURPRISE


def score_streams(step: StreamingStep,
                  streams: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, StreamScores]:
    """Scores every stream from its first reading, all streams advancing together.

    Args:
        step: the artifact's streaming step.
        streams: per stream id, ``(timestamps_ms [n], values [n, F])`` without missing values.
    """
    ids = list(streams)
    lengths = np.array([len(streams[s][0]) for s in ids])
    longest = int(lengths.max(initial=0))
    channels = step.layout.channels
    # Stack into [streams, longest] tables so each time index is one gather.
    times = np.zeros((len(ids), longest), dtype=np.int64)
    values = np.zeros((len(ids), longest, channels), dtype=np.float32)
    for row, stream in enumerate(ids):
        ts, vals = streams[stream]
        times[row, : len(ts)] = ts
        values[row, : len(ts)] = vals
    out = {name: np.zeros((len(ids), longest), dtype=dtype) for name, dtype in (
        ("score", np.float32), ("likelihood", np.float32), ("surprise", np.float32),
        ("flag", bool), ("top_channel", np.int32), ("onset", np.float32))}
    state = step.layout.initial(len(ids))
    # Streams sorted by length, longest first, so the active ones are always a prefix.
    order = np.argsort(-lengths, kind="stable")
    sorted_lengths = lengths[order]
    for t in range(longest):
        active = order[: int(np.searchsorted(-sorted_lengths, -t, side="left"))]
        result, state[active] = step(values[active, t], times[active, t], state[active])
        for name in out:
            out[name][active, t] = getattr(result, name)
    return {
        stream: StreamScores(
            stream, times[row, : lengths[row]], values[row, : lengths[row]],
            *(out[name][row, : lengths[row]] for name in out))
        for row, stream in enumerate(ids)
    }


def runs(mask: np.ndarray, merge_gap: int = 0) -> list[tuple[int, int]]:
    """Inclusive (first, last) index pairs of the True runs of ``mask``.

    Runs separated by at most ``merge_gap`` False values are merged into one.
    """
    index = np.flatnonzero(np.asarray(mask, dtype=bool))
    if index.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(index) > merge_gap + 1)
    starts = np.concatenate([[index[0]], index[breaks + 1]])
    ends = np.concatenate([index[breaks], [index[-1]]])
    return [(int(a), int(b)) for a, b in zip(starts, ends, strict=True)]


def _f1(precision: float, recall: float) -> float:
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def _ratio(a: int, b: int) -> float:
    return a / b if b else 0.0


def pointwise_metrics(flags: Sequence[np.ndarray], labels: Sequence[np.ndarray]) -> dict:
    """Precision, recall and F1 over every reading of every stream."""
    flag = np.concatenate([np.asarray(f, bool) for f in flags])
    label = np.concatenate([np.asarray(lab, bool) for lab in labels])
    tp = int(np.sum(flag & label))
    fp = int(np.sum(flag & ~label))
    fn = int(np.sum(~flag & label))
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    return {"precision": precision, "recall": recall, "f1": _f1(precision, recall),
            "true_positives": tp, "false_positives": fp, "false_negatives": fn}


def windowwise_metrics(flags: Sequence[np.ndarray], labels: Sequence[np.ndarray],
                       episode_gap: int = 3) -> dict:
    """Labeled windows found, and detection episodes that were right, over every stream."""
    windows = found = episodes = correct = 0
    for flag, label in zip(flags, labels, strict=True):
        label = np.asarray(label, bool)
        flag = np.asarray(flag, bool)
        for first, last in runs(label):
            windows += 1
            found += bool(flag[first: last + 1].any())
        for first, last in runs(flag, merge_gap=episode_gap):
            episodes += 1
            correct += bool(label[first: last + 1].any())
    precision, recall = _ratio(correct, episodes), _ratio(found, windows)
    return {"precision": precision, "recall": recall, "f1": _f1(precision, recall),
            "windows": windows, "windows_found": found, "episodes": episodes,
            "episodes_correct": correct}


def plot_stream(scores: StreamScores, channels: Sequence[str], label: np.ndarray | None,
                threshold_surprise: float, path: Path, title: str | None = None) -> None:
    """The series (every channel), labeled windows shaded, surprise and onsets below, flags
    marked."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import dates as mdates
    from matplotlib import pyplot as plt

    when = scores.timestamps_ms.astype("datetime64[ms]")
    figure, (top, bottom) = plt.subplots(
        2, 1, figsize=(11, 5), dpi=90, sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    for index, name in enumerate(channels):
        top.plot(when, scores.values[:, index], linewidth=0.8, label=name)
    flagged = np.flatnonzero(scores.flag)
    if flagged.size:
        top.scatter(when[flagged], scores.values[flagged, scores.top_channel[flagged]],
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
    top.set_title(title or scores.stream)
    top.legend(loc="upper left", fontsize="small", ncol=min(len(channels) + 1, 6))
    bottom.set_ylabel("surprise (-log10 tail)")
    bottom.legend(loc="upper left", fontsize="small")
    bottom.xaxis.set_major_formatter(mdates.ConciseDateFormatter(bottom.xaxis.get_major_locator()))
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def write_plot_index(entries: Sequence[tuple[str, Path, str]], path: Path) -> None:
    """A Markdown page listing each stream's plot with a one-line summary."""
    lines = ["# cellwatch evaluation plots", ""]
    for stream, plot, summary in entries:
        lines += [f"## {stream}", "", summary, "", f"![{stream}]({plot.relative_to(path.parent)})",
                  ""]
    path.write_text("\n".join(lines), encoding="utf-8")


Windows = dict[str, list[tuple[int, int]]]


def labels_from_windows(timestamps_ms: np.ndarray,
                        windows: Sequence[tuple[int, int]]) -> np.ndarray:
    """True for readings inside any ``[start_ms, end_ms]`` window."""
    label = np.zeros(len(timestamps_ms), dtype=bool)
    for start, end in windows:
        label |= (timestamps_ms >= start) & (timestamps_ms <= end)
    return label


def read_label_windows(path: Path) -> Windows:
    """Windows per stream from NAB's ``combined_windows.json`` or ``cellwatch synth`` labels."""
    import json

    from training.nab import load_windows
    from training.synthetic import read_labels

    document = json.loads(Path(path).read_text(encoding="utf-8"))
    if isinstance(document, dict):
        return load_windows(path)
    windows: Windows = {}
    for label in read_labels(path):
        windows.setdefault(label.stream, []).append((label.start_ms, label.end_ms))
    return windows


def _safe_name(stream: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in stream)


def evaluate_scores(scored: Mapping[str, StreamScores], channels: Sequence[str],
                    labels: Mapping[str, np.ndarray] | None, nab_windows: Windows | None,
                    out_dir: Path, threshold: float, detector_name: str = "cellwatch",
                    max_plots: int = 12, episode_gap: int = 3) -> dict:
    """Metrics, NAB score and results files, and plots for scored streams; returns the report."""
    from training.nab import PROFILES, ScoredFile, nab_scores, write_nab_results

    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict = {
        "streams": len(scored),
        "readings": int(sum(len(s.score) for s in scored.values())),
        "flagged_readings": int(sum(int(s.flag.sum()) for s in scored.values())),
    }
    if labels:
        streams = [s for s in scored if s in labels]
        flags = [scored[s].flag for s in streams]
        truth = [labels[s] for s in streams]
        report["labeled_readings"] = int(sum(int(t.sum()) for t in truth))
        report["pointwise"] = pointwise_metrics(flags, truth)
        report["windowwise"] = windowwise_metrics(flags, truth, episode_gap)
    if nab_windows is not None:
        files = [ScoredFile(key, s.timestamps_ms, s.anomaly_score,
                            tuple(nab_windows.get(key, ()))) for key, s in scored.items()]
        results = nab_scores(files, PROFILES)
        report["nab"] = {name: dataclasses.asdict(result) for name, result in results.items()}
        for key, s in scored.items():
            write_nab_results(out_dir / "results", detector_name, key, s.timestamps_ms,
                              s.values[:, 0], s.anomaly_score, nab_windows.get(key, ()))
    plots_dir = out_dir / "plots"
    plots_dir.mkdir(exist_ok=True)
    # Labeled and flagged streams first: they are the ones worth a look.
    ranked = sorted(scored, key=lambda s: (-(labels is not None and s in labels
                                             and bool(labels[s].any())),
                                           -int(scored[s].flag.sum())))
    entries = []
    surprise_threshold = -np.log10(1.0 - threshold)
    for stream in ranked[:max_plots]:
        path = plots_dir / f"{_safe_name(stream)}.png"
        label = labels.get(stream) if labels else None
        plot_stream(scored[stream], channels, label, surprise_threshold, path)
        found = int(scored[stream].flag.sum())
        summary = f"{len(scored[stream].score)} readings, {found} flagged" + (
            f", {int(label.sum())} labeled anomalous" if label is not None else "")
        entries.append((stream, path, summary))
    write_plot_index(entries, out_dir / "index.md")
    report["plots"] = [str(path) for _, path, _ in entries]
    return report


def evaluate_artifact(artifact, recording, out_dir: Path, windows: Windows | None = None,
                      nab: bool = False, detector_name: str = "cellwatch") -> dict:
    """Scores ``recording`` with a loaded artifact and evaluates it against its labels.

    Labels come from the recording's ``label`` column, or else from ``windows``. With ``nab``
    the NAB score is computed from ``windows`` and NAB results files are written.
    """
    filled = recording.filled()
    scored = score_streams(artifact.step, {key: (s.timestamps_ms, s.values)
                                           for key, s in filled.streams.items()})
    if recording.labeled:
        labels = {key: s.labels for key, s in recording.streams.items()}
    elif windows is not None:
        labels = {key: labels_from_windows(s.timestamps_ms, windows.get(key, ()))
                  for key, s in recording.streams.items()}
    else:
        labels = None
    report = evaluate_scores(scored, recording.channels, labels, windows if nab else None,
                             out_dir, artifact.metadata.scorer.threshold, detector_name)
    report["model_version"] = artifact.metadata.model_version
    return report


def run_nab_protocol(data_dir: Path, windows: Windows, out_dir: Path, options,
                     detector_name: str = "cellwatch", progress=None) -> dict:
    """NAB's protocol: per file, train only on its probationary period, then stream it all.

    One set of hyperparameters (``options``) serves every file; the normalization, the
    model and the early stopping see nothing after the probationary period, and the scorer
    learns online as the worker's does. Results are scored with NAB's rules over the corpus,
    from each reading's onset (:attr:`StreamScores.anomaly_score`).

    Every file's model is trained from the same seeded initial weights through one
    :class:`~training.trainer.ModelCache`, so files stay independent (a file scores the same
    alone or after others) while the model is built and traced once. Cost, measured on 2
    shared cores: about 2 s of training per file plus the streaming step (~130 us per
    reading); the 35 files of NAB's labeled corpus here take about 2 to 2.5 minutes.
    """
    import time

    from detector.model import step_params
    from detector.step import StreamingStep
    from training.nab import probation_rows
    from training.recordings import Recording, StreamSeries, read_recording
    from training.trainer import ModelCache, fit

    started = time.monotonic()
    recording = read_recording([data_dir], "nab").filled()
    scored: dict[str, StreamScores] = {}
    per_file = {}
    # One compiled model serves every file, its weights re-initialized from the seed each time.
    cache = ModelCache()
    for index, (key, series) in enumerate(recording.streams.items()):
        file_started = time.monotonic()
        probation = probation_rows(len(series))
        learning = Recording.from_series(recording.channels, [StreamSeries(
            key, series.timestamps_ms[:probation], series.values[:probation])])
        fitted = fit(learning, options, cache=cache)
        step = StreamingStep(step_params(fitted.model), fitted.scaler, options.scorer)
        scored.update(score_streams(step, {key: (series.timestamps_ms, series.values)}))
        per_file[key] = {"rows": len(series), "probation_rows": probation,
                         "epochs": fitted.report["epochs_run"],
                         "seconds": round(time.monotonic() - file_started, 2)}
        if progress is not None:
            progress(index + 1, len(recording.streams), key)
    labels = {key: labels_from_windows(s.timestamps_ms, windows.get(key, ()))
              for key, s in recording.streams.items()}
    report = evaluate_scores(scored, recording.channels, labels, windows, out_dir,
                             options.scorer.threshold, detector_name)
    report["protocol"] = "nab"
    report["files"] = per_file
    report["seconds"] = round(time.monotonic() - started, 1)
    return report
