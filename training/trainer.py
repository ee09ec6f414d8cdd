"""Offline training of the forecaster on recorded streams, ending in a model artifact.

The pipeline:

1. Missing values are forward-filled per stream (:meth:`Recording.filled`); gaps in time are
   left alone (the model reads a stream as a sequence of readings) and counted.
2. One robust normalization per channel is fitted on the training part of every stream.
3. Each stream is split by time: the first ``1 - validation_fraction`` of its readings train,
   the rest validate, so no window of the future is ever shuffled into the past.
4. Windows of ``sequence_length`` readings (half-overlapping) become a ``tf.data`` pipeline; the
   target of each step is the change to the next reading. The clock carries only the periods
   (day, week) that some stream's training part spans at least twice; the others' columns
   are zero in training and their rows of the clock layer's kernel are zeroed after it, so
   the served model ignores them too. A period seen once cannot be told from a trend or a
   one-off: a model trained on 10 days forecast each weekday as the one it had seen (the
   demo's data: 26 episodes of flags on no label before, 16 after).
5. Adam minimizes the Gaussian negative log-likelihood with early stopping on the validation
   loss and a fixed seed. ``keras.callbacks.BackupAndRestore`` keeps the last finished epoch in
   ``<artifact>.checkpoint/``, so an interrupted run resumes there when started again (early
   stopping then counts patience from the resumed epoch).
6. The artifact is written atomically, followed by ``training_report.json`` and
   ``loss_curves.png`` beside it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from detector.artifact import ArtifactMetadata, save_artifact
from detector.features import (
    MS_PER_DAY,
    ChannelScaler,
    clock_features,
    covered_clock_features,
    covered_clock_periods,
)
from detector.model import CLOCK_LAYER, ForecasterConfig, build_forecaster, gaussian_nll
from detector.scorer_config import ScorerConfig
from training.output_destinations import CHECKPOINT_SUFFIX, check_artifact_destination
from training.recordings import Recording

log = logging.getLogger(__name__)

REPORT_FILE = "training_report.json"
LOSS_PLOT_FILE = "loss_curves.png"


class TrainingError(ValueError):
    """The data or the options cannot produce a model; the message says why."""


@dataclasses.dataclass(frozen=True)
class TrainingOptions:
    """Everything that shapes a training run besides the data."""

    seed: int = 7
    epochs: int = 20
    batch_size: int = 256
    sequence_length: int = 64
    validation_fraction: float = 0.2
    learning_rate: float = 1e-3
    early_stopping_patience: int = 3
    memory_units: int = 20  # the settings' default: why 20, see cellwatch.settings
    hidden_units: int = 32
    time_features: bool = True
    scorer: ScorerConfig = dataclasses.field(default_factory=ScorerConfig)
    verbose: int = 1


@dataclasses.dataclass(frozen=True)
class Windows:
    """Training examples: model inputs and next-reading changes, ``[n, length, ...]``."""

    values: np.ndarray
    clock: np.ndarray
    targets: np.ndarray

    def __len__(self) -> int:
        return self.values.shape[0]

    def inputs(self, time_features: bool) -> dict[str, np.ndarray]:
        return {"values": self.values, "clock": self.clock} if time_features else {
            "values": self.values}


@dataclasses.dataclass(frozen=True)
class TrainingResult:
    metadata: ArtifactMetadata
    report: dict[str, Any]
    report_path: Path
    plot_path: Path


def split_point(length: int, validation_fraction: float) -> int:
    """Index of a stream's first validation reading."""
    return round(length * (1.0 - validation_fraction))


def fingerprint(recording: Recording) -> str:
    """A short hash of the training data: stream ids, times and values."""
    sha = hashlib.sha256()
    sha.update(json.dumps(list(recording.channels)).encode())
    for stream_id, series in recording.streams.items():
        sha.update(stream_id.encode())
        sha.update(np.ascontiguousarray(series.timestamps_ms, dtype="<i8").tobytes())
        sha.update(np.ascontiguousarray(series.values, dtype="<f8").tobytes())
    return sha.hexdigest()[:16]


def _windows_of(model_input, clock, targets, length: int) -> Windows | None:
    """Half-overlapping windows over one stretch of a stream, the last one flush with its end."""
    steps = targets.shape[0]
    if steps < length:
        return None
    starts = list(range(0, steps - length + 1, max(1, length // 2)))
    if starts[-1] != steps - length:
        starts.append(steps - length)
    index = np.asarray(starts)[:, None] + np.arange(length)[None, :]
    return Windows(model_input[index], clock[index], targets[index])


def _concat(parts: list[Windows]) -> Windows:
    return Windows(*(np.concatenate([getattr(p, f.name) for p in parts])
                     for f in dataclasses.fields(Windows)))


def training_span_ms(recording: Recording, validation_fraction: float) -> int:
    """The longest time a stream's training part (before its validation split) spans."""
    spans = [int(series.timestamps_ms[split - 1] - series.timestamps_ms[0])
             for series in recording.streams.values()
             if (split := split_point(series.values.shape[0], validation_fraction)) >= 1]
    return max(spans, default=0)


def make_windows(recording: Recording, scaler: ChannelScaler, length: int,
                 validation_fraction: float,
                 clock_columns: np.ndarray | None = None) -> tuple[Windows, Windows]:
    """Training and validation windows of every stream, split by time; the clock's columns
    outside ``clock_columns`` (bool, all by default) are zero."""
    train_parts, validation_parts = [], []
    for series in recording.streams.values():
        normalized = scaler.normalize(series.values)
        model_input = scaler.model_input(normalized)
        clock = clock_features(series.timestamps_ms)
        if clock_columns is not None:
            clock = clock * clock_columns.astype(np.float32)
        # Step t sees reading t and learns the change to reading t + 1.
        targets = (normalized[1:] - normalized[:-1]).astype(np.float32)
        split = split_point(series.values.shape[0], validation_fraction)
        # Training targets stay before the split; validation inputs start at it.
        for part, (lo, hi) in ((train_parts, (0, split - 1)),
                               (validation_parts, (split, targets.shape[0]))):
            windows = _windows_of(model_input[lo:hi], clock[lo:hi], targets[lo:hi], length)
            if windows is not None:
                part.append(windows)
    if not train_parts:
        raise TrainingError(
            f"no stream is long enough to train on: each needs at least "
            f"{length + 1} readings before its validation part (sequence_length={length})")
    if not validation_parts:
        raise TrainingError(
            f"no stream has {length} readings in its validation part; use more data, a "
            f"larger validation_fraction or a shorter sequence_length (now {length})")
    return _concat(train_parts), _concat(validation_parts)


def _dataset(windows: Windows, options: TrainingOptions, shuffle: bool) -> tf.data.Dataset:
    data = tf.data.Dataset.from_tensor_slices(
        (windows.inputs(options.time_features), windows.targets))
    if shuffle:
        data = data.shuffle(len(windows), seed=options.seed, reshuffle_each_iteration=True)
    return data.batch(options.batch_size).prefetch(tf.data.AUTOTUNE)


def _calibration(model: keras.Model, windows: Windows, options: TrainingOptions,
                 channels: int) -> dict[str, float]:
    """How well the predicted scales fit the validation residuals."""
    output = model.predict(windows.inputs(options.time_features), verbose=0,
                           batch_size=options.batch_size)
    z = (windows.targets - output[..., :channels]) / output[..., channels:]
    return {
        "validation_standardized_rms": float(np.sqrt(np.mean(z * z))),
        "validation_within_2_sigma": float(np.mean(np.abs(z) <= 2.0)),
    }


@dataclasses.dataclass(frozen=True)
class Fitted:
    """A trained forecaster, its normalization and the facts of its training."""

    model: keras.Model
    forecaster: ForecasterConfig
    scaler: ChannelScaler
    history: dict[str, list[float]]
    report: dict[str, Any]


class ModelCache:
    """Compiled forecasters kept across fits, reset to their seeded initial state each time.

    Building a Keras model and tracing its train, evaluation and predict functions costs
    seconds, more than fitting a few hundred readings does; NAB's protocol fits one model per
    file. A cache builds and compiles the model of a given shape once, remembers its weights
    as initialized from the seed, and hands the same model to every later fit with those
    weights restored and the optimizer's state (step count, moments) zeroed, so each fit
    starts exactly where a newly built model would: same weights, same optimizer state,
    same seeded batch order (a test checks the trained weights are equal).

    The model handed out is shared: a later :meth:`fresh_model` call overwrites its weights,
    so take what you need from a fit (e.g. :func:`detector.model.step_params`) before the
    next one. Not thread-safe.
    """

    def __init__(self) -> None:
        self._entries: dict[tuple, tuple[keras.Model, list[np.ndarray]]] = {}

    def fresh_model(self, forecaster: ForecasterConfig,
                    options: TrainingOptions) -> keras.Model:
        """A compiled forecaster with freshly initialized weights (from ``options.seed``)."""
        keras.utils.set_random_seed(options.seed)
        tf.config.experimental.enable_op_determinism()
        key = (forecaster, options.seed, options.learning_rate)
        entry = self._entries.get(key)
        if entry is None:
            model = build_forecaster(forecaster)
            model.compile(optimizer=keras.optimizers.Adam(options.learning_rate, clipnorm=1.0),
                          loss=gaussian_nll)
            self._entries[key] = (model, model.get_weights())
            return model
        model, initial = entry
        model.set_weights(initial)
        optimizer = model.optimizer
        for variable in optimizer.variables:
            # Adam's step count and moments start at zero; the learning rate is kept.
            if variable is not optimizer._learning_rate:
                variable.assign(np.zeros(variable.shape, dtype=variable.dtype))
        return model


def fit(recording: Recording, options: TrainingOptions = TrainingOptions(),
        checkpoint_dir: Path | None = None, cache: ModelCache | None = None) -> Fitted:
    """Trains a forecaster on ``recording`` in memory.

    Args:
        checkpoint_dir: where each finished epoch is backed up so an interrupted run resumes
            there; None trains without backups.
        cache: reuse compiled models across fits (:class:`ModelCache`); the returned model
            is then shared with later fits of the same cache. None builds a new model.

    Raises:
        TrainingError: the data cannot train a model (too short, no channels, ...).
    """
    filled = recording.filled()
    train_part = np.concatenate([
        series.values[:split_point(series.values.shape[0], options.validation_fraction)]
        for series in filled.streams.values()])
    try:
        scaler = ChannelScaler.fit(train_part)
    except ValueError as error:
        raise TrainingError(f"cannot normalize the training data: {error}") from None
    # The clock's periods the training data covers twice; the model never sees the others
    # (a week seen once would teach it that one Tuesday's pattern is every Tuesday's).
    span = training_span_ms(filled, options.validation_fraction)
    clock_columns = covered_clock_features(span)
    train_windows, validation_windows = make_windows(
        filled, scaler, options.sequence_length, options.validation_fraction, clock_columns)

    forecaster = ForecasterConfig(channels=len(recording.channels),
                                  time_features=options.time_features,
                                  memory_units=options.memory_units,
                                  dependency_units=options.hidden_units,
                                  hidden_units=options.hidden_units)
    model = (cache or ModelCache()).fresh_model(forecaster, options)

    history_path = None if checkpoint_dir is None else checkpoint_dir / "history.json"
    previous_history = (json.loads(history_path.read_text())
                        if history_path is not None and history_path.is_file()
                        else {"loss": [], "val_loss": []})
    if previous_history["loss"]:
        log.info("resuming training from %s after epoch %d", checkpoint_dir,
                 len(previous_history["loss"]))
    recorder = _HistoryRecorder(history_path, previous_history)
    callbacks: list[keras.callbacks.Callback] = [
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=options.early_stopping_patience,
                                      restore_best_weights=True),
        keras.callbacks.TerminateOnNaN(),
        recorder,
    ]
    if checkpoint_dir is not None:
        callbacks.insert(0, keras.callbacks.BackupAndRestore(str(checkpoint_dir / "backup"),
                                                             delete_checkpoint=False))
    fit_started = time.monotonic()
    model.fit(_dataset(train_windows, options, shuffle=True),
              validation_data=_dataset(validation_windows, options, shuffle=False),
              epochs=options.epochs, callbacks=callbacks, verbose=options.verbose,
              shuffle=False)  # the dataset shuffles itself, with the seed
    fit_seconds = time.monotonic() - fit_started
    if options.time_features:
        # The uncovered columns were zero in training, so their kernel rows never learned:
        # zero them, and the model ignores those periods when it serves as well.
        clock_kernel = model.get_layer(CLOCK_LAYER).kernel
        clock_kernel.assign(keras.ops.convert_to_numpy(clock_kernel)
                            * clock_columns[:, None].astype(np.float32))
    history = recorder.history
    if not history["loss"] or not np.isfinite(history["loss"][-1]):
        raise TrainingError("training diverged (loss is NaN); try a lower learning_rate")

    best_epoch = int(np.argmin(history["val_loss"])) + 1
    report: dict[str, Any] = {
        "data_fingerprint": fingerprint(recording),
        "channels": list(recording.channels),
        "streams": len(recording.streams),
        "readings": sum(series.values.shape[0] for series in recording.streams.values()),
        "ingest": dataclasses.asdict(filled.summary),
        "train_windows": len(train_windows),
        "validation_windows": len(validation_windows),
        "sequence_length": options.sequence_length,
        "clock_periods_days": [period / MS_PER_DAY for period in covered_clock_periods(span)]
        if options.time_features else [],
        "epochs_run": len(history["loss"]),
        "best_epoch": best_epoch,
        "loss": history["loss"],
        "val_loss": history["val_loss"],
        "best_val_loss": float(min(history["val_loss"])),
        **_calibration(model, validation_windows, options, forecaster.channels),
        "seed": options.seed,
        "fit_seconds": round(fit_seconds, 2),
    }
    return Fitted(model, forecaster, scaler, history, report)


def train(recording: Recording, artifact_path: Path,
          options: TrainingOptions = TrainingOptions()) -> TrainingResult:
    """Trains a forecaster on ``recording`` and writes the artifact and its report.

    Raises:
        TrainingError: the data cannot train a model (too short, no channels, ...).
        OutputPathError: ``artifact_path`` holds something other than an earlier artifact
            (checked before training and again before the artifact is written).
    """
    started = time.monotonic()
    artifact_path = Path(artifact_path)
    # The artifact replaces what is at its path: only an earlier artifact may be there.
    check_artifact_destination(artifact_path)
    checkpoint_dir = artifact_path.parent / f"{artifact_path.name}{CHECKPOINT_SUFFIX}"
    fitted = fit(recording, options, checkpoint_dir)
    report = fitted.report
    check_artifact_destination(artifact_path)  # again: training takes a while
    metadata = save_artifact(artifact_path, fitted.model, recording.channels, fitted.forecaster,
                             fitted.scaler, options.scorer, training=_training_summary(report))
    report["model_version"] = metadata.model_version
    report["total_seconds"] = round(time.monotonic() - started, 2)
    report["readings_per_second"] = round(report["readings"] / report["total_seconds"], 1)
    report_path = artifact_path.parent / f"{artifact_path.name}.{REPORT_FILE}"
    plot_path = artifact_path.parent / f"{artifact_path.name}.{LOSS_PLOT_FILE}"
    report_path.write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
    plot_loss_curves(fitted.history, report["best_epoch"], plot_path)
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    return TrainingResult(metadata, report, report_path, plot_path)


def _training_summary(report: dict[str, Any]) -> dict[str, Any]:
    keys = ("data_fingerprint", "streams", "readings", "epochs_run", "best_epoch",
            "best_val_loss", "validation_standardized_rms", "validation_within_2_sigma", "seed")
    return {key: report[key] for key in keys}


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serializable: {value!r}")


class _HistoryRecorder(keras.callbacks.Callback):
    """Keeps the loss history across resumed runs, next to the backup of the weights."""

    def __init__(self, path: Path | None, history: dict[str, list[float]]) -> None:
        super().__init__()
        self.path = path
        self.history = history

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        logs = logs or {}
        # BackupAndRestore resumes at the epoch after the last finished one; drop any epochs
        # recorded past it by a run that died between the two writes.
        del self.history["loss"][epoch:], self.history["val_loss"][epoch:]
        self.history["loss"].append(float(logs.get("loss", float("nan"))))
        self.history["val_loss"].append(float(logs.get("val_loss", float("nan"))))
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.history))


def plot_loss_curves(history: dict[str, list[float]], best_epoch: int, path: Path) -> None:
    """Training and validation loss per epoch, the restored best epoch marked."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    epochs = np.arange(1, len(history["loss"]) + 1)
    figure, axes = plt.subplots(figsize=(7, 4), dpi=100)
    axes.plot(epochs, history["loss"], marker="o", label="training")
    axes.plot(epochs, history["val_loss"], marker="o", label="validation")
    axes.axvline(best_epoch, color="grey", linestyle="--", label=f"best epoch ({best_epoch})")
    axes.set_xlabel("epoch")
    axes.set_ylabel("Gaussian negative log-likelihood")
    axes.set_title("cellwatch training")
    axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
