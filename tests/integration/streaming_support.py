"""Helpers for the worker's integration tests: a small artifact, a worker thread, topic reads."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from cellwatch.settings import Settings, load_settings
from cellwatch.wiring import run_worker
from detector.artifact import save_artifact
from detector.features import ChannelScaler
from detector.scorer_config import ScorerConfig
from streaming.messages import reading_message
from tests.unit.detector.conftest import make_model

CHANNELS = ("temperature", "pressure", "vibration")


def small_artifact(path: Path, seed: int = 11) -> Path:
    """A forecaster with fixed random weights, a short learning period and a low threshold."""
    config, model = make_model(time_features=True, seed=seed)
    scaler = ChannelScaler((20.0, 1.0, 0.5), (2.0, 0.1, 0.2))
    save_artifact(path, model, CHANNELS, config, scaler,
                  ScorerConfig(learning_period=20, history=200, threshold=0.999),
                  training={"data_fingerprint": "integration-test"})
    return path


def readings(streams: int, per_stream: int, seed: int = 3,
             start_ms: int = 1_700_000_000_000) -> list[tuple[str, int, list[float]]]:
    """Smooth synthetic readings, interleaved across streams in time order."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(per_stream):
        for s in range(streams):
            ts = start_ms + i * 60_000
            phase = 2 * np.pi * i / 120 + s
            values = [20 + 2 * np.sin(phase) + rng.normal(0, 0.2),
                      1 + 0.1 * np.cos(phase) + rng.normal(0, 0.01),
                      0.5 + rng.normal(0, 0.05)]
            out.append((f"stream-{s:03d}", ts, [float(v) for v in values]))
    return out


def worker_settings(bootstrap: str, artifact: Path, readings_topic: str, prefix: str,
                    client: str = "kafka-python", **worker: object) -> Settings:
    overrides = {
        "kafka.client": client,
        "kafka.bootstrap_servers": bootstrap,
        "kafka.group_id": f"{prefix}-group",
        "kafka.readings_topic": readings_topic,
        "kafka.scores_topic": f"{prefix}-scores",
        "kafka.anomalies_topic": f"{prefix}-anomalies",
        "kafka.dead_letter_topic": f"{prefix}-dead-letter",
        "kafka.changelog_topic": f"{prefix}-changelog",
        "kafka.session_timeout_ms": 6000,
        "model.artifact": str(artifact),
        "metrics.port": 0,
        "worker.poll_timeout_ms": 100,
        **{f"worker.{key}": value for key, value in worker.items()},
    }
    return load_settings(environ={}, overrides=overrides)


@contextmanager
def worker_thread(settings: Settings, timeout_s: float = 60.0) -> Iterator[dict]:
    """Runs the worker in a thread; yields ``{"endpoint": ...}`` once metrics are served;
    stops it (as SIGTERM would) on exit and re-raises what the worker raised."""
    stop = threading.Event()
    ready = threading.Event()
    state: dict = {}

    def on_ready(endpoint) -> None:
        state["endpoint"] = endpoint
        ready.set()

    def target() -> None:
        try:
            run_worker(settings, stop, on_ready=on_ready)
        except BaseException as error:  # surfaced to the test below
            state["error"] = error
            ready.set()

    thread = threading.Thread(target=target, name="cellwatch-worker", daemon=True)
    thread.start()
    if not ready.wait(timeout_s):
        raise TimeoutError("the worker did not start serving metrics")
    if "error" in state:
        raise state["error"]
    try:
        yield state
    finally:
        stop.set()
        thread.join(timeout_s)
        if thread.is_alive():
            raise TimeoutError("the worker did not stop after the stop event")
        if "error" in state:
            raise state["error"]


def produce(bootstrap: str, topic: str, messages: list[tuple[bytes | None, bytes | None]],
            headers: list[tuple[str, bytes]] | None = None) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    try:
        for key, value in messages:
            producer.send(topic, key=key, value=value, headers=headers)
        producer.flush(60)
    finally:
        producer.close()


def reading_bytes(stream: str, ts: int, values: list[float]) -> bytes:
    """A reading as producers write it, by the product's own writer."""
    return reading_message(stream, ts, values, CHANNELS)


def read_topic(bootstrap: str, topic: str, expected: int, timeout_s: float = 90.0) -> list:
    """Every record of ``topic`` from the start, waiting until ``expected`` are there."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             group_id=None)
    try:
        deadline = time.monotonic() + timeout_s
        partitions = None
        while partitions is None and time.monotonic() < deadline:
            partitions = consumer.partitions_for_topic(topic)
            if partitions is None:
                time.sleep(0.2)
        if partitions is None:
            raise TimeoutError(f"topic {topic} never appeared")
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        consumer.seek_to_beginning(*assigned)
        records: list = []
        while time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
            if len(records) >= expected:
                # One more short poll: more than expected would be a duplicate to report.
                for batch in consumer.poll(timeout_ms=500).values():
                    records.extend(batch)
                return records
        raise TimeoutError(f"{topic}: {len(records)} records after {timeout_s} s, "
                           f"expected {expected}")
    finally:
        consumer.close()


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        return {tp.partition: offset for tp, offset in consumer.end_offsets(partitions).items()}
    finally:
        consumer.close()
