"""The synthetic generator: reproducible, per-stream independent, anomalies where labeled."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from training.recordings import RecordingError, read_recording, write_long_csv
from training.synthetic import (
    ALL_KINDS,
    DEFAULT_START_MS,
    LEARNING_FRACTION,
    AnomalyLabel,
    generate,
    read_labels,
    write_labels,
)

LENGTH = 20_000
SETTINGS = {"streams": 3, "length": LENGTH, "anomaly_rate": 10.0, "seed": 7}


@pytest.fixture(scope="module")
def anomalous():
    return generate(**SETTINGS)


@pytest.fixture(scope="module")
def clean():
    recording, labels = generate(**{**SETTINGS, "anomaly_rate": 0.0})
    assert labels == []
    return recording


def noise_sigma(values: np.ndarray) -> float:
    """The noise sigma of a smooth-plus-noise series (first differences cancel the signal)."""
    return float(np.std(np.diff(values)) / math.sqrt(2))


def test_same_seed_gives_bit_identical_output_and_another_seed_does_not():
    first, first_labels = generate(streams=2, length=3000, seed=11)
    second, second_labels = generate(streams=2, length=3000, seed=11)
    assert first_labels == second_labels
    for key, series in first.streams.items():
        assert series.values.tobytes() == second.streams[key].values.tobytes()
        assert series.labels.tobytes() == second.streams[key].labels.tobytes()
        assert series.timestamps_ms.tobytes() == second.streams[key].timestamps_ms.tobytes()
    other, _ = generate(streams=2, length=3000, seed=12)
    assert other != first


def test_a_stream_does_not_depend_on_how_many_streams_are_generated():
    few, few_labels = generate(streams=2, length=3000, seed=5)
    many, many_labels = generate(streams=5, length=3000, seed=5)
    assert list(few.streams) == list(many.streams)[:2]
    for key in few.streams:
        assert few.streams[key] == many.streams[key]
    assert few_labels == [label for label in many_labels if label.stream in few.streams]
    assert many.streams["synth-002"] != many.streams["synth-003"]


def test_shape_names_and_timestamps():
    recording, _ = generate(streams=2, channels=("temp", "load"), length=100, interval_s=30,
                            start_ms=DEFAULT_START_MS + 5)
    assert recording.channels == ("temp", "load")
    series = recording.streams["synth-001"]
    assert series.values.shape == (100, 2)
    assert series.timestamps_ms[0] == DEFAULT_START_MS + 5
    assert set(np.diff(series.timestamps_ms).tolist()) == {30_000}
    assert generate(channels=3, length=10, streams=1)[0].channels == ("ch0", "ch1", "ch2")


def test_channels_of_a_stream_are_correlated(clean):
    correlations = [np.corrcoef(s.values.T)[np.triu_indices(4, 1)]
                    for s in generate(streams=20, length=5000, anomaly_rate=0)[0].streams.values()]
    assert np.mean(correlations) > 0.3
    assert np.min(correlations) > 0.0


def test_every_kind_is_present_and_labeled_windows_match_the_labels(anomalous):
    recording, labels = anomalous
    for key, series in recording.streams.items():
        windows = [label for label in labels if label.stream == key]
        assert {label.kind for label in windows} == set(ALL_KINDS)
        covered = np.zeros(len(series), dtype=bool)
        for label in windows:
            inside = label.covers(series.timestamps_ms)
            assert not (covered & inside).any(), "anomalies overlap"
            covered |= inside
        np.testing.assert_array_equal(series.labels, covered)


def test_values_change_exactly_inside_labeled_windows_on_labeled_channels(anomalous, clean):
    recording, labels = anomalous
    for key, series in recording.streams.items():
        changed = series.values != clean.streams[key].values
        expected = np.zeros_like(changed)
        for label in labels:
            if label.stream == key:
                columns = [recording.channels.index(c) for c in label.channels]
                rows = label.covers(series.timestamps_ms)
                expected[np.ix_(rows, columns)] = True
        np.testing.assert_array_equal(changed, expected)


def test_each_kind_deviates_as_documented(anomalous, clean):
    recording, labels = anomalous
    seen = set()
    for label in labels:
        series = recording.streams[label.stream]
        rows = label.covers(series.timestamps_ms)
        columns = [recording.channels.index(c) for c in label.channels]
        values = series.values[rows][:, columns]
        baseline = clean.streams[label.stream].values
        sigma = np.array([noise_sigma(baseline[:, c]) for c in columns])
        deviation = (values - baseline[rows][:, columns]) / sigma
        if label.kind == "spike":
            assert 1 <= len(values) <= 3 and np.all(np.abs(deviation) >= 6)
        elif label.kind == "level_shift":
            assert len(values) >= 60 and np.ptp(deviation) < 1e-6
            assert np.all(np.abs(deviation) >= 4)
        elif label.kind == "drift":
            assert np.all(np.diff(np.abs(deviation[:, 0])) > 0)
            assert abs(deviation[-1, 0]) >= 6
        elif label.kind == "stuck":
            before = series.values[np.flatnonzero(rows)[0] - 1, columns[0]]
            assert np.ptp(values) == 0 and values[0, 0] == before and len(values) >= 40
        elif label.kind == "variance_burst":
            assert np.std(values[:, 0] - baseline[rows][:, columns[0]]) / sigma[0] >= 3
        elif label.kind == "dropout":
            assert label.channels == recording.channels and np.all(values == 0.0)
            assert np.all(baseline[rows] / sigma.min() > 15)  # far from 0 without the dropout
        seen.add(label.kind)
    assert seen == set(ALL_KINDS)


def test_no_anomaly_in_the_learning_period(anomalous):
    recording, labels = anomalous
    learning = math.ceil(0.15 * LENGTH)
    assert learning == math.ceil(LEARNING_FRACTION * LENGTH)
    for series in recording.streams.values():
        assert not series.labels[:learning].any()
        first_allowed = series.timestamps_ms[learning]
        assert all(label.start_ms >= first_allowed for label in labels
                   if label.stream == series.stream)
    assert any(series.labels[learning:].any() for series in recording.streams.values())


def test_kinds_and_rate_select_the_anomalies():
    _, labels = generate(streams=2, length=20_000, anomaly_rate=8, kinds=["stuck"])
    assert labels and {label.kind for label in labels} == {"stuck"}
    _, none = generate(streams=2, length=20_000, kinds=())
    assert none == []
    short, few = generate(streams=1, length=200, anomaly_rate=10_000)  # only some fit
    series = short.streams["synth-000"]
    assert few and not series.labels[:30].any()
    assert all(label.end_ms <= series.timestamps_ms[-1] for label in few)
    with pytest.raises(ValueError, match="kinds: expected some of spike"):
        generate(kinds=["meteor"])
    with pytest.raises(ValueError, match="interval_s"):
        generate(interval_s=0)


def test_labels_round_trip_through_json(anomalous, tmp_path):
    _, labels = anomalous
    write_labels(labels, tmp_path / "labels.json")
    assert read_labels(tmp_path / "labels.json") == labels
    first = json.loads((tmp_path / "labels.json").read_text())[0]
    assert set(first) == {"stream", "kind", "start", "end", "channels"}
    assert first["start"].endswith("Z")


def test_read_labels_reports_bad_items(tmp_path):
    path = tmp_path / "labels.json"
    path.write_text(json.dumps([
        {"stream": "a", "kind": "meteor", "start": "2024-01-01T00:00:00Z",
         "end": "2024-01-01T00:01:00Z", "channels": ["v"]},
        {"stream": "a", "kind": "spike", "start": "later", "end": 0, "channels": ["v"]},
        {"stream": "a"},
    ]))
    with pytest.raises(RecordingError) as info:
        read_labels(path)
    message = str(info.value)
    assert f"{path}: item 1: key 'kind': expected one of spike" in message
    assert f"{path}: item 2: key 'start': unparsable time (expected" in message
    assert f"{path}: item 3: missing keys ['kind', 'start', 'end', 'channels']" in message
    assert info.value.total == 3


def test_a_generated_recording_survives_a_csv_round_trip(tmp_path):
    recording, _ = generate(streams=2, length=500)
    write_long_csv(recording, tmp_path / "synth.csv")
    assert read_recording(tmp_path / "synth.csv") == recording


def test_anomaly_label_covers_is_inclusive():
    label = AnomalyLabel("s", "spike", 10, 20, ("v",))
    assert label.covers(np.array([9, 10, 20, 21])).tolist() == [False, True, True, False]
