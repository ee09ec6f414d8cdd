"""One hot stream against many cold ones: where a batch's time goes in the scoring engine.

The engine advances a batch in rounds, one per reading of its busiest stream (a stream's
readings depend on each other, so they cannot share a step call). A batch of ``--readings``
readings of one stream therefore makes that many step calls of one row each, where the same
number of readings of as many streams makes one call. This measures both, and how much of
the hot batch is the step itself (the rest is the engine's per-round bookkeeping and the
writing of the score records, as the worker publishes them), so a change to either can be
judged on evidence. A third batch holds the same number of readings of a fifth as many
streams, five each (five rounds of many rows: what a poll of a busy topic looks like).
Each batch is timed ``--repeats`` times, each time on a fresh engine; the fastest counts
(the machine's other work only ever adds time).

    python benchmarks/hot_stream.py [--json] [--readings 5000] [--repeats 3]
"""

from __future__ import annotations

import os

# One thread everywhere, as in step_throughput.py: the worker runs one step at a time.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402

from detector.features import ChannelScaler  # noqa: E402
from detector.model import ForecasterConfig, build_forecaster, step_params  # noqa: E402
from detector.scorer_config import ScorerConfig  # noqa: E402
from detector.step import StreamingStep  # noqa: E402
from streaming.engine import Reading, ScoringEngine  # noqa: E402
from streaming.output_records import encode_episode, encode_scores  # noqa: E402
from streaming.state_store import StateStore  # noqa: E402

CHANNELS = 4
T0_MS = 1_700_000_000_000


def engine_seconds(step: StreamingStep, readings: list[Reading],
                   repeats: int) -> tuple[float, float, int]:
    """(wall seconds of one ``process`` call and the writing of its score and episode records,
    as the worker publishes them; seconds inside the step; step calls), of the fastest of
    ``repeats`` runs."""
    runs = []
    for _ in range(repeats):
        engine = ScoringEngine(step, StateStore(step.layout),
                               [f"c{i}" for i in range(CHANNELS)], "bench")
        start = time.perf_counter()
        result = engine.process(readings)
        encode_scores(result.scores)
        for ended in result.episodes:
            encode_episode(ended)
        runs.append((time.perf_counter() - start, result.step_seconds, result.step_calls))
    return min(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--readings", type=int, default=5000, help="readings per batch")
    parser.add_argument("--repeats", type=int, default=3, help="runs per batch; the fastest counts")
    args = parser.parse_args()
    keras.utils.set_random_seed(1)
    rng = np.random.default_rng(1)
    model = build_forecaster(ForecasterConfig(channels=CHANNELS))
    step = StreamingStep(step_params(model), ChannelScaler((0.0,) * CHANNELS,
                                                           (1.0,) * CHANNELS), ScorerConfig())
    n = args.readings
    values = rng.normal(size=(n, CHANNELS)).astype(np.float32)
    hot = [Reading("hot", T0_MS + i * 60_000, values[i], 0, i) for i in range(n)]
    spread = [Reading(f"s{i}", T0_MS, values[i], 0, i) for i in range(n)]
    streams = max(n // 5, 1)
    several = [Reading(f"s{i % streams}", T0_MS + (i // streams) * 60_000, values[i], 0, i)
               for i in range(n)]
    engine_seconds(step, spread[:10], 1)  # warm up
    hot_s, hot_step_s, hot_calls = engine_seconds(step, hot, args.repeats)
    spread_s, _, spread_calls = engine_seconds(step, spread, args.repeats)
    several_s, _, several_calls = engine_seconds(step, several, args.repeats)
    report = {
        "readings": n,
        "channels": CHANNELS,
        "one_stream_seconds": round(hot_s, 4),
        "one_stream_step_calls": hot_calls,
        "one_stream_share_in_step": round(hot_step_s / hot_s, 3),
        "one_stream_seconds_per_round": round(hot_s / hot_calls, 6),
        "many_streams_seconds": round(spread_s, 4),
        "many_streams_step_calls": spread_calls,
        "slowdown": round(hot_s / spread_s, 1),
        "five_per_stream_seconds": round(several_s, 4),
        "five_per_stream_step_calls": several_calls,
    }
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key}: {value}")


if __name__ == "__main__":
    main()
