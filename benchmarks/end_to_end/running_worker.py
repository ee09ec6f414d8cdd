"""(b) The worker end to end: ``cellwatch.wiring.run_worker`` itself, in a thread of the
benchmark process, its parts timed; until every reading is scored, acknowledged and committed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks.end_to_end.gc_timer import GcTimer
from benchmarks.end_to_end.timed_parts import Timings, timed_wrappers

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from streaming.worker import Worker

log = logging.getLogger("throughput")


@dataclasses.dataclass
class RunningWorker:
    timings: Timings
    gc_timer: GcTimer
    errors: list
    worker: Worker | None = None
    registry: CollectorRegistry | None = None

    def counted(self) -> int:
        """Readings dealt with: scored, rejected or skipped (published and committed)."""
        from streaming.messages import RejectReason

        if self.registry is None:
            return 0
        value = self.registry.get_sample_value
        total = (value("cellwatch_readings_scored_total") or 0.0) + \
            (value("cellwatch_readings_skipped_total") or 0.0)
        for reason in RejectReason:
            total += value("cellwatch_readings_rejected_total", {"reason": reason.value}) or 0.0
        return int(total)

    def sample(self, name: str, labels: dict | None = None) -> float:
        return self.registry.get_sample_value(name, labels or {}) or 0.0


class NoPartitionsError(RuntimeError):
    """The worker joined its group but was assigned none of the topic's partitions.

    kafka-python can join before it has the subscribed topic's metadata; the group leader's
    assignor then hands out nothing ("No partition metadata for topic", dpkp/kafka-python
    issue 2377) and the consumer may sit idle for minutes. The benchmark retries with a fresh
    group and reports how often that happened.
    """


@contextlib.contextmanager
def running_worker(bootstrap: str, artifact_path: Path, readings_topic: str, prefix: str,
                   partitions: int, gc_freeze: bool = False, client: str = "kafka-python"):
    """``cellwatch.wiring.run_worker`` itself in a thread (settings, topic creation, sink,
    source, metrics registry and endpoint as deployed), built with timing wrappers around
    its source, sink, parser and engine (:func:`timed_wrappers`); yields once all
    ``partitions`` are assigned; stopped on exit as SIGTERM would stop it."""
    from cellwatch.settings import load_settings
    from cellwatch.wiring import run_worker

    settings = load_settings(environ={}, overrides={
        "kafka.bootstrap_servers": bootstrap,
        "kafka.client": client,
        "kafka.client_id": f"{prefix}-worker",
        "kafka.group_id": f"{prefix}-group",
        "kafka.readings_topic": readings_topic,
        "kafka.scores_topic": f"{prefix}.scores",
        "kafka.anomalies_topic": f"{prefix}.anomalies",
        "kafka.dead_letter_topic": f"{prefix}.dead-letter",
        "model.artifact": str(artifact_path),
        "metrics.host": "127.0.0.1",
        "metrics.port": 0,
    })
    stop = threading.Event()
    ready = threading.Event()
    gc_timer = GcTimer()
    handle = RunningWorker(Timings(gc_timer=gc_timer), gc_timer, [])

    def on_built(worker: Worker) -> None:
        handle.worker = worker

    wrappers = timed_wrappers(handle.timings, on_built)

    def on_ready(endpoint) -> None:
        handle.registry = endpoint.registry
        if gc_freeze:  # what-if: the objects of start-up leave the collector's scans
            gc.collect()
            gc.freeze()
        ready.set()

    def target() -> None:
        try:
            run_worker(settings, stop, on_ready=on_ready, wrappers=wrappers)
        except BaseException as error:
            handle.errors.append(error)
            ready.set()

    gc.collect()
    gc.callbacks.append(handle.gc_timer)
    thread = threading.Thread(target=target, name=f"{prefix}-worker", daemon=True)
    thread.start()
    try:
        if not ready.wait(120):
            raise TimeoutError("the worker did not start serving metrics within 120 s")
        if handle.errors:
            raise handle.errors[0]
        try:
            wait_until(lambda: handle.sample("cellwatch_assigned_partitions") >= partitions,
                       60, "partition assignment", handle, interval_s=0.1)
        except TimeoutError:
            raise NoPartitionsError(
                f"group {prefix}-group: {handle.sample('cellwatch_assigned_partitions'):.0f}"
                f" of {partitions} partitions assigned after 60 s") from None
        yield handle
    finally:
        stop.set()
        thread.join(60)
        gc.callbacks.remove(handle.gc_timer)
        if gc_freeze:
            gc.unfreeze()
        if thread.is_alive():
            raise TimeoutError("the worker did not stop within 60 s of the stop event")
    if handle.errors:
        raise handle.errors[0]


def wait_until(condition, timeout_s: float, what: str, handle: RunningWorker | None = None,
               interval_s: float = 0.05) -> None:
    deadline = time.perf_counter() + timeout_s
    while not condition():
        if handle is not None and handle.errors:
            raise RuntimeError(f"{what}: the worker failed") from handle.errors[0]
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{what}: not done within {timeout_s:.0f} s")
        time.sleep(interval_s)


def retrying(measure, what: str, attempts: int = 3) -> dict:
    """``measure(attempt)``, again with a fresh group when no partitions were assigned."""
    failures = []
    for attempt in range(attempts):
        try:
            report = measure(attempt)
        except NoPartitionsError as error:
            log.warning("%s: %s; retrying with a fresh group", what, error)
            failures.append(str(error))
            continue
        report["retries_without_partitions"] = failures
        return report
    raise RuntimeError(f"{what}: no partitions assigned in {attempts} attempts: {failures}")


def worker_throughput(bootstrap: str, artifact_path: Path, topic: str, prefix: str,
                      readings: int, partitions: int, timeout_s: float,
                      gc_freeze: bool = False, client: str = "kafka-python") -> dict:
    return retrying(lambda attempt: _worker_throughput(
        bootstrap, artifact_path, topic, f"{prefix}{attempt or ''}", readings, partitions,
        timeout_s, gc_freeze, client), "worker throughput")


def _worker_throughput(bootstrap: str, artifact_path: Path, topic: str, prefix: str,
                       readings: int, partitions: int, timeout_s: float,
                       gc_freeze: bool, client: str) -> dict:
    created = time.perf_counter()
    with running_worker(bootstrap, artifact_path, topic, prefix, partitions,
                        gc_freeze, client) as handle:
        # An attribute read: asking the registry would collect every metric, 50 times a second.
        wait_until(lambda: handle.timings.records >= readings, timeout_s,
                   f"worker scoring {readings} readings", handle, interval_s=0.02)
        t = handle.timings
        collector = (handle.gc_timer.seconds, handle.gc_timer.full,
                     handle.gc_timer.full_seconds)
        scored = int(handle.sample("cellwatch_readings_scored_total"))
        counted = handle.counted()
        co_partitioned = handle.worker.config.co_partitioned
        outputs = {role: int(handle.sample("cellwatch_output_records_total",
                                           {"topic_role": role}))
                   for role in ("scores", "anomalies", "dead_letter")}
    seconds = t.last_commit_at - t.first_records_at
    cpu = t.last_commit_cpu - t.first_records_cpu
    per_reading = {name: round(value / counted * 1e6, 2) for name, value in [
        ("poll", t.poll), ("parse", t.parse), ("engine_total", t.engine),
        ("engine_step", t.step), ("send", t.send), ("flush", t.flush), ("commit", t.commit),
        ("other_in_batch", t.process - t.parse - t.engine - t.send - t.flush - t.commit)]}
    return {
        "client": client,
        "readings": counted,
        "scored": scored,
        "outputs": outputs,
        "co_partitioned": co_partitioned,
        "seconds": round(seconds, 3),
        "join_seconds": round(t.first_records_at - created, 3),
        "batches": t.batches,
        "readings_per_second": round(counted / seconds),
        "process_cpu_seconds": round(cpu, 3),
        "readings_per_cpu_second": round(counted / cpu),
        "breakdown_seconds": {
            "poll": round(t.poll, 3), "parse": round(t.parse, 3),
            "engine_total": round(t.engine, 3), "engine_step": round(t.step, 3),
            "send": round(t.send, 3), "flush": round(t.flush, 3), "commit": round(t.commit, 3),
            "batches_total": round(t.process, 3)},
        "breakdown_us_per_reading": per_reading,
        # Collections happen inside the parts above (whoever allocates pays), not besides them.
        "garbage_collector": {"seconds": round(collector[0], 3), "full_collections": collector[1],
                              "full_collection_seconds": round(collector[2], 3),
                              "us_per_reading": round(collector[0] / counted * 1e6, 2),
                              "gc_freeze": gc_freeze},
    }
