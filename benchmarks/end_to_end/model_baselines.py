"""(c) Keras per reading and (d) River: model calls alone, on already decoded readings."""

from __future__ import annotations

import time

import numpy as np

from benchmarks.end_to_end.readings import CHANNELS


def keras_per_reading(model, scaler, sample: list[dict]) -> dict:
    """One eager call of the Keras layers per reading; each stream's input window and memory
    state live in dicts outside the model (as in benchmarks/step_throughput.py)."""
    import keras

    from detector.features import clock_features

    clock_layer = model.get_layer("clock_encoding")
    dependency = model.get_layer("three_point")
    cell = model.get_layer("memory").cell
    stack = model.get_layer("stack")
    head = model.get_layer("forecast")
    units = cell.units
    windows: dict[str, object] = {}
    memories: dict[str, list] = {}

    def score(message: dict) -> None:
        stream = message["stream"]
        values = np.array([message["values"][name] for name in CHANNELS], np.float32)
        normalized = scaler.model_input(scaler.normalize(values))
        encoded = clock_layer(clock_features(np.array([message["ts"]]))[None])
        current = keras.ops.concatenate([normalized[None, None, :], encoded], axis=-1)
        window = windows.get(stream)
        if window is None:
            window = np.zeros((1, 3, current.shape[-1]), np.float32)
        window = keras.ops.concatenate([window[:, 1:], current], axis=1)
        features = dependency(window)[:, -1]
        memory = memories.get(stream) or [np.zeros((1, units), np.float32)]
        output, memory = cell(features, memory)
        head(stack(output))
        windows[stream] = window
        memories[stream] = memory

    score({**sample[0], "stream": "warm-up"})  # first calls build and trace, untimed
    started = time.perf_counter()
    for message in sample:
        score(message)
    elapsed = time.perf_counter() - started
    return {"readings": len(sample), "streams": len(windows) - 1,
            "seconds": round(elapsed, 3),
            "readings_per_second": round(len(sample) / elapsed, 1)}


def river_half_space_trees(sample: list[dict], seed: int) -> dict:
    """``MinMaxScaler() | HalfSpaceTrees(seed=...)``, one model shared by every stream;
    ``score_one`` then ``learn_one`` per reading, on the decoded ``values`` dicts."""
    from river import anomaly, preprocessing

    model = preprocessing.MinMaxScaler() | anomaly.HalfSpaceTrees(seed=seed)
    inputs = [message["values"] for message in sample]
    started = time.perf_counter()
    for x in inputs:
        model.score_one(x)
        model.learn_one(x)
    elapsed = time.perf_counter() - started
    return {"readings": len(inputs), "model": "one shared pipeline for all streams",
            "seconds": round(elapsed, 3),
            "readings_per_second": round(len(inputs) / elapsed)}
