"""What durability costs: worker throughput without checkpoints, with checkpoints at the default
interval (10 s) and every second, and with Kafka transactions (default interval); and the
time to restore 1,000,000 stream states.

Against a real local broker (started here in a temporary directory unless ``--bootstrap``
names one). One readings topic (``--readings`` readings of ``--streams`` streams, 8
partitions) is produced once; each mode then runs ``cellwatch.wiring.run_worker`` in a thread
in a fresh consumer group with fresh output and changelog topics, and is timed from its first
published score to its last (the throughput), then until every reading is committed (which
waits for the next checkpoint).

The restore part writes ``--states`` checkpoint records (4 channels, the benchmark model's
state layout) to a fresh 8-partition changelog through the worker's own ``ChangelogWriter``
and ``KafkaRecordSink``, then rebuilds a ``StateStore`` from it with the worker's own
``KafkaChangelogReader`` and ``restore_states``, in a fresh process. Target: under 20 s.

    python benchmarks/durability.py [--json] [--readings 300000] [--states 1000000]
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import datetime as dt  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import multiprocessing  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.end_to_end.environment import (  # noqa: E402
    build_artifact,
    machine,
    speed_probe,
    versions,
)
from benchmarks.end_to_end.readings import produce_readings  # noqa: E402
from deploy.kafka.local_broker import committed_offsets  # noqa: E402

log = logging.getLogger("durability")

PARTITIONS = 8
RESTORE_TARGET_S = 20.0
MODES = {
    "no_checkpoints": {"worker.checkpoints": False},
    "checkpoints_default_interval": {},
    "checkpoints_every_second": {"worker.checkpoint_interval_seconds": 1.0},
    "transactions": {"worker.transactional": True},
}


def _end_offsets_sum(consumer, topic: str) -> int:
    from kafka import TopicPartition

    partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        return 0
    ends = consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
    return sum(ends.values())


def worker_mode(bootstrap: str, artifact: Path, topic: str, readings: int, mode: str,
                timeout_s: float) -> dict:
    """One worker run in ``mode``, timed from its first published score to full commit."""
    from kafka import KafkaConsumer

    from cellwatch.settings import load_settings
    from cellwatch.wiring import run_worker

    prefix = f"{topic}.{mode}"
    settings = load_settings(environ={}, overrides={
        "kafka.bootstrap_servers": bootstrap,
        "kafka.client_id": f"{prefix}-worker",
        "kafka.group_id": f"{prefix}-group",
        "kafka.readings_topic": topic,
        "kafka.scores_topic": f"{prefix}.scores",
        "kafka.anomalies_topic": f"{prefix}.anomalies",
        "kafka.dead_letter_topic": f"{prefix}.dead-letter",
        "model.artifact": str(artifact),
        "metrics.port": 0,
        **MODES[mode],
    })
    stop = threading.Event()
    errors: list[BaseException] = []
    registry: dict = {}

    def on_ready(endpoint) -> None:
        registry["registry"] = endpoint.registry

    def target() -> None:
        try:
            run_worker(settings, stop, on_ready=on_ready)
        except BaseException as error:
            errors.append(error)

    watcher = KafkaConsumer(bootstrap_servers=bootstrap)
    thread = threading.Thread(target=target, name=f"{mode}-worker", daemon=True)
    cpu_started = time.process_time()
    thread.start()
    try:
        deadline = time.monotonic() + timeout_s
        first = None
        while first is None:
            if errors:
                raise errors[0]
            if time.monotonic() > deadline:
                raise TimeoutError(f"{mode}: no score within {timeout_s} s")
            if _end_offsets_sum(watcher, settings.kafka.scores_topic) > 0:
                first = time.perf_counter()
            else:
                time.sleep(0.05)
        cpu_first = time.process_time()
        while _end_offsets_sum(watcher, settings.kafka.scores_topic) < readings:
            if errors:
                raise errors[0]
            if time.monotonic() > deadline:
                raise TimeoutError(f"{mode}: not all scored within {timeout_s} s")
            time.sleep(0.05)
        scored = time.perf_counter()
        cpu_scored = time.process_time()
        group = settings.kafka.group_id
        while sum(committed_offsets(bootstrap, group, topic).values()) < readings:
            if errors:
                raise errors[0]
            if time.monotonic() > deadline:
                raise TimeoutError(f"{mode}: not all committed within {timeout_s} s")
            time.sleep(0.1)
        done = time.perf_counter()
        cpu_done = time.process_time()
        samples = registry["registry"]
        checkpoint_records = samples.get_sample_value("cellwatch_checkpoint_records_total")
        checkpoint_bytes = samples.get_sample_value("cellwatch_checkpoint_bytes_total")
        checkpoints = samples.get_sample_value("cellwatch_checkpoint_duration_seconds_count")
        checkpoint_seconds = samples.get_sample_value("cellwatch_checkpoint_duration_seconds_sum")
    finally:
        stop.set()
        thread.join(60)
        watcher.close()
    seconds = scored - first
    return {
        "seconds": round(seconds, 3),
        "readings_per_second": round(readings / seconds),
        "process_cpu_seconds": round(cpu_scored - cpu_first, 3),
        # After the last score, until the checkpoint interval ends and offsets are committed.
        "seconds_until_committed": round(done - scored, 3),
        "process_cpu_seconds_until_committed": round(cpu_done - cpu_scored, 3),
        "checkpoints": int(checkpoints or 0),
        "checkpoint_records": int(checkpoint_records or 0),
        "checkpoint_bytes": int(checkpoint_bytes or 0),
        "checkpoint_seconds_total": round(checkpoint_seconds or 0.0, 3),
        "cpu_seconds_before_first_score": round(cpu_first - cpu_started, 3),
    }


def _restore_child(bootstrap: str, topic: str, layout_json: dict, readings_topic: str,
                   results) -> None:
    from detector.state import StateLayout
    from streaming.changelog import restore_states
    from streaming.kafka_io import KafkaChangelogReader
    from streaming.state_store import StateStore

    store = StateStore(StateLayout.from_json(layout_json))
    reader = KafkaChangelogReader({"bootstrap_servers": [bootstrap]}, topic)
    started = time.perf_counter()
    cpu = time.process_time()
    # Read everything first, so reading and decoding are timed apart (the worker streams
    # the records straight into restore_states).
    records = list(reader.read(list(range(PARTITIONS))))
    read_seconds = time.perf_counter() - started
    result = restore_states(store, records, readings_topic, now_s=time.time())
    seconds = time.perf_counter() - started
    reader.close()
    results.put({"seconds": round(seconds, 3), "read_seconds": round(read_seconds, 3),
                 "decode_seconds": round(seconds - read_seconds, 3),
                 "process_cpu_seconds": round(time.process_time() - cpu, 3),
                 "records_read": result.records_read, "streams": result.streams_restored,
                 "incompatible": result.incompatible, "store_bytes": store.nbytes})


def restore(bootstrap: str, artifact: Path, states: int) -> dict:
    """Writes ``states`` checkpoint records and times their restore in a fresh process."""
    import numpy as np

    from detector.artifact import load_artifact
    from streaming.changelog import ChangelogWriter
    from streaming.kafka_io import KafkaRecordSink
    from streaming.kafka_topics import ensure_changelog
    from streaming.state_store import StateStore

    options = {"bootstrap_servers": [bootstrap]}
    topic = f"restore-{uuid.uuid4().hex[:8]}"
    readings_topic = f"{topic}.readings"
    ensure_changelog(options, topic, PARTITIONS)
    layout = load_artifact(artifact).step.layout
    store = StateStore(layout, initial_capacity=states)
    rng = np.random.default_rng(3)
    for index in range(states):
        store.row_for(f"stream-{index:07d}", index % PARTITIONS)
    rows = store.rows_in_use()
    store.state[rows] = rng.normal(size=(rows.size, layout.size)).astype(np.float32)
    store.last_offset[rows] = np.arange(rows.size)
    sink = KafkaRecordSink(options, linger_ms=20)
    started = time.perf_counter()
    written = ChangelogWriter(topic, sink, readings_topic).write(store, rows)
    sink.flush()
    write_seconds = time.perf_counter() - started
    sink.close()

    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    child = ctx.Process(target=_restore_child, args=(bootstrap, topic, layout.to_json(),
                                                     readings_topic, results))
    child.start()
    report = results.get(timeout=600)
    child.join(60)
    report.update({
        "states": states,
        "record_bytes": written.bytes // max(1, written.records),
        "changelog_megabytes": round(written.bytes / 1e6, 1),
        "write_seconds": round(write_seconds, 3),
        "write_records_per_second": round(states / write_seconds),
        "target_seconds": RESTORE_TARGET_S,
        "meets_target": report["seconds"] < RESTORE_TARGET_S,
    })
    return report


def run(args: argparse.Namespace, workdir: Path) -> dict:
    from deploy.kafka.local_broker import KafkaBroker
    from streaming.kafka_topics import ensure_topic

    report: dict = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                    "readings": args.readings, "streams": args.streams,
                    "partitions": PARTITIONS, "load_average_start": os.getloadavg()[0],
                    "speed_probe_us_start": speed_probe()}
    artifact = build_artifact(workdir / "artifact", args.seed)
    with contextlib.ExitStack() as stack:
        if args.bootstrap:
            bootstrap = args.bootstrap
        else:
            broker = KafkaBroker(workdir / "kafka")
            stack.callback(broker.stop)
            bootstrap = broker.start()
        topic = f"durability-{uuid.uuid4().hex[:8]}"
        ensure_topic({"bootstrap_servers": bootstrap}, topic, PARTITIONS)
        report["produce"] = produce_readings(bootstrap, topic, args.readings, args.streams,
                                             PARTITIONS, 2, args.seed,
                                             timeout_s=max(300.0, args.readings / 1000))
        modes = {}
        for mode in MODES:
            log.info("worker mode %s", mode)
            modes[mode] = worker_mode(bootstrap, artifact, topic, args.readings, mode,
                                      timeout_s=max(300.0, args.readings / 500))
            log.info("%s: %s", mode, modes[mode])
        report["worker"] = modes
        base = modes["no_checkpoints"]["readings_per_second"]
        report["throughput_cost"] = {
            mode: round(1 - modes[mode]["readings_per_second"] / base, 3)
            for mode in MODES if mode != "no_checkpoints"}
        if args.states:
            log.info("restore of %d states", args.states)
            report["restore"] = restore(bootstrap, artifact, args.states)
    report["load_average_end"] = os.getloadavg()[0]
    report["speed_probe_us_end"] = speed_probe()
    report["versions"] = versions(broker_managed=not args.bootstrap)
    report["machine"] = machine()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print the report as JSON only")
    parser.add_argument("--readings", type=int, default=300_000)
    parser.add_argument("--streams", type=int, default=10_000)
    parser.add_argument("--states", type=int, default=1_000_000,
                        help="states to restore (0 skips the restore part)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--bootstrap", help="use this broker instead of starting one")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING if args.json else logging.INFO,
                        format="%(asctime)s %(name)s %(message)s")
    with tempfile.TemporaryDirectory(prefix="cellwatch-durability-") as workdir:
        report = run(args, Path(workdir))
    if args.json:
        print(json.dumps(report, indent=2))
        return
    for mode, numbers in report["worker"].items():
        print(f"{mode:30s} {numbers['readings_per_second']:>8,} readings/s "
              f"({numbers['checkpoints']} checkpoints, {numbers['checkpoint_records']:,} records)")
    for mode, cost in report["throughput_cost"].items():
        print(f"cost of {mode}: {cost:.1%} of the throughput without checkpoints")
    if "restore" in report:
        r = report["restore"]
        print(f"restore of {r['states']:,} states: {r['seconds']} s (read {r['read_seconds']} s, "
              f"decode {r['decode_seconds']} s; target < {RESTORE_TARGET_S:.0f} s); "
              f"write {r['write_seconds']} s")


if __name__ == "__main__":
    main()
