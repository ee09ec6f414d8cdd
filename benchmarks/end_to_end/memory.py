"""Memory per stream: the state store and scoring engine of the model, in a fresh process per
size."""

from __future__ import annotations

import gc
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np

from benchmarks.end_to_end.processes import end_processes, get_result
from benchmarks.end_to_end.readings import START_MS, signal

MEMORY_BATCH = 10_000


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _memory_child(artifact_path: str, streams: int, partitions: int, results) -> None:
    """Process per size: RSS growth of StateStore + ScoringEngine for ``streams`` streams."""
    try:
        from detector.artifact import load_artifact
        from streaming.engine import Reading, ScoringEngine
        from streaming.state_store import StateStore

        artifact = load_artifact(Path(artifact_path))
        step = artifact.step
        channels = artifact.metadata.channels
        version = artifact.metadata.model_version
        values = signal(np.arange(1024), 0, np.random.default_rng(0)).astype(np.float32)
        warm = ScoringEngine(step, StateStore(step.layout), channels, version)
        warm.process([Reading(f"warm-{i}", START_MS, values[i]) for i in range(64)])
        del warm
        store = StateStore(step.layout)
        engine = ScoringEngine(step, store, channels, version)
        gc.collect()
        before = _rss_bytes()
        started = time.perf_counter()
        for first in range(0, streams, MEMORY_BATCH):
            # Fresh id strings per batch, as parsed messages bring them: the store keeps them.
            batch = [Reading(f"stream-{i:07d}", START_MS, values[i % 1024], i % partitions, i)
                     for i in range(first, min(streams, first + MEMORY_BATCH))]
            engine.process(batch)
        del batch
        gc.collect()
        after = _rss_bytes()
        results.put({
            "streams": len(store),
            "rss_before_bytes": before, "rss_after_bytes": after,
            "rss_bytes_per_stream": round((after - before) / streams, 1),
            "state_store_nbytes_per_stream": round(store.nbytes / streams, 1),
            "state_record_bytes": step.layout.record_bytes,
            "seconds": round(time.perf_counter() - started, 2),
        })
    except BaseException as error:
        results.put({"error": repr(error)})
        raise


def memory_per_stream(artifact_path: Path, streams: int, partitions: int,
                      timeout_s: float) -> dict:
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    process = ctx.Process(target=_memory_child, name=f"memory-{streams}", daemon=True,
                          args=(str(artifact_path), streams, partitions, results))
    process.start()
    try:
        report = get_result(results, time.perf_counter() + timeout_s,
                            f"memory at {streams} streams")
    finally:
        end_processes([process])
    if "error" in report:
        raise RuntimeError(f"memory at {streams} streams: {report['error']}")
    return report
