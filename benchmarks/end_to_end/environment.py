"""What the benchmarks report beside their numbers (how fast the machine was just then, the
versions, the machine), and the model they serve."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from importlib import metadata
from pathlib import Path

from benchmarks.end_to_end.readings import AMPLITUDE, CHANNELS, LEVEL, START_MS, reading_json
from deploy.kafka.local_broker import KAFKA_LIBS


def speed_probe(rounds: int = 20_000) -> float:
    """Microseconds per ``json.loads`` of one reading: a fixed single-thread workload, run
    between phases, to show how fast this (possibly shared, virtual) machine was just then."""
    raw = reading_json("stream-00042", START_MS, [20.5, 1.01, 0.52, 9.87])
    loads = json.loads
    started = time.perf_counter()
    for _ in range(rounds):
        loads(raw)
    return round((time.perf_counter() - started) / rounds * 1e6, 3)


def build_artifact(path: Path, seed: int) -> Path:
    """A 4-channel forecaster with its seeded initial weights, saved as a worker loads it."""
    import keras

    from detector.artifact import save_artifact
    from detector.features import ChannelScaler
    from detector.model import ForecasterConfig, build_forecaster
    from detector.scorer_config import ScorerConfig

    keras.utils.set_random_seed(seed)
    config = ForecasterConfig(channels=len(CHANNELS))
    model = build_forecaster(config)
    scaler = ChannelScaler(tuple(LEVEL.tolist()), tuple((AMPLITUDE * 0.75).tolist()))
    save_artifact(path, model, CHANNELS, config, scaler, ScorerConfig(),
                  training={"data_fingerprint": "benchmark: initial weights, untrained"})
    return path


def versions(broker_managed: bool) -> dict:
    found = {}
    for name in ("kafka-python", "confluent-kafka", "numpy", "tensorflow", "keras", "river",
                 "prometheus-client"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    try:
        from confluent_kafka import libversion

        found["librdkafka"] = libversion()[0]
    except ImportError:
        found["librdkafka"] = None
    found["python"] = platform.python_version()
    jars = sorted(KAFKA_LIBS.glob("kafka_2.13-*.jar"))
    found["kafka_broker"] = (jars[0].stem.removeprefix("kafka_2.13-") if jars and broker_managed
                             else "external" if not broker_managed else None)
    try:
        from crc32c import crc32c  # noqa: F401
        found["crc32c_c_extension"] = True
    except ImportError:
        found["crc32c_c_extension"] = False
    return found


def machine() -> dict:
    model = None
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cpus": os.cpu_count(), "cpu_model": model, "platform": platform.platform()}
