"""Offline training: a cached, re-initialized model trains exactly as a newly built one."""

from __future__ import annotations

import numpy as np

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
