"""Throughput, latency and memory of the streaming worker against a real local Kafka broker.

One run starts a single-node broker (``deploy/kafka/broker.sh`` through
``deploy.kafka.local_broker.KafkaBroker``, in a temporary directory) unless ``--bootstrap``
names one, saves a 4-channel model artifact with the forecaster's seeded initial weights (no
training: throughput does not depend on the weights), produces N readings of 10,000 streams
into an 8-partition topic keyed by stream, and measures on that topic:

a. a bare consumer in a fresh group (and a fresh process, without TensorFlow) that only
   ``json.loads`` each message;
b. the cellwatch worker end to end: ``cellwatch.wiring.run_worker`` itself (``Worker`` +
   the client's reading source and record sink, metrics registry and endpoint) in a thread,
   its own group, scores into fresh co-partitioned topics, until every reading is scored,
   acknowledged by the broker and committed; with a breakdown of where the time went (timing
   wrappers around its source, sink, parser and engine, handed to ``run_worker`` as
   ``PartWrappers``, and gc.callbacks);
c. the Keras layers called once per reading, each stream's state held outside (the seed
   documents' way), on a sample of the topic's readings;
d. a River ``MinMaxScaler | HalfSpaceTrees`` pipeline, one model shared by all streams (what a
   River user writes first), ``score_one`` then ``learn_one`` per reading, on a sample;

(a), (b) and the latency run once per Kafka client (``--client``: kafka-python, confluent, or
both, the default), each worker against the bare consumer of its own client on the same
topic; each client's ratios are its own. The end-to-end latency is taken at a fixed offered
load (a paced producer process into a fresh topic while a fresh worker runs; each score
record's arrival at a consumer process on the scores topic minus its reading's ``send()``
time). Last, the resident memory per stream of the
state store and scoring engine at 100,000 and 1,000,000 streams, each in a fresh process.

Rates (c) and (d) time the model calls alone on already decoded readings; (a) and (b) include
Kafka. NumPy's BLAS and TensorFlow run one thread (the worker runs one step at a time, and the
broker shares the machine). Targets are printed next to the numbers, not enforced.

    python benchmarks/throughput.py [--json] [--readings 1000000] [--bootstrap host:port]
                                    [--client both|kafka-python|confluent]

This file is the command: it runs the phases and reports. Each phase is a module of
:mod:`benchmarks.end_to_end`.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import datetime as dt  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402

# The repository root holds the benchmark package and the broker driver
# (deploy/kafka/local_broker.py), which are not installed packages. Heavy imports (TensorFlow,
# Keras, the worker) happen inside the functions that need them, so the producer and watcher
# processes start quickly.
REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.end_to_end.bare_consumer import bare_consumer, read_sample  # noqa: E402
from benchmarks.end_to_end.environment import (  # noqa: E402
    build_artifact,
    machine,
    speed_probe,
    versions,
)
from benchmarks.end_to_end.latency import latency  # noqa: E402
from benchmarks.end_to_end.memory import memory_per_stream  # noqa: E402
from benchmarks.end_to_end.model_baselines import (  # noqa: E402
    keras_per_reading,
    river_half_space_trees,
)
from benchmarks.end_to_end.readings import CHANNELS, produce_readings  # noqa: E402
from benchmarks.end_to_end.running_worker import worker_throughput  # noqa: E402

CLIENTS = ("kafka-python", "confluent")
TARGETS = {
    "worker_vs_bare_consumer": {"kafka-python": ">= 0.35", "confluent": ">= 0.6"},
    "worker_vs_river": ">= 3",
    "latency_p99_ms": "<= 50",
    "bytes_per_stream": "<= 1024",
}

log = logging.getLogger("throughput")


def run(args: argparse.Namespace, workdir: Path) -> dict:
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from deploy.kafka.local_broker import KafkaBroker
    from detector.artifact import load_artifact
    from streaming.kafka_topics import ensure_topic

    report: dict = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                    "readings": args.readings, "streams": args.streams,
                    "partitions": args.partitions, "channels": len(CHANNELS),
                    "gc_freeze_what_if": args.gc_freeze}
    phases: dict[str, float] = {}
    # Other work on the machine slows every wall-clock rate here: the 1-minute load average at
    # the end of each phase says how busy it was (2 cores: above 2 means queued runnables).
    load: dict[str, float] = {"start": round(os.getloadavg()[0], 2)}
    probe: dict[str, float] = {"start": speed_probe()}
    clock = time.perf_counter()

    def phase(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        phases[name] = round(now - clock, 1)
        load[name] = round(os.getloadavg()[0], 2)
        probe[name] = speed_probe()
        clock = time.perf_counter()
        log.info("%s done in %.1f s", name, phases[name])

    artifact_path = build_artifact(workdir / "artifact", args.seed)
    gc.collect()  # the built model is garbage now; the worker phases start from a clean heap
    phase("artifact")

    tag = f"bench-{uuid.uuid4().hex[:8]}"
    broker = None
    with contextlib.ExitStack() as stack:
        if args.bootstrap:
            bootstrap = args.bootstrap
        else:
            broker = KafkaBroker(workdir / "kafka")
            stack.callback(broker.stop)
            bootstrap = broker.start()
        report["broker"] = "external " + bootstrap if args.bootstrap else "local, started here"
        phase("broker")

        topic = f"{tag}.readings"
        ensure_topic({"bootstrap_servers": bootstrap}, topic, args.partitions)
        n = args.readings
        report["produce"] = produce_readings(bootstrap, topic, n, args.streams, args.partitions,
                                             args.producers, args.seed,
                                             timeout_s=max(300.0, n / 1000))
        phase("produce")

        report["clients"] = {}
        for client in args.clients:
            measured: dict = {}
            report["clients"][client] = measured
            measured["bare_consumer"] = bare_consumer(bootstrap, topic, n,
                                                      timeout_s=max(120.0, n / 2000),
                                                      client=client)
            phase(f"bare_consumer[{client}]")
            measured["worker"] = worker_throughput(
                bootstrap, artifact_path, topic, f"{tag}.{client}.worker", n, args.partitions,
                timeout_s=max(300.0, n / 500), gc_freeze=args.gc_freeze, client=client)
            phase(f"worker[{client}]")
            if args.latency_seconds > 0:
                measured["latency"] = latency(
                    bootstrap, artifact_path, f"{tag}.{client}.latency", args.streams,
                    args.partitions, args.latency_rate, args.latency_seconds,
                    args.latency_max, min(2.0, args.latency_seconds / 10), args.seed,
                    workdir, args.gc_freeze, client)
                phase(f"latency[{client}]")
        # Read after the worker phases, so its decoded dicts do not sit in the worker's heap.
        sample = read_sample(bootstrap, topic, max(args.river_readings, args.keras_readings))
        phase("sample")
    if broker is not None:
        phase("broker_stop")

    artifact = load_artifact(artifact_path)
    report["keras_per_reading"] = keras_per_reading(
        artifact.model, artifact.metadata.normalization, sample[:args.keras_readings])
    phase("keras_per_reading")
    if args.river_readings > 0:
        report["river"] = river_half_space_trees(sample[:args.river_readings], args.seed)
        phase("river")
    del sample
    report["memory"] = {str(s): memory_per_stream(artifact_path, s, args.partitions,
                                                  timeout_s=900.0)
                        for s in args.memory_streams}
    phase("memory")

    c = report["keras_per_reading"]["readings_per_second"]
    d = report["river"]["readings_per_second"] if "river" in report else None  # skipped
    for measured in report["clients"].values():
        summarize_client(measured, c, d)
    report["bytes_per_stream"] = {s: m["rss_bytes_per_stream"]
                                  for s, m in report["memory"].items()}
    report["targets"] = TARGETS
    report["phase_seconds"] = phases
    report["load_average_1m"] = load
    report["speed_probe_us_per_json_loads"] = probe
    report["versions"] = versions(broker is not None)
    report["machine"] = machine()
    return report


def summarize_client(measured: dict, keras_rate: float, river_rate: float | None) -> None:
    """One client's rates and ratios, next to its measurements."""
    a = measured["bare_consumer"]["readings_per_second"]
    b = measured["worker"]["readings_per_second"]
    measured["readings_per_second"] = {"bare_consumer": a, "worker": b}
    measured["ratios"] = {"worker_vs_bare_consumer": round(b / a, 3),
                          "worker_vs_keras_per_reading": round(b / keras_rate, 1),
                          "worker_vs_river": round(b / river_rate, 2) if river_rate else None}
    # (c) and (d) are model calls alone; the worker's own model part (the scoring engine,
    # from the breakdown) is the like-for-like figure next to them.
    worker = measured["worker"]
    engine = worker["readings"] / worker["breakdown_seconds"]["engine_total"]
    measured["model_only"] = {
        "worker_engine_readings_per_second": round(engine),
        "engine_vs_keras_per_reading": round(engine / keras_rate, 1),
        "engine_vs_river": round(engine / river_rate, 2) if river_rate else None,
    }
    if "latency" in measured:
        measured["latency_ms"] = {k: measured["latency"]["steady"][k]
                                  for k in ("p50_ms", "p99_ms")}


def print_table(report: dict) -> None:
    rows = [
        ("readings / streams / partitions",
         f"{report['readings']:,} / {report['streams']:,} / {report['partitions']}", ""),
        ("producing (setup)", f"{report['produce']['readings_per_second']:,} readings/s", ""),
        ("(c) Keras per reading",
         f"{report['keras_per_reading']['readings_per_second']:,} readings/s", ""),
        ("(d) River HalfSpaceTrees (shared)",
         f"{report['river']['readings_per_second'] if 'river' in report else 0:,} readings/s",
         ""),
    ]
    for client, measured in report["clients"].items():
        rps, ratios = measured["readings_per_second"], measured["ratios"]
        rows += [
            (f"[{client}] (a) bare consumer + json.loads",
             f"{rps['bare_consumer']:,} readings/s", ""),
            (f"[{client}] (b) cellwatch worker end to end", f"{rps['worker']:,} readings/s", ""),
            (f"[{client}] b / a", f"{ratios['worker_vs_bare_consumer']}",
             TARGETS["worker_vs_bare_consumer"][client]),
            (f"[{client}] b / c", f"{ratios['worker_vs_keras_per_reading']}", ""),
            (f"[{client}] b / d", f"{ratios['worker_vs_river']}", TARGETS["worker_vs_river"]),
            (f"[{client}] worker's scoring engine alone",
             f"{measured['model_only']['worker_engine_readings_per_second']:,} readings/s", ""),
        ]
        if "latency" in measured:
            steady = measured["latency"]["steady"]
            rate = measured["latency"]["offered_readings_per_second"]
            rows += [(f"[{client}] latency p50 at {rate:,.0f}/s", f"{steady['p50_ms']} ms", ""),
                     (f"[{client}] latency p99 at {rate:,.0f}/s", f"{steady['p99_ms']} ms",
                      TARGETS["latency_p99_ms"] + " ms")]
    for streams, memory in report["memory"].items():
        rows.append((f"memory per stream at {int(streams):,}",
                     f"{memory['rss_bytes_per_stream']:,} B RSS "
                     f"({memory['state_store_nbytes_per_stream']:,} B arrays)",
                     TARGETS["bytes_per_stream"] + " B"))
    width = max(len(r[0]) for r in rows)
    value_width = max(len(r[1]) for r in rows)
    print(f"{'':{width}}  {'measured':{value_width}}  target")
    for name, value, target in rows:
        print(f"{name:{width}}  {value:{value_width}}  {target}")
    for client, measured in report["clients"].items():
        print(f"\nworker breakdown [{client}], us per reading:")
        for name, value in measured["worker"]["breakdown_us_per_reading"].items():
            print(f"  {name:16} {value:8.2f}")
        collector = measured["worker"]["garbage_collector"]
        print(f"  of which in the garbage collector: {collector['us_per_reading']:.2f} "
              f"({collector['full_collections']} full collections, "
              f"{collector['full_collection_seconds']} s)")
    print(f"\nload average (1 min) at the end of each phase: "
          f"{json.dumps(report['load_average_1m'])}")
    print(f"speed probe (us per json.loads, lower is faster) at the end of each phase: "
          f"{json.dumps(report['speed_probe_us_per_json_loads'])}")
    print(f"\nversions: {json.dumps(report['versions'])}")
    print(f"machine: {json.dumps(report['machine'])}")


def _streams_list(text: str) -> list[int]:
    return [int(part.replace("_", "")) for part in text.split(",") if part.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--readings", type=int, default=1_000_000)
    parser.add_argument("--streams", type=int, default=10_000)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--bootstrap", help="use this broker (host:port) instead of starting one")
    parser.add_argument("--producers", type=int, default=2,
                        help="processes producing the readings (setup only, not measured)")
    parser.add_argument("--keras-readings", type=int, default=500)
    parser.add_argument("--river-readings", type=int, default=50_000,
                        help="0 skips River (not installed without the 'bench' extra)")
    parser.add_argument("--latency-rate", type=float, default=5000.0, help="readings/s offered")
    parser.add_argument("--latency-seconds", type=float, default=20.0, help="0 skips latency")
    parser.add_argument("--latency-max", type=int, default=100_000)
    parser.add_argument("--memory-streams", type=_streams_list, default=[100_000, 1_000_000],
                        help="comma-separated stream counts")
    parser.add_argument("--client", choices=("both", *CLIENTS), default="both",
                        help="the Kafka client(s) of the bare consumer, worker and latency "
                             "runs (both: one after the other, on the same topic)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--gc-freeze", action="store_true",
                        help="what-if: gc.freeze() once the worker is built (not what "
                             "run_worker does today)")
    args = parser.parse_args()
    if args.readings < args.streams or args.readings < 1:
        parser.error("--readings must be at least --streams")
    args.clients = CLIENTS if args.client == "both" else (args.client,)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for noisy in ("kafka", "streaming", "absl", "tensorflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="cellwatch-bench-") as tmp:
        report = run(args, Path(tmp))
    if args.json:
        print(json.dumps(report))
    else:
        print_table(report)


if __name__ == "__main__":
    main()
