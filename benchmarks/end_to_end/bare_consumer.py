"""(a) The bare consumer: a fresh group's consumer in a fresh process (no TensorFlow), with
the worker's client (kafka-python or confluent-kafka), ``json.loads`` of each message,
nothing else; and a decoded sample of a topic."""

from __future__ import annotations

import gc
import json
import multiprocessing
import time
import uuid

from benchmarks.end_to_end.gc_timer import GcTimer
from benchmarks.end_to_end.processes import end_processes, get_result
from benchmarks.end_to_end.readings import POLL_RECORDS


def _bare_consumer_child(bootstrap: str, topic: str, readings: int, timeout_s: float,
                         results, client: str = "kafka-python") -> None:
    try:
        consume = _bare_consume if client == "kafka-python" else _bare_consume_confluent
        results.put(consume(bootstrap, topic, readings, timeout_s))
    except BaseException as error:
        results.put({"error": repr(error)})
        raise


def _timed_drain(poll, decode, readings: int, timeout_s: float, client: str) -> dict:
    """Polls (``poll()``: one poll's messages, falsy when none) and decodes (``decode``: each
    message's JSON, returns how many) until ``readings`` were decoded; times from the moment
    the first poll returned messages, their decoding included."""
    collector = GcTimer()
    gc.callbacks.append(collector)
    count = 0
    created = time.perf_counter()
    first = None
    first_cpu = 0.0
    deadline = created + timeout_s
    try:
        while count < readings:
            if time.perf_counter() > deadline:
                raise TimeoutError(f"bare consumer: {count} of {readings} after {timeout_s} s")
            polled = poll()
            if polled and first is None:
                first = time.perf_counter()
                first_cpu = time.process_time()
                collector.reset()
            count += decode(polled)
        ended = time.perf_counter()
        cpu = time.process_time() - first_cpu
    finally:
        gc.callbacks.remove(collector)
    return {"readings": count, "seconds": round(ended - first, 3),
            "join_seconds": round(first - created, 3),
            "readings_per_second": round(count / (ended - first)),
            "process_cpu_seconds": round(cpu, 3),
            "readings_per_cpu_second": round(count / cpu),
            "garbage_collector_seconds": round(collector.seconds, 3),
            "process": f"fresh process: {client}, json and NumPy imported, no TensorFlow"}


def _bare_consume(bootstrap: str, topic: str, readings: int, timeout_s: float) -> dict:
    from kafka import KafkaConsumer

    # The same fetch sizes as the worker's KafkaReadingSource.
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap,
                             group_id=f"bench-bare-{uuid.uuid4().hex[:8]}",
                             enable_auto_commit=False, auto_offset_reset="earliest",
                             max_partition_fetch_bytes=4 << 20, fetch_max_bytes=50 << 20)
    loads = json.loads

    def decode(batches) -> int:
        count = 0
        for batch in batches.values():
            for record in batch:
                loads(record.value)
            count += len(batch)
        return count

    try:
        return _timed_drain(lambda: consumer.poll(timeout_ms=200, max_records=POLL_RECORDS),
                            decode, readings, timeout_s, "kafka-python")
    finally:
        consumer.close(autocommit=False)


def _bare_consume_confluent(bootstrap: str, topic: str, readings: int, timeout_s: float
                            ) -> dict:
    from confluent_kafka import Consumer

    # The same fetch sizes as the worker's ConfluentReadingSource.
    consumer = Consumer({"bootstrap.servers": bootstrap,
                         "group.id": f"bench-bare-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False, "enable.auto.offset.store": False,
                         "auto.offset.reset": "earliest",
                         "max.partition.fetch.bytes": 4 << 20, "fetch.max.bytes": 50 << 20})
    consumer.subscribe([topic])
    loads = json.loads

    def decode(messages) -> int:
        count = 0
        for message in messages:
            if message.error() is None:
                loads(message.value())
                count += 1
        return count

    try:
        return _timed_drain(lambda: consumer.consume(POLL_RECORDS, 0.2), decode, readings,
                            timeout_s, "confluent-kafka")
    finally:
        consumer.close()


def bare_consumer(bootstrap: str, topic: str, readings: int, timeout_s: float,
                  client: str = "kafka-python") -> dict:
    """A fresh group's consumer of ``client``, in a fresh process, that only decodes each
    message's JSON."""
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    process = ctx.Process(target=_bare_consumer_child, name="bare-consumer", daemon=True,
                          args=(bootstrap, topic, readings, timeout_s, results, client))
    process.start()
    try:
        report = get_result(results, time.perf_counter() + timeout_s + 60, "bare consumer")
    finally:
        end_processes([process])
    if "error" in report:
        raise RuntimeError(f"bare consumer: {report['error']}")
    return report


def read_sample(bootstrap: str, topic: str, count: int, timeout_s: float = 120.0) -> list[dict]:
    """The first ``count`` readings of the topic (all partitions), decoded."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                             enable_auto_commit=False, max_partition_fetch_bytes=4 << 20,
                             fetch_max_bytes=50 << 20)
    try:
        assigned = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(assigned)
        consumer.seek_to_beginning(*assigned)
        sample: list[dict] = []
        deadline = time.perf_counter() + timeout_s
        while len(sample) < count and time.perf_counter() < deadline:
            for batch in consumer.poll(timeout_ms=200, max_records=POLL_RECORDS).values():
                sample.extend(json.loads(record.value) for record in batch)
        return sample[:count]
    finally:
        consumer.close()
