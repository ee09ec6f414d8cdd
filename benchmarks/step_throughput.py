"""Readings per second of the vectorized streaming step, next to a per-reading Keras call.

For 100,000 streams (``--streams``), batches of 1, 64, 1,024 and 16,384 random streams
(``--batches``) are gathered from the state table, advanced by one reading and scattered
back, as the worker does. The NumPy step
and the same math compiled as a TensorFlow function (the exported SavedModel step) are both
measured, on one core (BLAS and TensorFlow limited to one thread), so the faster one can be
chosen on evidence. The baseline calls the Keras layers once per reading, as the seed
documents would.

    python benchmarks/step_throughput.py [--json] [--seconds 2]
"""

from __future__ import annotations

import os

# One thread everywhere: the target is per core, and the worker runs one step at a time.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from detector.export import ExportedStep  # noqa: E402
from detector.features import ChannelScaler, clock_features  # noqa: E402
from detector.model import ForecasterConfig, build_forecaster, step_params  # noqa: E402
from detector.scorer_config import ScorerConfig  # noqa: E402
from detector.step import StreamingStep  # noqa: E402

CHANNELS = 4


def measure(advance, streams_total: int, batch: int, seconds: float,
            rng: np.random.Generator) -> float:
    """Readings per second of gather -> advance -> scatter over random unique streams."""
    done = 0
    start = time.perf_counter()
    while True:
        streams = rng.choice(streams_total, size=batch, replace=False) if batch > 1 else \
            rng.integers(0, streams_total, size=1)
        advance(streams)
        done += batch
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and done >= 3 * batch:
            return done / elapsed


def keras_per_reading(model: keras.Model, config: ForecasterConfig, readings: int,
                      rng: np.random.Generator) -> float:
    """One eager call of the Keras layers per reading, each stream's state held outside."""
    clock_layer = model.get_layer("clock_encoding")
    dependency = model.get_layer("three_point")
    cell = model.get_layer("memory").cell
    stack = model.get_layer("stack")
    head = model.get_layer("forecast")
    window = np.zeros((1, 3, config.input_width), np.float32)
    memory = [np.zeros((1, config.memory_units), np.float32)]
    values = rng.normal(size=(readings, CHANNELS)).astype(np.float32)
    clocks = clock_features(1_700_000_000_000 + 60_000 * np.arange(readings))
    start = time.perf_counter()
    for i in range(readings):
        encoded = clock_layer(clocks[i][None, None, :])
        current = keras.ops.concatenate([values[i][None, None, :], encoded], axis=-1)
        window = keras.ops.concatenate([window[:, 1:], current], axis=1)
        features = dependency(window)[:, -1]
        output, memory = cell(features, memory)
        head(stack(output))
    return readings / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    parser.add_argument("--keras-readings", type=int, default=300,
                        help="readings for the per-reading Keras comparison (at least 1)")
    parser.add_argument("--streams", type=int, default=100_000, help="streams in the table")
    parser.add_argument("--batches", default="1,64,1024,16384",
                        help="comma-separated batch sizes (each at most --streams)")
    args = parser.parse_args()
    if args.keras_readings < 1:
        parser.error(f"--keras-readings: expected at least 1, received {args.keras_readings}")
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)

    keras.utils.set_random_seed(1)
    rng = np.random.default_rng(1)
    config = ForecasterConfig(channels=CHANNELS)
    model = build_forecaster(config)
    scaler = ChannelScaler((0.0,) * CHANNELS, (1.0,) * CHANNELS)
    step = StreamingStep(step_params(model), scaler, ScorerConfig())
    exported = ExportedStep(step)

    streams_total = args.streams
    batch_sizes = [int(size) for size in args.batches.split(",")]
    if any(not 1 <= size <= streams_total for size in batch_sizes):
        parser.error(f"--batches: each size must be between 1 and --streams ({streams_total})")
    states = step.layout.initial(streams_total)
    values = rng.normal(size=(streams_total, CHANNELS)).astype(np.float32)
    timestamps = 1_700_000_000_000 + rng.integers(0, 10**9, size=streams_total)

    def numpy_advance(streams):
        _, states[streams] = step(values[streams], timestamps[streams], states[streams])

    def tensorflow_advance(streams):
        out = exported.step(values[streams], timestamps[streams], states[streams])
        states[streams] = out["state"].numpy()

    report = {
        "streams": streams_total,
        "channels": CHANNELS,
        "threads": 1,
        "state_bytes_per_stream": step.layout.record_bytes,
        "state_table_bytes": int(states.nbytes),
        "numpy_step_readings_per_second": {},
        "tf_function_step_readings_per_second": {},
    }
    for batch in batch_sizes:
        report["numpy_step_readings_per_second"][str(batch)] = round(
            measure(numpy_advance, streams_total, batch, args.seconds, rng))
        tensorflow_advance(rng.integers(0, streams_total, size=batch))  # trace once, untimed
        report["tf_function_step_readings_per_second"][str(batch)] = round(
            measure(tensorflow_advance, streams_total, batch, args.seconds, rng))
    report["keras_per_reading_readings_per_second"] = round(
        keras_per_reading(model, config, args.keras_readings, rng), 1)
    largest = str(max(batch_sizes))
    best = max(report["numpy_step_readings_per_second"][largest],
               report["tf_function_step_readings_per_second"][largest])
    report[f"speedup_at_{largest}_vs_keras_per_reading"] = round(
        best / report["keras_per_reading_readings_per_second"], 1)

    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key}: {value}")


if __name__ == "__main__":
    main()
