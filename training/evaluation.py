"""Evaluation of scored streams against their labels, through the worker's streaming step.

Every stream is scored reading by reading with :class:`detector.step.StreamingStep`, all
streams advancing together in one vectorized call per time index, exactly as the worker
scores them (in process, without Kafka). From the flags, surprises and labels come
(:mod:`training.detection_metrics`, pooled over the streams and per stream):

* point-wise precision, recall and F1 (each reading is a case), next to the F1 of flagging
  every reading (the trivial baseline) and the ROC AUC of the surprise;
* window-wise precision, recall and F1: a labeled window (a run of labeled readings) is found
  when a flag falls inside it; a detection episode (by the worker's rule,
  :mod:`detector.episodes`: it ends after ``episode_gap`` unflagged readings) is correct
  when it overlaps a labeled window;
* for ``cellwatch synth``'s labels, the anomalies found per kind (a flag inside the
  labelled anomaly);
* the NAB score, for NAB-layout data with its windows (:mod:`training.nab`), and NAB
  results files with a row per input row (:mod:`training.nab_results`);
* one PNG per stream (:mod:`training.evaluation_plots`) and an ``index.md`` linking them.

Readings before a stream's ``test_start`` (its training prefix, in the SKAB protocol) are
scored, so the scorer's per-stream statistics see them, but left out of every metric.
The protocols that train per file are :mod:`training.nab_protocol` and
:mod:`training.skab_protocol`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from detector.scorer import MAX_SURPRISE
from detector.step import StreamingStep
from training.detection_metrics import (
    all_flag_baseline,
    pointwise_metrics,
    roc_auc,
    runs,
    windowwise_metrics,
)
from training.evaluation_plots import plot_stream, safe_file_name, write_plot_index
from training.output_destinations import PLOTS_MARKER

# Names other modules import from here (deploy/demo_watch.py among them).
__all__ = [
    "EvaluationError", "StreamScores", "Windows", "check_label_keys", "evaluate_artifact",
    "evaluate_scores", "labels_from_windows", "plot_stream", "pointwise_metrics",
    "read_label_windows", "runs", "score_streams", "windowwise_metrics", "write_plot_index",
]

DEFAULT_MAX_PLOTS = 12


class EvaluationError(ValueError):
    """Evaluation inputs that cannot work together (caught before any training or scoring);
    the message says what was received and what to give instead."""


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


# Readings prepared at once by score_streams: bounds the prepared arrays (features, clock
# encodings, the products' integers) however long the recording. Measured with tracemalloc
# on 2026-12-01, a 4-channel model, about 66,000 readings: score_streams peaked at 39-44 MB
# (inputs and outputs included) for 1, 40 or 4,096 streams.
PREPARED_READINGS = 65_536


def score_streams(step: StreamingStep,
                  streams: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, StreamScores]:
    """Scores every stream from its first reading, all streams advancing together.

    What no recurrence feeds (normalization, clock encodings, the dependency layer) is
    computed for up to :data:`PREPARED_READINGS` readings at once
    (:meth:`~detector.step.StreamingStep.prepare`), then the streams advance time step by
    time step (:meth:`~detector.step.StreamingStep.advance_prepared`): the same bits as one
    step call per time step, in less time where a time step holds few streams (NAB's and
    SKAB's protocols score one file at a time).

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
    # Streams sorted by length, longest first, so the active ones at time t are always a
    # prefix of this order, ``active[t]`` long.
    order = np.argsort(-lengths, kind="stable")
    active = len(ids) - np.searchsorted(np.sort(lengths), np.arange(longest), side="right")
    # Time steps are prepared in chunks (what no recurrence feeds, for all their readings at
    # once: StreamingStep.prepare, the same bits as a call per time step) of about
    # PREPARED_READINGS readings, so memory stays bounded however long the recording is.
    chunk = max(1, PREPARED_READINGS // max(len(ids), 1))
    for first in range(0, longest, chunk):
        times_in_chunk = np.arange(first, min(first + chunk, longest))
        counts = active[times_in_chunk]
        bounds = np.concatenate([[0], np.cumsum(counts)])
        # Reading j of the chunk: stream order[position[j]] at time when[j].
        when = np.repeat(times_in_chunk, counts)
        position = np.arange(bounds[-1]) - np.repeat(bounds[:-1], counts)
        rows = order[position]
        # The same stream's reading one time step earlier in the chunk (active sets only
        # shrink, so it exists), or -1 at the chunk's first time step.
        previous = np.where(when > first, np.repeat(bounds[:-1] - np.concatenate(
            [[0], counts[:-1]]), counts) + position, -1)
        prepared = step.prepare(values[rows, when], times[rows, when], state, rows, previous)
        for index, t in enumerate(times_in_chunk.tolist()):
            members = order[: counts[index]]
            result, state[members] = step.advance_prepared(
                prepared, slice(int(bounds[index]), int(bounds[index + 1])), state[members])
            for name in out:
                out[name][members, t] = getattr(result, name)
    return {
        stream: StreamScores(
            stream, times[row, : lengths[row]], values[row, : lengths[row]],
            *(out[name][row, : lengths[row]] for name in out))
        for row, stream in enumerate(ids)
    }


Windows = dict[str, list[tuple[int, int]]]
# Per stream, the anomaly kind of each of its windows, in the windows' order.
WindowKinds = dict[str, list[str]]


@dataclasses.dataclass(frozen=True)
class LabelWindows:
    """What a labels file says: anomaly windows per stream and, for ``cellwatch synth``'s
    labels, each window's kind (None for NAB's windows, which have none)."""

    windows: Windows
    kinds: WindowKinds | None


def labels_from_windows(timestamps_ms: np.ndarray,
                        windows: Sequence[tuple[int, int]]) -> np.ndarray:
    """True for readings inside any ``[start_ms, end_ms]`` window."""
    label = np.zeros(len(timestamps_ms), dtype=bool)
    for start, end in windows:
        label |= (timestamps_ms >= start) & (timestamps_ms <= end)
    return label


def read_label_windows(path: Path) -> LabelWindows:
    """Windows per stream from NAB's ``combined_windows.json`` or ``cellwatch synth`` labels
    (with their kinds)."""
    from training.nab import load_windows
    from training.recording_parsing import JsonTextError, load_json
    from training.synthetic import read_labels

    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"{path}: not a regular file (expected a JSON labels file)")
    try:
        document = load_json(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise EvaluationError(f"{path}: cannot be read ({error})") from None
    except JsonTextError as error:
        at = "" if error.line is None else f":{error.line}"
        column = "" if error.column is None else f" at column {error.column}"
        raise EvaluationError(f"{path}{at}: invalid JSON: {error.reason}{column} (expected "
                              f"NAB's combined_windows.json or `cellwatch synth` "
                              f"labels)") from None
    if isinstance(document, dict):
        try:
            return LabelWindows(load_windows(path), None)
        except ValueError as error:  # load_windows names the key and window
            raise EvaluationError(str(error)) from None
    windows: Windows = {}
    kinds: WindowKinds = {}
    for label in read_labels(path):
        windows.setdefault(label.stream, []).append((label.start_ms, label.end_ms))
        kinds.setdefault(label.stream, []).append(label.kind)
    return LabelWindows(windows, kinds)


def found_by_kind(scored: Mapping[str, StreamScores], windows: Windows,
                  kinds: WindowKinds) -> dict[str, dict[str, int]]:
    """Per anomaly kind, its labelled windows and how many of them a flag falls inside
    (the window-wise rule, per labelled anomaly rather than per run of labelled readings).
    A window that holds no reading of a scored stream can be neither found nor missed and
    is left out."""
    counts: dict[str, dict[str, int]] = {}
    for stream, spans in windows.items():
        if stream not in scored:
            continue
        timestamps, flag = scored[stream].timestamps_ms, scored[stream].flag
        for span, kind in zip(spans, kinds[stream], strict=True):
            inside = labels_from_windows(timestamps, [span])
            if not inside.any():
                continue
            entry = counts.setdefault(kind, {"anomalies": 0, "found": 0})
            entry["anomalies"] += 1
            entry["found"] += bool(flag[inside].any())
    return dict(sorted(counts.items()))


def check_label_keys(windows: Windows, streams: Sequence[str], labels_name: str) -> None:
    """Refuses labels none of whose keys is a stream read: every reading would count as
    normal, and a whole run would be spent to report nothing (NAB's root folder given
    instead of its ``data/`` folder prefixes every stream id with ``data/``)."""
    if set(windows) & set(streams):
        return
    key = repr(next(iter(windows))) if windows else "none"
    stream = repr(streams[0]) if streams else "none"
    raise EvaluationError(
        f"{labels_name}: none of its {len(windows)} keys names one of the {len(streams)} "
        f"files read (expected keys equal to the files' paths relative to the folder given; "
        f"received keys such as {key} and files such as {stream}); for NAB, give the data/ "
        f"folder, whose files are named like its keys ('realKnownCause/nyc_taxi.csv')")


def _detection_figures(scored: Mapping[str, StreamScores], labels: Mapping[str, np.ndarray],
                       test_start: Mapping[str, int], threshold: float,
                       episode_gap: int) -> dict:
    """Pooled and per-stream metrics over each labeled stream's readings from its
    ``test_start`` on."""
    streams = [s for s in scored if s in labels]
    flags = [scored[s].flag[test_start[s]:] for s in streams]
    truth = [np.asarray(labels[s], bool)[test_start[s]:] for s in streams]
    surprise = [scored[s].surprise[test_start[s]:] for s in streams]
    per_stream = {}
    for stream, flag, label, stream_surprise in zip(streams, flags, truth, surprise,
                                                    strict=True):
        point = pointwise_metrics([flag], [label])
        window = windowwise_metrics([flag], [label], episode_gap)
        per_stream[stream] = {
            "readings": len(scored[stream].score), "evaluated_readings": len(flag),
            "labeled_readings": int(label.sum()), "flagged_readings": int(flag.sum()),
            "precision": point["precision"], "recall": point["recall"], "f1": point["f1"],
            "all_flag_f1": all_flag_baseline([label])["f1"],
            "roc_auc": roc_auc([stream_surprise], [label])["auc"],
            "windows": window["windows"], "windows_found": window["windows_found"],
            "episodes": window["episodes"], "episodes_correct": window["episodes_correct"]}
    return {
        "labeled_readings": int(sum(int(t.sum()) for t in truth)),
        "pointwise": pointwise_metrics(flags, truth, threshold),
        "all_flag_baseline": all_flag_baseline(truth),
        "roc_auc": roc_auc(surprise, truth),
        "windowwise": windowwise_metrics(flags, truth, episode_gap),
        "per_stream": per_stream,
    }


def _write_nab_outputs(scored: Mapping[str, StreamScores], nab_windows: Windows,
                       out_dir: Path, detector_name: str, nab_data_dir: Path | None) -> dict:
    """NAB's scores over the corpus and its results files; the report's ``nab`` entries."""
    from training.nab import PROFILES, ScoredFile, nab_scores, write_nab_results
    from training.nab_results import write_results_per_input_row

    files = [ScoredFile(key, s.timestamps_ms, s.anomaly_score,
                        tuple(nab_windows.get(key, ()))) for key, s in scored.items()]
    results = nab_scores(files, PROFILES)
    repeated = 0
    for key, s in scored.items():
        windows = nab_windows.get(key, ())
        if nab_data_dir is not None:
            repeated += write_results_per_input_row(out_dir / "results", detector_name, key,
                                                    nab_data_dir / key, s.timestamps_ms,
                                                    s.anomaly_score, windows)
        else:
            write_nab_results(out_dir / "results", detector_name, key, s.timestamps_ms,
                              s.values[:, 0], s.anomaly_score, windows)
    return {"nab": {name: dataclasses.asdict(result) for name, result in results.items()},
            "nab_results": {"directory": str(out_dir / "results" / detector_name),
                            "repeated_rows_scored_zero": repeated}}


def _plot_streams(scored: Mapping[str, StreamScores], channels: Sequence[str],
                  labels: Mapping[str, np.ndarray] | None, test_start: Mapping[str, int],
                  threshold: float, plots_dir: Path, index_path: Path,
                  max_plots: int | None) -> list[str]:
    """Plots of the ``max_plots`` streams most worth a look (None: all), and their index."""
    plots_dir.mkdir(parents=True, exist_ok=True)
    # Labeled and flagged streams first: they are the ones worth a look.
    ranked = sorted(scored, key=lambda s: (-(labels is not None and s in labels
                                             and bool(labels[s].any())),
                                           -int(scored[s].flag.sum())))
    chosen = ranked if max_plots is None else ranked[:max_plots]
    entries = []
    surprise_threshold = -np.log10(1.0 - threshold)
    for stream in chosen:
        path = plots_dir / f"{safe_file_name(stream)}.png"
        label = labels.get(stream) if labels else None
        plot_stream(scored[stream], channels, label, surprise_threshold, path,
                    test_start=test_start[stream] or None, standardize=len(channels) > 1)
        found = int(scored[stream].flag.sum())
        summary = f"{len(scored[stream].score)} readings, {found} flagged" + (
            f", {int(label.sum())} labeled anomalous" if label is not None else "")
        if test_start[stream]:
            summary += f"; the first {test_start[stream]} trained the model"
        entries.append((stream, path, summary))
    write_plot_index(entries, index_path)
    (plots_dir / PLOTS_MARKER).write_text("plots written by cellwatch evaluate\n")
    return [str(path) for _, path, _ in entries]


def evaluate_scores(scored: Mapping[str, StreamScores], channels: Sequence[str],
                    labels: Mapping[str, np.ndarray] | None, nab_windows: Windows | None,
                    out_dir: Path, threshold: float, detector_name: str = "cellwatch",
                    max_plots: int | None = DEFAULT_MAX_PLOTS, episode_gap: int = 3,
                    plots_dir: Path | None = None,
                    test_start: Mapping[str, int] | None = None,
                    nab_data_dir: Path | None = None) -> dict:
    """Metrics, NAB score and results files, and plots for scored streams; returns the report.

    Args:
        labels: per stream, a label per reading (True = anomalous); None: no metrics.
        nab_windows: NAB windows per file key: score with NAB's rules and write results.
        max_plots: how many streams to plot (None: all), into ``plots_dir`` (default
            ``out_dir/plots``); ``out_dir/index.md`` links them.
        test_start: per stream, its first evaluated reading (default 0): earlier readings
            are plotted but left out of the metrics.
        nab_data_dir: the NAB data folder, so results files get a row per input row.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    start = {stream: int((test_start or {}).get(stream, 0)) for stream in scored}
    report: dict = {
        "streams": len(scored),
        "readings": int(sum(len(s.score) for s in scored.values())),
        "evaluated_readings": int(sum(len(s.score) - start[k] for k, s in scored.items())),
        "flagged_readings": int(sum(int(s.flag.sum()) for s in scored.values())),
        "threshold": threshold,
        "episode_gap": episode_gap,
    }
    if labels:
        report.update(_detection_figures(scored, labels, start, threshold, episode_gap))
    if nab_windows is not None:
        report.update(_write_nab_outputs(scored, nab_windows, out_dir, detector_name,
                                         nab_data_dir))
    plots_dir = plots_dir if plots_dir is not None else out_dir / "plots"
    report["plots"] = _plot_streams(scored, channels, labels, start, threshold, plots_dir,
                                    out_dir / "index.md", max_plots)
    report["plotted_streams"] = len(report["plots"])
    report["plots_index"] = str(out_dir / "index.md")
    report["report_path"] = str(out_dir / "evaluation.json")
    return report


def evaluate_artifact(artifact, recording, out_dir: Path, windows: Windows | None = None,
                      nab: bool = False, detector_name: str = "cellwatch",
                      window_kinds: WindowKinds | None = None,
                      plots_dir: Path | None = None,
                      max_plots: int | None = DEFAULT_MAX_PLOTS,
                      labels_name: str = "the labels", nab_data_dir: Path | None = None,
                      episode_gap: int = 3) -> dict:
    """Scores ``recording`` with a loaded artifact and evaluates it against its labels.

    Labels come from the recording's ``label`` column, or else from ``windows`` (named
    ``labels_name`` in messages), which must name at least one of its streams. With ``nab``
    the NAB score is computed from ``windows`` and NAB results files are written (a row per
    input row of the files under ``nab_data_dir``, when given). With ``window_kinds`` (the
    kind of each of ``windows``, from ``cellwatch synth``'s labels) the report counts the
    anomalies found per kind. Detection episodes end after ``episode_gap`` unflagged
    readings, as the worker's (``worker.anomaly_episode_gap``).
    """
    if windows is not None and not recording.labeled:
        check_label_keys(windows, list(recording.streams), labels_name)
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
                             out_dir, artifact.metadata.scorer.threshold, detector_name,
                             max_plots=max_plots, plots_dir=plots_dir,
                             nab_data_dir=nab_data_dir if nab else None,
                             episode_gap=episode_gap)
    if windows is not None and window_kinds is not None:
        report["by_kind"] = found_by_kind(scored, windows, window_kinds)
    report["protocol"] = "artifact"
    report["model_version"] = artifact.metadata.model_version
    return report
