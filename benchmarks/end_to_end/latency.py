"""End-to-end latency at a fixed offered load: a paced producer process, a fresh worker, a
consumer process noting when each score record arrives."""

from __future__ import annotations

import math
import multiprocessing
import time
from pathlib import Path

import numpy as np

from benchmarks.end_to_end.processes import end_processes
from benchmarks.end_to_end.readings import (
    reading_json,
    signal,
    stream_name,
    stream_partitions,
)
from benchmarks.end_to_end.running_worker import retrying, running_worker


def _paced_produce(bootstrap: str, topic: str, rate: float, total: int, streams: int,
                   partitions: int, ready, go, out_path: str, seed: int) -> None:
    """Producer process: ``total`` readings at ``rate`` per second, round-robin over streams;
    a reading's ``ts`` is its send time (ms); its exact send time and the time the broker
    acknowledged it (the input's own share of the latency) are saved per reading."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    parts = stream_partitions(streams, partitions).tolist()
    keys = [stream_name(s).encode() for s in range(streams)]
    names = [stream_name(s) for s in range(streams)]
    rng = np.random.default_rng(seed)
    values = signal(np.arange(streams), 0, rng).tolist()
    producer.partitions_for(topic)  # metadata fetched before the clock starts
    sent_s = np.zeros(total)
    acked_s = np.full(total, np.nan)
    stream_of = np.zeros(total, np.int64)
    ts_of = np.zeros(total, np.int64)
    last_ts = [0] * streams

    def acked(index: int, _metadata) -> None:  # on the producer's IO thread
        acked_s[index] = time.time()

    ready.set()
    go.wait(120)
    started = time.perf_counter()
    i = 0
    while i < total:
        due = min(total, int((time.perf_counter() - started) * rate) + 1)
        while i < due:
            s = i % streams
            now = time.time()
            ts = max(int(now * 1000), last_ts[s] + 1)
            last_ts[s] = ts
            producer.send(topic, value=reading_json(names[s], ts, values[s]), key=keys[s],
                          partition=parts[s]).add_callback(acked, i)
            sent_s[i] = now
            stream_of[i] = s
            ts_of[i] = ts
            i += 1
        pause = i / rate - (time.perf_counter() - started)
        if pause > 0:
            time.sleep(pause)
    elapsed = time.perf_counter() - started
    producer.flush(timeout=60)
    producer.close(timeout=10)
    np.savez(out_path, sent_s=sent_s, acked_s=acked_s, stream=stream_of, ts=ts_of,
             elapsed=elapsed)


def _watch_scores(bootstrap: str, topic: str, expected: int, ready, timeout_s: float,
                  out_path: str) -> None:
    """Consumer process on the scores topic: when each score record became visible."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                             enable_auto_commit=False, fetch_max_wait_ms=100)
    assigned = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
    consumer.assign(assigned)
    consumer.seek_to_beginning(*assigned)
    for tp in assigned:
        consumer.position(tp)
    ready.set()
    seen_s = np.zeros(expected)
    stream_of = np.zeros(expected, np.int64)
    ts_of = np.zeros(expected, np.int64)
    count = 0
    deadline = time.perf_counter() + timeout_s
    while count < expected and time.perf_counter() < deadline:
        batches = consumer.poll(timeout_ms=100)
        now = time.time()
        for batch in batches.values():
            for record in batch:
                if count == expected:
                    break
                value = record.value  # b'{"stream":"stream-00042","ts":1700000000000,...'
                start = value.index(b',"ts":') + 6
                seen_s[count] = now
                stream_of[count] = int(record.key[7:])
                ts_of[count] = int(value[start:value.index(b",", start)])
                count += 1
    consumer.close()
    np.savez(out_path, seen_s=seen_s[:count], stream=stream_of[:count], ts=ts_of[:count])


def _histogram_quantile(bounds: list[float], cumulative: list[float], q: float) -> float:
    """Prometheus' histogram_quantile: linear interpolation inside the bucket."""
    total = cumulative[-1]
    if total == 0:
        return math.nan
    rank = q * total
    for i, count in enumerate(cumulative):
        if count >= rank:
            if math.isinf(bounds[i]):
                return bounds[i - 1]
            lower = bounds[i - 1] if i else 0.0
            below = cumulative[i - 1] if i else 0.0
            return lower + (bounds[i] - lower) * (rank - below) / max(count - below, 1e-12)
    return bounds[-2]


def _worker_latency_histogram(registry, reference: str) -> dict:
    bounds, cumulative = [], []
    for family in registry.collect():
        if family.name != "cellwatch_end_to_end_latency_seconds":
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket") and sample.labels["reference"] == reference:
                bounds.append(float(sample.labels["le"]))
                cumulative.append(sample.value)
    return {f"p{round(q * 100)}_ms": round(_histogram_quantile(bounds, cumulative, q) * 1000, 2)
            for q in (0.5, 0.99)}


def latency(bootstrap: str, artifact_path: Path, prefix: str, streams: int, partitions: int,
            rate: float, seconds: float, max_readings: int, warmup_s: float,
            seed: int, workdir: Path, gc_freeze: bool = False,
            client: str = "kafka-python") -> dict:
    """The latency of a worker on ``client``; the paced producer and the watcher of the
    scores are the same kafka-python processes for every client."""
    return retrying(lambda attempt: _latency(
        bootstrap, artifact_path, f"{prefix}{attempt or ''}", streams, partitions, rate,
        seconds, max_readings, warmup_s, seed, workdir, gc_freeze, client), "latency")


def _latency(bootstrap: str, artifact_path: Path, prefix: str, streams: int, partitions: int,
             rate: float, seconds: float, max_readings: int, warmup_s: float,
             seed: int, workdir: Path, gc_freeze: bool, client: str) -> dict:
    from streaming.kafka_topics import ensure_topic

    topic = f"{prefix}.readings"
    ensure_topic({"bootstrap_servers": bootstrap}, topic, partitions)
    total = min(max_readings, int(rate * seconds))
    ctx = multiprocessing.get_context("spawn")
    producer_ready, watcher_ready, go = ctx.Event(), ctx.Event(), ctx.Event()
    sent_path, seen_path = str(workdir / "sent.npz"), str(workdir / "seen.npz")
    with running_worker(bootstrap, artifact_path, topic, prefix, partitions,
                        gc_freeze, client) as handle:
        watcher = ctx.Process(target=_watch_scores, name="score-watcher", daemon=True,
                              args=(bootstrap, handle.worker.config.scores_topic, total,
                                    watcher_ready, seconds + 120, seen_path))
        producer = ctx.Process(target=_paced_produce, name="paced-producer", daemon=True,
                               args=(bootstrap, topic, rate, total, streams, partitions,
                                     producer_ready, go, sent_path, seed))
        watcher.start()
        producer.start()
        try:
            for event, name in ((watcher_ready, "score watcher"),
                                (producer_ready, "paced producer")):
                if not event.wait(120):
                    raise TimeoutError(f"the {name} process did not get ready in 120 s")
            go.set()
            producer.join(seconds + 90)
            if producer.exitcode != 0:
                raise RuntimeError(f"the paced producer failed (exit code {producer.exitcode})")
            watcher.join(150)
            if watcher.exitcode != 0:
                raise RuntimeError(f"the score watcher failed (exit code {watcher.exitcode})")
        finally:
            end_processes([producer, watcher])
        histogram = _worker_latency_histogram(handle.registry, "broker_time")
        t = handle.timings
        per_batch = max(t.batches, 1)
        batches = {"batches": t.batches,
                   "mean_readings": round(t.records / per_batch, 1),
                   "mean_ms_records_to_commit": round(t.process / per_batch * 1000, 2),
                   "mean_ms_in_flush": round(t.flush / per_batch * 1000, 2),
                   "mean_ms_in_commit": round(t.commit / per_batch * 1000, 2),
                   "polls_ms_total_per_batch": round(t.poll / per_batch * 1000, 2)}
    sent = np.load(sent_path)
    seen = np.load(seen_path)
    sent_at = {(int(s), int(t)): float(x)
               for s, t, x in zip(sent["stream"], sent["ts"], sent["sent_s"], strict=True)}
    first = float(sent["sent_s"][0])
    pairs = [(sent_at[(int(s), int(t))], float(x))
             for s, t, x in zip(seen["stream"], seen["ts"], seen["seen_s"], strict=True)
             if (int(s), int(t)) in sent_at]
    if not pairs:
        raise RuntimeError("latency: no score record matched a produced reading")
    sent_s = np.array([p[0] for p in pairs])
    ms = (np.array([p[1] for p in pairs]) - sent_s) * 1000
    steady = ms[sent_s >= first + warmup_s]
    input_ack_ms = (sent["acked_s"] - sent["sent_s"]) * 1000
    input_ack_ms = input_ack_ms[np.isfinite(input_ack_ms) & (sent["sent_s"] >= first + warmup_s)]

    def quantiles(values: np.ndarray) -> dict:
        return {"p50_ms": round(float(np.percentile(values, 50)), 2),
                "p99_ms": round(float(np.percentile(values, 99)), 2),
                "max_ms": round(float(values.max()), 2), "readings": int(values.size)}

    return {
        "client": client,
        "method": "score record's arrival at a consumer of the scores topic (separate process) "
                  "minus its reading's producer send() time (separate process)",
        "offered_readings_per_second": rate,
        "achieved_readings_per_second": round(total / float(sent["elapsed"]), 1),
        "produced": total,
        "scores_seen": int(seen["seen_s"].size),
        "worker_batches": batches,
        "warmup_seconds_excluded": warmup_s,
        "steady": quantiles(steady),
        "all": quantiles(ms),
        # The input's share: the paced producer's send() until the broker acknowledged it.
        "input_send_to_ack_steady": quantiles(input_ack_ms),
        # The worker's own histogram: input record timestamp (CreateTime, i.e. the producer's
        # send()) until the worker's flush returned; all readings, interpolated in buckets.
        "worker_histogram_broker_time": histogram,
    }
