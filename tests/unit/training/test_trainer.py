"""Offline training: a cached, re-initialized model trains exactly as a newly built one."""

from __future__ import annotations

import keras
import numpy as np

from detector.features import MS_PER_DAY, clock_features, covered_clock_features
from detector.model import CLOCK_LAYER
from training.recordings import Recording, StreamSeries
from training.trainer import ModelCache, TrainingOptions, fit


def _recording(seed: int, n: int = 200) -> Recording:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    values = (np.sin(2 * np.pi * t / 48) + 0.1 * rng.normal(size=n))[:, None]
    timestamps = 1_700_000_000_000 + 300_000 * t
    return Recording.from_series(["value"], [StreamSeries(f"s{seed}", timestamps, values)])


OPTIONS = TrainingOptions(epochs=3, batch_size=8, sequence_length=16, memory_units=4,
                          hidden_units=4, early_stopping_patience=2, verbose=0)


def _weights(fitted) -> list[np.ndarray]:
    return [np.array(w) for w in fitted.model.get_weights()]


def test_cached_model_trains_as_a_new_one_file_after_file():
    """Fits of two recordings through one cache equal the fits of newly built models: the
    cache restores the seeded initial weights and zeroes the optimizer between fits."""
    new = [_weights(fit(_recording(seed), OPTIONS)) for seed in (1, 2)]
    cache = ModelCache()
    first = fit(_recording(1), OPTIONS, cache=cache)
    first_weights = _weights(first)
    second = fit(_recording(2), OPTIONS, cache=cache)
    assert second.model is first.model  # built and compiled once
    for cached, fresh in zip((first_weights, _weights(second)), new, strict=True):
        assert len(cached) == len(fresh)
        for a, b in zip(cached, fresh, strict=True):
            np.testing.assert_array_equal(a, b)
    # The learning rate survives the optimizer reset; the step count restarted.
    optimizer = second.model.optimizer
    np.testing.assert_allclose(float(optimizer.learning_rate), OPTIONS.learning_rate)
    assert int(optimizer.iterations) == second.report["epochs_run"] * 3  # batches per epoch


def test_cache_builds_one_model_per_shape():
    cache = ModelCache()
    small = fit(_recording(1), OPTIONS, cache=cache)
    wider = fit(_recording(1), TrainingOptions(**{**OPTIONS.__dict__, "hidden_units": 6}),
                cache=cache)
    assert wider.model is not small.model


def test_the_model_learns_only_the_clock_periods_its_training_data_covers_twice():
    """Five days of half-hourly readings cover the day often and the week not even once:
    the model reads the time of day and ignores the day of the week, in training and when
    it serves (a week seen once would teach it that one Tuesday is every Tuesday)."""
    n = 240
    rng = np.random.default_rng(3)
    t = np.arange(n)
    values = (np.sin(2 * np.pi * t / 48) + 0.1 * rng.normal(size=n))[:, None]
    timestamps = 1_700_000_000_000 + 1_800_000 * t
    recording = Recording.from_series(["value"], [StreamSeries("s", timestamps, values)])
    fitted = fit(recording, OPTIONS)
    assert fitted.report["clock_periods_days"] == [1.0]
    kernel = keras.ops.convert_to_numpy(fitted.model.get_layer(CLOCK_LAYER).kernel)
    assert np.all(kernel[4:] == 0.0) and np.all(np.abs(kernel[:4]).sum(axis=1) > 0.0)
    # The same readings a day and a week later: the weekday differs, the forecast does not.
    window = values[None, :48].astype(np.float32)
    forecasts = [fitted.model.predict(
        {"values": fitted.scaler.model_input(fitted.scaler.normalize(window)),
         "clock": clock_features(timestamps[None, :48] + shift)}, verbose=0)
        for shift in (0, MS_PER_DAY, 3 * MS_PER_DAY)]
    np.testing.assert_allclose(forecasts[1], forecasts[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(forecasts[2], forecasts[0], rtol=1e-6, atol=1e-6)


def test_clock_periods_are_covered_from_two_cycles():
    assert not covered_clock_features(2 * MS_PER_DAY - 1).any()
    assert covered_clock_features(2 * MS_PER_DAY).tolist() == [True] * 4 + [False] * 2
    assert covered_clock_features(14 * MS_PER_DAY).all()
