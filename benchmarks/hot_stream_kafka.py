"""One hot stream beside many others, through the whole worker and a real broker: pacing on
and off.

A two-partition topic is filled before the worker starts: ``--hot`` readings of one stream
in partition 0 and ``--others`` readings of ``--other-streams`` streams (in turn, each
stream's in time order) in partition 1. Then ``cellwatch.wiring.run_worker`` itself runs in
a thread (``--client``: kafka-python, confluent, or both in turn; its own group and output
topics) while a consumer reads the scores topic back. Reported per run: seconds from the
worker's first records to the last score of the other streams, and to the last score of
all, for each ``--limit`` (the worker's ``max_stream_readings_per_batch``; a limit at least
``--hot`` is no pacing). Unpaced, the other streams wait for every hot reading the same
polls brought (one step round each); paced, the hot partition is held back and paused, and
the other partition goes on.

One run per client and limit, ``--repeats`` times over (alternating); how long the unpaced
worker makes the others wait depends on which partition the consumer happens to fetch
first, so look at every run. Starts a local broker unless ``--bootstrap`` names one.

    python benchmarks/hot_stream_kafka.py [--json] [--hot 20000] [--others 20000]
        [--other-streams 1000] [--limit 100 --limit 1000000000] [--repeats 1]
        [--client both|kafka-python|confluent]
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
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402

from benchmarks.end_to_end.environment import build_artifact  # noqa: E402
from benchmarks.end_to_end.gc_timer import GcTimer  # noqa: E402
from benchmarks.end_to_end.readings import (  # noqa: E402
    INTERVAL_MS,
    READING_WRITER,
    START_MS,
    signal,
)
from benchmarks.end_to_end.timed_parts import Timings, timed_wrappers  # noqa: E402

HOT_STREAM = "hot"
CLIENTS = ("kafka-python", "confluent")
TIMEOUT_S = 600.0


def fill_topic(bootstrap: str, topic: str, hot: int, others: int, other_streams: int,
               seed: int) -> None:
    """Creates ``topic`` (2 partitions) and produces the hot and the other readings."""
    from kafka import KafkaAdminClient, KafkaProducer
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="bench-hot")
    try:
        admin.create_topics([NewTopic(topic, 2, 1)])
    finally:
        admin.close()
    rng = np.random.default_rng(seed)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20,
                             batch_size=1 << 20)
    for i in range(max(hot, others)):
        if i < hot:
            values = signal(np.array([0]), i, rng)[0].tolist()
            producer.send(topic, key=HOT_STREAM.encode(), partition=0,
                          value=READING_WRITER.message(HOT_STREAM, START_MS + i * INTERVAL_MS,
                                                       values))
        if i < others:
            stream, step = i % other_streams, i // other_streams
            name = f"s{stream}"
            values = signal(np.array([stream + 1]), step, rng)[0].tolist()
            producer.send(topic, key=name.encode(), partition=1,
                          value=READING_WRITER.message(name, START_MS + step * INTERVAL_MS,
                                                       values))
    producer.flush()
    producer.close()


def one_run(bootstrap: str, artifact: Path, client: str, hot: int, others: int,
            other_streams: int, limit: int, seed: int) -> dict:
    """Fills a fresh topic, runs a worker with pacing at ``limit`` until every reading's
    score is read back; seconds from its first records."""
    from kafka import KafkaConsumer

    from cellwatch.settings import load_settings
    from cellwatch.wiring import run_worker

    prefix = f"bench-hot-{uuid.uuid4().hex[:8]}"
    topic = f"{prefix}.readings"
    fill_topic(bootstrap, topic, hot, others, other_streams, seed)
    settings = load_settings(environ={}, overrides={
        "kafka.bootstrap_servers": bootstrap, "kafka.client": client,
        "kafka.client_id": f"{prefix}-worker",
        "kafka.group_id": f"{prefix}-group", "kafka.readings_topic": topic,
        "kafka.scores_topic": f"{prefix}.scores", "kafka.anomalies_topic": f"{prefix}.anomalies",
        "kafka.dead_letter_topic": f"{prefix}.dead-letter", "model.artifact": str(artifact),
        "metrics.host": "127.0.0.1", "metrics.port": 0,
        "worker.max_stream_readings_per_batch": limit})
    timings = Timings(gc_timer=GcTimer())
    stop = threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            run_worker(settings, stop, wrappers=timed_wrappers(timings, lambda worker: None))
        except BaseException as error:  # reported below, after the worker stopped
            errors.append(error)

    worker = threading.Thread(target=target, name=f"{prefix}-worker", daemon=True)
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=f"{prefix}-watch",
                             auto_offset_reset="earliest", enable_auto_commit=False)
    seen = {"hot": 0, "others": 0}
    others_done = all_done = None
    worker.start()
    try:
        deadline = time.monotonic() + TIMEOUT_S
        # The worker creates the scores topic; subscribe once it exists.
        while not consumer.partitions_for_topic(settings.kafka.scores_topic):
            if errors or time.monotonic() > deadline:
                raise RuntimeError(f"the worker never created its scores topic: {errors}")
            time.sleep(0.05)
        consumer.subscribe([settings.kafka.scores_topic])
        while seen["hot"] < hot or seen["others"] < others:
            if errors or time.monotonic() > deadline:
                raise RuntimeError(f"not all scores within {TIMEOUT_S:.0f} s: {seen}, {errors}")
            for records in consumer.poll(100).values():
                now = time.perf_counter()
                for record in records:
                    seen["hot" if record.key == HOT_STREAM.encode() else "others"] += 1
                if others_done is None and seen["others"] >= others:
                    others_done = now
                all_done = now
    finally:
        stop.set()
        worker.join(60)
        consumer.close()
    start = timings.first_records_at
    return {"client": client, "limit": limit, "hot": hot, "others": others,
            "others_scored_seconds": round(others_done - start, 3),
            "all_scored_seconds": round(all_done - start, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--hot", type=int, default=20_000, help="readings of the hot stream")
    parser.add_argument("--others", type=int, default=20_000, help="readings of the others")
    parser.add_argument("--other-streams", type=int, default=1000, help="how many others")
    parser.add_argument("--limit", type=int, action="append",
                        help="max_stream_readings_per_batch (repeatable; default 100 and 10^9)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per limit")
    parser.add_argument("--bootstrap", help="a running broker (default: start a local one)")
    parser.add_argument("--client", choices=(*CLIENTS, "both"), default="both")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    for name in ("hot", "others", "other_streams", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}: expected at least 1, received "
                         f"{getattr(args, name)}")
    if any(limit < 1 for limit in args.limit or ()):
        parser.error(f"--limit: expected at least 1, received {min(args.limit)}")
    limits = args.limit or [100, 10**9]
    clients = CLIENTS if args.client == "both" else (args.client,)
    report: dict = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "runs": []}
    with tempfile.TemporaryDirectory(prefix="bench-hot-") as workdir, \
            contextlib.ExitStack() as stack:
        bootstrap = args.bootstrap
        if bootstrap is None:
            from deploy.kafka.local_broker import KafkaBroker

            broker = KafkaBroker(Path(workdir) / "kafka")
            stack.callback(broker.stop)
            bootstrap = broker.start()
        artifact = build_artifact(Path(workdir) / "artifact", args.seed)
        for _ in range(args.repeats):
            for client in clients:
                for limit in limits:
                    report["runs"].append(one_run(bootstrap, artifact, client, args.hot,
                                                  args.others, args.other_streams, limit,
                                                  args.seed))
    if args.json:
        print(json.dumps(report))
    else:
        for run in report["runs"]:
            print(run)


if __name__ == "__main__":
    main()
