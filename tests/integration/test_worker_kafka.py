"""The worker against a real broker and a real Prometheus: readings in, scores, anomaly
episodes and dead letters out, metrics scraped, a clean stop with every offset committed."""

from __future__ import annotations

import json
import urllib.request
from collections import Counter

import pytest

from deploy.kafka.local_broker import committed_offsets
from tests.integration.streaming_support import (
    CHANNELS,
    end_offsets,
    produce,
    read_topic,
    reading_bytes,
    readings,
    small_artifact,
    worker_settings,
    worker_thread,
)

pytestmark = pytest.mark.integration

STREAMS = 12
# The spike's episode is reported once it closes, so the data runs on well past it: the
# random-weight model's forecasts stay off for a while after a spike of 200 scale units,
# and the persistence test keeps those readings flagged (up to the small artifact's
# learning period of 20 flagged readings), so the episode closes about 25 readings after
# the spike.
PER_STREAM = 120
SPIKED_STREAM = "stream-005"
SPIKE_INDEX = 60


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return small_artifact(tmp_path_factory.mktemp("artifact") / "model")


def bad_messages(max_bytes: int) -> dict[str, bytes]:
    """One message per rejection reason that needs no stream history."""
    good = {"stream": "bad-source", "ts": 1_700_000_000_000,
            "values": {"temperature": 1.0, "pressure": 1.0, "vibration": 1.0}}

    def variant(**changes) -> bytes:
        return json.dumps({**good, **changes}).encode()

    return {
        "invalid_utf8": b'{"stream": "\xff\xfe"}',
        "invalid_json": b'{"stream": "x", "ts": ',
        "missing_field": json.dumps({"stream": "x", "ts": 1}).encode(),
        "wrong_type": variant(ts="yesterday"),
        "non_finite": variant(values={"temperature": float("nan"), "pressure": 1.0,
                                      "vibration": 1.0}),
        "unknown_channel": variant(values={**good["values"], "humidity": 3.0}),
        "missing_channel": variant(values={"temperature": 1.0, "pressure": 1.0}),
        "oversized": variant(stream="x" * (max_bytes + 10)),
    }


def test_worker_scores_rejects_exports_metrics_and_stops_cleanly(
        kafka_broker, topic_factory, unique_name, artifact, prometheus_factory, kafka_client):
    bootstrap = kafka_broker.bootstrap
    topic = topic_factory(partitions=4, purpose="readings")
    settings = worker_settings(bootstrap, artifact, topic, unique_name("w"), kafka_client,
                               max_message_bytes=2048, anomaly_episode_gap=3)
    good = readings(STREAMS, PER_STREAM)
    messages = []
    for stream, ts, values in good:
        if stream == SPIKED_STREAM and ts == good[0][1] + SPIKE_INDEX * 60_000:
            values = [values[0] + 400.0, values[1], values[2]]  # 200 scale units off
        messages.append((stream.encode(), reading_bytes(stream, ts, values)))
    bad = bad_messages(2048)
    # A duplicate and an out-of-order reading of a real stream, after its history exists.
    last_ts = good[0][1] + (PER_STREAM - 1) * 60_000
    late = [(b"stream-001", reading_bytes("stream-001", last_ts, [1, 1, 1])),
            (b"stream-001", reading_bytes("stream-001", good[0][1] + 3 * 60_000, [1, 1, 1]))]
    header = [("origin", b"test")]

    with worker_thread(settings) as running:
        endpoint = running["endpoint"]
        prometheus = prometheus_factory([f"127.0.0.1:{endpoint.port}"])
        produce(bootstrap, topic, messages[: len(messages) // 2])
        produce(bootstrap, topic, [(b"bad", value) for value in bad.values()], headers=header)
        produce(bootstrap, topic, messages[len(messages) // 2:] + late)

        scores = read_topic(bootstrap, settings.kafka.scores_topic, len(good))
        dead = read_topic(bootstrap, settings.kafka.dead_letter_topic, len(bad) + len(late))
        episodes = read_topic(bootstrap, settings.kafka.anomalies_topic, 1)

        for path in ("/healthz", "/readyz"):
            with urllib.request.urlopen(endpoint.url + path, timeout=5) as response:
                assert response.status == 200
        scored = prometheus.wait_for(f"cellwatch_readings_scored_total == {len(good)}")
        assert scored, "Prometheus never saw every reading scored"
        rejected = prometheus.wait_for('cellwatch_readings_rejected_total{reason="invalid_json"}'
                                       " == 1")
        assert rejected
        assert prometheus.query("up")[0]["value"][1] == "1"

    # Every good reading scored exactly once, keyed by its stream, in its stream's order.
    keys = [(json.loads(r.value)["stream"], json.loads(r.value)["ts"]) for r in scores]
    assert sorted(keys) == sorted((s, t) for s, t, _ in good)
    assert all(r.key.decode() == json.loads(r.value)["stream"] for r in scores)
    by_stream: dict[str, list[int]] = {}
    for record in sorted(scores, key=lambda r: (r.partition, r.offset)):
        body = json.loads(record.value)
        by_stream.setdefault(body["stream"], []).append(body["ts"])
        assert set(body) == {"stream", "ts", "score", "likelihood", "surprise", "onset",
                             "flag", "top_channel", "model_version"}
        assert body["top_channel"] in CHANNELS
    assert all(ts == sorted(ts) for ts in by_stream.values())

    # Bad messages: original bytes and headers kept, reasons and origin attached.
    reasons = Counter()
    for record in dead:
        headers = dict(record.headers)
        reason = headers["cellwatch.reason"].decode()
        reasons[reason] += 1
        assert headers["cellwatch.source.topic"].decode() == topic
        offset = int(headers["cellwatch.source.offset"])
        assert offset >= 0 and headers["cellwatch.detail"]
        if reason in bad:
            assert record.value == bad[reason]
            assert headers["origin"] == b"test"
    assert reasons == Counter({**{reason: 1 for reason in bad}, "duplicate": 1,
                               "out_of_order": 1})

    # The spike opened an episode on the spiked stream, reported once it closed.
    spiked = [json.loads(r.value) for r in episodes if r.key == SPIKED_STREAM.encode()]
    assert spiked, f"no anomaly episode for {SPIKED_STREAM}: {[r.value for r in episodes]}"
    spike_ts = good[0][1] + SPIKE_INDEX * 60_000
    assert spiked[0]["start_ts"] <= spike_ts <= spiked[0]["end_ts"]
    # The forecast builds on the last reading, so the return from a spike surprises as much.
    assert spiked[0]["peak_ts"] in (spike_ts, spike_ts + 60_000)
    assert "temperature" in spiked[0]["channels"]

    # A clean stop commits everything it consumed.
    assert committed_offsets(bootstrap, settings.kafka.group_id, topic) == end_offsets(
        bootstrap, topic)
