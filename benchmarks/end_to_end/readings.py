"""The benchmarks' readings: 4 channels of a 2-hour cycle with noise, in the worker's JSON
format, keyed by stream, produced into a topic by child processes."""

from __future__ import annotations

import math
import multiprocessing
import time
import zlib

import numpy as np

from benchmarks.end_to_end.processes import end_processes, get_result
from detector.readings import ReadingMessageWriter

CHANNELS = ("temperature", "pressure", "vibration", "current")
READING_WRITER = ReadingMessageWriter(CHANNELS)
# Per channel: level, amplitude of a 2-hour cycle, noise; the artifact's normalization matches.
LEVEL = np.array([20.0, 1.0, 0.5, 10.0])
AMPLITUDE = np.array([2.0, 0.1, 0.1, 1.0])
NOISE = np.array([0.2, 0.01, 0.05, 0.3])
START_MS = 1_700_000_000_000
INTERVAL_MS = 60_000
POLL_RECORDS = 5000  # the worker's default max_poll_records, used by the bare consumer too


def stream_name(index: int) -> str:
    return f"stream-{index:05d}"


def stream_partitions(streams: int, partitions: int) -> np.ndarray:
    """Partition of each stream: CRC-32 of its id, computed once (no per-send partitioner)."""
    return np.array([zlib.crc32(stream_name(s).encode()) % partitions for s in range(streams)],
                    dtype=np.int64)


def signal(streams: np.ndarray, step: int, rng: np.random.Generator) -> np.ndarray:
    """Readings ``[len(streams), 4]`` of ``streams`` at their ``step``-th reading."""
    phase = 2 * math.pi * step / 120 + (streams * 0.618)[:, None]
    return LEVEL + AMPLITUDE * np.sin(phase) + NOISE * rng.standard_normal((len(streams), 4))


def reading_json(stream: str, ts: int, v: list[float]) -> bytes:
    """A reading in the worker's format, by the product's writer; values rounded to a
    sensor's few digits, as producers send them (and the messages stay their real size)."""
    return READING_WRITER.message(stream, ts, [round(v[0], 3), round(v[1], 4),
                                               round(v[2], 4), round(v[3], 3)])


def _produce_share(bootstrap: str, topic: str, readings: int, streams: int, partitions: int,
                   share: int, shares: int, seed: int, results) -> None:
    """Producer process: the readings of the streams whose partition % shares == share.

    Global order is round-major (every stream's k-th reading before any (k+1)-th), so
    timestamps increase per stream and a poll batch holds mostly distinct streams.
    """
    try:
        from kafka import KafkaProducer

        producer = KafkaProducer(bootstrap_servers=bootstrap, acks=1, enable_idempotence=False,
                                 linger_ms=50, batch_size=1 << 20,
                                 max_request_size=8 << 20)
        parts = stream_partitions(streams, partitions)
        mine = np.flatnonzero(parts % shares == share)
        index = mine.tolist()
        keys = [stream_name(s).encode() for s in index]
        names = [stream_name(s) for s in index]
        part_of = parts[mine].tolist()
        rng = np.random.default_rng([seed, share])
        send = producer.send
        sent = 0
        started = time.perf_counter()
        for step in range(-(-readings // streams)):
            limit = readings - step * streams  # this round holds the streams below the limit
            ts = START_MS + step * INTERVAL_MS
            for j, values in enumerate(signal(mine, step, rng).tolist()):
                if index[j] >= limit:
                    break
                send(topic, value=reading_json(names[j], ts, values), key=keys[j],
                     partition=part_of[j])
                sent += 1
        producer.flush(timeout=600)
        elapsed = time.perf_counter() - started
        producer.close(timeout=30)
        results.put({"share": share, "sent": sent, "seconds": elapsed})
    except BaseException as error:
        results.put({"share": share, "error": repr(error)})
        raise


def produce_readings(bootstrap: str, topic: str, readings: int, streams: int, partitions: int,
                     producers: int, seed: int, timeout_s: float) -> dict:
    """Fills ``topic`` with ``readings`` readings from ``producers`` processes."""
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    processes = [ctx.Process(target=_produce_share, name=f"producer-{share}", daemon=True,
                             args=(bootstrap, topic, readings, streams, partitions, share,
                                   producers, seed, results))
                 for share in range(producers)]
    started = time.perf_counter()
    for process in processes:
        process.start()
    try:
        reports = [get_result(results, started + timeout_s, "producing the readings")
                   for _ in processes]
    finally:
        end_processes(processes)
    errors = [r["error"] for r in reports if "error" in r]
    if errors:
        raise RuntimeError(f"a producer failed: {errors[0]}")
    sent = sum(r["sent"] for r in reports)
    if sent != readings:
        raise RuntimeError(f"produced {sent} readings, expected {readings}")
    elapsed = time.perf_counter() - started
    return {"readings": sent, "seconds": round(elapsed, 2), "processes": producers,
            "readings_per_second": round(sent / elapsed)}
