"""The benchmark protocols' shared loop: per file, train on its first readings, score it all.

NAB's protocol trains each file's model on its probationary period, SKAB's on its first 400
readings; both then stream the whole file through the worker's step. One set of options
serves every file, and every file's model starts from the same seeded weights through one
:class:`~training.trainer.ModelCache`, so a file scores the same alone or among others while
the model is built and traced once.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

from training.evaluation import StreamScores, score_streams


def train_on_prefixes_and_score(
        recording, prefix_rows: Callable[[int], int], options,
        progress: Callable[[int, int, str], None] | None = None,
) -> tuple[dict[str, StreamScores], dict[str, dict]]:
    """Per stream of ``recording`` (filled): train on its first ``prefix_rows(len)``
    readings, then score the whole stream from its first reading.

    Returns the scores per stream and, per stream, ``rows``, ``prefix_rows``, ``epochs``
    and ``seconds``.
    """
    from detector.model import step_params
    from detector.step import StreamingStep
    from training.recordings import Recording, StreamSeries
    from training.trainer import ModelCache, fit

    scored: dict[str, StreamScores] = {}
    per_file: dict[str, dict] = {}
    cache = ModelCache()
    for index, (key, series) in enumerate(recording.streams.items()):
        started = time.monotonic()
        prefix = prefix_rows(len(series))
        training = Recording.from_series(recording.channels, [StreamSeries(
            key, series.timestamps_ms[:prefix], series.values[:prefix])])
        fitted = fit(training, options, cache=cache)
        step = StreamingStep(step_params(fitted.model), fitted.scaler, options.scorer)
        scored.update(score_streams(step, {key: (series.timestamps_ms, series.values)}))
        per_file[key] = {"rows": len(series), "prefix_rows": prefix,
                         "epochs": fitted.report["epochs_run"],
                         "seconds": round(time.monotonic() - started, 2)}
        if progress is not None:
            progress(index + 1, len(recording.streams), key)
    return scored, per_file


def options_summary(options) -> dict:
    """The training options' plain values, for a report."""
    return {name: value for name, value in dataclasses.asdict(options).items()
            if isinstance(value, bool | int | float | str)}
