"""`make demo`'s live view: progress from the worker's metrics, then a summary and plots.

Reads what the worker published (score records and anomaly episodes from Kafka), compares
the episodes with the recording's labeled anomalies, and draws a few streams with their
scores. Run by deploy/demo.sh; not part of the installed package.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
from kafka import KafkaConsumer, TopicPartition

from training.evaluation import StreamScores, plot_stream
from training.recordings import read_recording
from training.synthetic import read_labels


def scrape(url: str) -> dict[str, float]:
    """Unlabeled and summed-over-labels sample values of the worker's /metrics."""
    values: dict[str, float] = {}
    with urllib.request.urlopen(url, timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("#") or not line.strip():
                continue
            name, value = line.rsplit(" ", 1)
            base = name.split("{", 1)[0]
            values[base] = values.get(base, 0.0) + float(value)
    return values


def watch(metrics_url: str, expected: int, timeout_s: float) -> float:
    """Prints progress every two seconds until ``expected`` readings are scored."""
    started = time.monotonic()
    last_count, last_time = 0.0, started
    while time.monotonic() - started < timeout_s:
        time.sleep(2)
        try:
            metrics = scrape(metrics_url)
        except OSError as error:
            print(f"  waiting for the worker's metrics ({error})")
            continue
        scored = metrics.get("cellwatch_readings_scored_total", 0.0)
        now = time.monotonic()
        rate = (scored - last_count) / (now - last_time)
        last_count, last_time = scored, now
        print(f"  scored {scored:>9.0f}/{expected}  {rate:>8.0f} readings/s  "
              f"anomaly episodes {metrics.get('cellwatch_anomaly_episodes_total', 0):.0f}  "
              f"flagged readings {metrics.get('cellwatch_anomalous_readings_total', 0):.0f}",
              flush=True)
        if scored >= expected:
            return now - started
    raise SystemExit(f"the worker scored {last_count:.0f} of {expected} readings in "
                     f"{timeout_s:.0f} s")


def read_all(bootstrap: str, topic: str) -> list:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        ends = consumer.end_offsets(partitions)
        records = []
        while any(consumer.position(tp) < ends[tp] for tp in partitions):
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metrics", required=True)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--scores-topic", required=True)
    parser.add_argument("--anomalies-topic", required=True)
    parser.add_argument("--recording", type=Path, required=True)
    parser.add_argument("--labels", type=Path, required=True)
    parser.add_argument("--plots", type=Path, required=True)
    parser.add_argument("--threshold", type=float, default=0.999)
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()

    recording = read_recording([args.recording])
    seconds = watch(args.metrics, len(recording), args.timeout)
    labels = read_labels(args.labels)
    episodes = [json.loads(r.value) for r in read_all(args.bootstrap, args.anomalies_topic)]

    def overlaps(episode: dict, label) -> bool:
        return (episode["stream"] == label.stream and episode["start_ts"] <= label.end_ms
                and episode["end_ts"] >= label.start_ms)

    found = [label for label in labels if any(overlaps(e, label) for e in episodes)]
    correct = [e for e in episodes if any(overlaps(e, label) for label in labels)]
    print(f"\nsummary: {len(recording)} readings of {len(recording.streams)} streams scored in "
          f"{seconds:.0f} s")
    print(f"  labeled anomalies: {len(labels)}, found by an anomaly episode: {len(found)}")
    print(f"  anomaly episodes:  {len(episodes)}, overlapping a labeled anomaly: {len(correct)}")
    by_kind: dict[str, list[int]] = {}
    for label in labels:
        by_kind.setdefault(label.kind, [0, 0])[0] += 1
        by_kind[label.kind][1] += label in found
    print("  found by kind:     " + ", ".join(f"{kind} {hit}/{total}" for kind, (total, hit)
                                              in sorted(by_kind.items())))

    # Plot the streams with labeled anomalies, from the worker's own score records.
    scores: dict[str, list[dict]] = {}
    for record in read_all(args.bootstrap, args.scores_topic):
        body = json.loads(record.value)
        scores.setdefault(body["stream"], []).append(body)
    args.plots.mkdir(parents=True, exist_ok=True)
    chosen = list(dict.fromkeys(label.stream for label in labels))[:4]
    for stream in chosen:
        series = recording.filled().streams[stream]
        rows = {r["ts"]: r for r in scores.get(stream, [])}
        ts = series.timestamps_ms
        pick = [rows[t] for t in ts.tolist()]
        scored = StreamScores(
            stream=stream, timestamps_ms=ts, values=series.values,
            score=np.array([r["score"] for r in pick], np.float32),
            likelihood=np.array([r["likelihood"] for r in pick], np.float32),
            surprise=np.array([r["surprise"] for r in pick], np.float32),
            flag=np.array([r["flag"] for r in pick], bool),
            top_channel=np.array([recording.channels.index(r["top_channel"]) for r in pick],
                                 np.int32),
            onset=np.array([r["onset"] for r in pick], np.float32))
        label = np.zeros(len(ts), bool)
        for item in labels:
            if item.stream == stream:
                label |= item.covers(ts)
        path = args.plots / f"{stream}.png"
        plot_stream(scored, recording.channels, label, -np.log10(1 - args.threshold), path,
                    title=f"{stream}: the worker's scores (labeled anomalies shaded)")
        print(f"  plot: {path}")


if __name__ == "__main__":
    sys.exit(main())
