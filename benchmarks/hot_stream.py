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

The ``mixed_`` figures are the worker's case: one poll holding ``--readings`` readings of the
hot stream (partition 0) interleaved with one reading each of as many other streams
(partition 1). Unpaced, the other streams' readings are published only after the hot
stream's rounds; paced (:mod:`streaming.pacing`, at most ``--max-stream-readings`` readings of
a stream per batch, the worker's default) the first batch holds them all and the hot
stream's rest follows in later batches. Reported: the first batch's seconds (how long the
other streams wait), and all batches' (the cost of the whole poll), each the fastest of
``--repeats``.

    python benchmarks/hot_stream.py [--json] [--readings 5000] [--repeats 3]
        [--max-stream-readings 100]
"""

from __future__ import annotations

import os

# One thread everywhere, as in step_throughput.py: the worker runs one step at a time.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402

from detector.features import ChannelScaler  # noqa: E402
from detector.model import ForecasterConfig, build_forecaster, step_params  # noqa: E402
from detector.scorer_config import ScorerConfig  # noqa: E402
from detector.step import StreamingStep  # noqa: E402
from streaming.engine import BatchResult, Reading, ScoringEngine  # noqa: E402
from streaming.output_records import encode_episode, encode_scores  # noqa: E402
from streaming.pacing import HeldBack  # noqa: E402
from streaming.state_store import StateStore  # noqa: E402
from streaming.worker import WorkerConfig  # noqa: E402

CHANNELS = 4
T0_MS = 1_700_000_000_000


def fresh_engine(step: StreamingStep) -> ScoringEngine:
    return ScoringEngine(step, StateStore(step.layout), [f"c{i}" for i in range(CHANNELS)],
                         "bench")


def timed_batch(engine: ScoringEngine, readings: list[Reading]) -> tuple[float, BatchResult]:
    """Wall seconds of one ``process`` call and the writing of its score and episode records,
    as the worker publishes them; and the call's result."""
    start = time.perf_counter()
    result = engine.process(readings)
    encode_scores(result.scores)
    for ended in result.episodes:
        encode_episode(ended)
    return time.perf_counter() - start, result


def engine_seconds(step: StreamingStep, readings: list[Reading],
                   repeats: int) -> tuple[float, float, int]:
    """(:func:`timed_batch`'s seconds; seconds inside the step; step calls) of one batch, the
    fastest of ``repeats`` runs, each on a fresh engine."""
    runs = []
    for _ in range(repeats):
        seconds, result = timed_batch(fresh_engine(step), readings)
        runs.append((seconds, result.step_seconds, result.step_calls))
    return min(runs)


@dataclasses.dataclass(frozen=True)
class Polled:
    """What pacing reads of a consumed record (its partition and key), and its reading."""

    partition: int
    key: bytes
    reading: Reading


def paced_seconds(step: StreamingStep, polled: list[Polled], max_stream_readings: int | None,
                  repeats: int) -> tuple[float, float, int]:
    """(first batch's seconds, all batches' seconds, batches) of one poll, paced as the worker
    paces it (None: unpaced, one batch), the fastest of ``repeats`` runs."""
    runs = []
    for _ in range(repeats):
        engine = fresh_engine(step)
        if max_stream_readings is None:
            seconds, _ = timed_batch(engine, [record.reading for record in polled])
            runs.append((seconds, seconds, 1))
            continue
        held = HeldBack(max_stream_readings)
        batch = held.next_batch(polled)
        times = [timed_batch(engine, [record.reading for record in batch])[0]]
        while len(held):
            batch = held.next_batch([])
            times.append(timed_batch(engine, [record.reading for record in batch])[0])
        runs.append((times[0], sum(times), len(times)))
    return min(run[0] for run in runs), min(run[1] for run in runs), runs[0][2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--readings", type=int, default=5000, help="readings per batch")
    parser.add_argument("--repeats", type=int, default=3, help="runs per batch; the fastest counts")
    parser.add_argument("--max-stream-readings", type=int,
                        default=WorkerConfig.max_stream_readings_per_batch,
                        help="pacing: readings of one stream per batch")
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
    mixed = [record for i in range(n) for record in (
        Polled(0, b"hot", hot[i]), Polled(1, spread[i].stream.encode(),
                                          dataclasses.replace(spread[i], partition=1)))]
    engine_seconds(step, spread[:10], 1)  # warm up
    hot_s, hot_step_s, hot_calls = engine_seconds(step, hot, args.repeats)
    spread_s, _, spread_calls = engine_seconds(step, spread, args.repeats)
    several_s, _, several_calls = engine_seconds(step, several, args.repeats)
    unpaced_s, _, _ = paced_seconds(step, mixed, None, args.repeats)
    paced_first_s, paced_all_s, paced_batches = paced_seconds(
        step, mixed, args.max_stream_readings, args.repeats)
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
        "mixed_max_stream_readings": args.max_stream_readings,
        "mixed_unpaced_seconds": round(unpaced_s, 4),
        "mixed_paced_first_batch_seconds": round(paced_first_s, 4),
        "mixed_paced_all_batches_seconds": round(paced_all_s, 4),
        "mixed_paced_batches": paced_batches,
    }
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key}: {value}")


if __name__ == "__main__":
    main()
