"""The SavedModel step equals the NumPy step; artifacts save, load, and fail clearly."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from detector.artifact import ArtifactError, load_artifact, read_metadata, save_artifact
from detector.export import load_exported_step, save_exported_step
from detector.features import ChannelScaler
from detector.scorer_config import ScorerConfig
from tests.unit.detector.conftest import make_model, make_recording, scaler_for

CHANNELS = ("temperature", "pressure", "vibration")


def test_saved_model_step_equals_numpy_step(step, recording, tmp_path):
    save_exported_step(step, tmp_path / "step")
    exported = load_exported_step(tmp_path / "step")
    streams, steps, _ = recording.values.shape
    state_np = step.layout.initial(streams)
    state_tf = state_np.copy()
    # Each step equals the NumPy one to float32 rounding; carried in the record, the
    # differences grow over the sequence to about 1e-5 of a surprise. The peak holds a
    # surprise (doubled when reported) and the likelihood is 1 - 10 ** -surprise, so both
    # are promised to the surprise's tolerance (1e-4; the likelihood's is ln 10 times that
    # at most), the rest of the record to 1e-5.
    peak = step.layout.fields["surprise_peak"]
    rest = np.ones(step.layout.size, bool)
    rest[peak] = False
    for t in range(steps):
        result, state_np = step(recording.values[:, t], recording.timestamps_ms[:, t], state_np)
        out = exported(values=recording.values[:, t], timestamps_ms=recording.timestamps_ms[:, t],
                       state=state_tf)
        state_tf = out["state"].numpy()
        np.testing.assert_allclose(state_tf[:, rest], state_np[:, rest], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(state_tf[:, peak], state_np[:, peak], atol=2e-4)
        np.testing.assert_allclose(out["score"].numpy(), result.score, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(out["likelihood"].numpy(), result.likelihood,
                                   atol=math.log(10) * 1e-4)
        np.testing.assert_allclose(out["surprise"].numpy(), result.surprise, atol=1e-4)
        np.testing.assert_array_equal(out["flag"].numpy(), result.flag)
        np.testing.assert_array_equal(out["top_channel"].numpy(), result.top_channel)
        np.testing.assert_allclose(out["onset"].numpy(), result.onset, atol=1e-4)


def save_small(path: Path):
    config, model = make_model()
    recording = make_recording()
    scaler = scaler_for(recording)
    metadata = save_artifact(path, model, CHANNELS, config, scaler, ScorerConfig(),
                             training={"data_fingerprint": "abc123", "readings": 200})
    return model, scaler, metadata, recording


def test_artifact_round_trip(tmp_path):
    model, scaler, metadata, recording = save_small(tmp_path / "model")
    loaded = load_artifact(tmp_path / "model")
    assert loaded.metadata == metadata
    assert loaded.metadata.channels == CHANNELS
    assert loaded.metadata.normalization == scaler
    assert len(loaded.metadata.model_version) == 12
    assert set(loaded.metadata.library_versions) == {"tensorflow", "keras", "numpy"}
    assert loaded.metadata.training["data_fingerprint"] == "abc123"
    for original, restored in zip(model.weights, loaded.model.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(original), np.asarray(restored))
    state = loaded.step.layout.initial(5)
    result, _ = loaded.step(recording.values[:, 0], recording.timestamps_ms[:, 0], state)
    assert result.score.shape == (5,)
    on_disk = json.loads((tmp_path / "model" / "metadata.json").read_text())
    assert on_disk["state_layout"]["size"] == loaded.step.layout.size
    assert "model.keras" in on_disk["files"] and any(k.startswith("step/")
                                                      for k in on_disk["files"])


def test_saving_over_an_artifact_replaces_it_whole(tmp_path):
    save_small(tmp_path / "model")
    _, _, second, _ = save_small(tmp_path / "model")
    assert read_metadata(tmp_path / "model") == second
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no staging leftovers


def test_interrupted_save_leaves_the_old_artifact_and_no_partial_one(tmp_path, monkeypatch):
    _, _, first, _ = save_small(tmp_path / "model")

    def fail(*_args, **_kwargs):
        raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-save

    monkeypatch.setattr("detector.export.save_exported_step", fail)
    with pytest.raises(KeyboardInterrupt):
        save_small(tmp_path / "model")
    assert read_metadata(tmp_path / "model") == first
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_missing_artifact_is_named(tmp_path):
    with pytest.raises(ArtifactError, match=r"model artifact .*nowhere: not found"):
        load_artifact(tmp_path / "nowhere")


def test_directory_without_metadata_is_not_an_artifact(tmp_path):
    save_small(tmp_path / "model")
    (tmp_path / "model" / "metadata.json").unlink()
    with pytest.raises(ArtifactError, match=r"metadata\.json: missing; .* not a complete"):
        load_artifact(tmp_path / "model")


def test_truncated_model_file_is_named(tmp_path):
    save_small(tmp_path / "model")
    model_file = tmp_path / "model" / "model.keras"
    model_file.write_bytes(model_file.read_bytes()[:1000])
    with pytest.raises(ArtifactError, match=r"model\.keras: truncated or modified: expected "
                                            r"\d+ bytes .* found 1000 bytes"):
        load_artifact(tmp_path / "model")


def test_missing_step_file_is_named(tmp_path):
    save_small(tmp_path / "model")
    shutil.rmtree(tmp_path / "model" / "step")
    with pytest.raises(ArtifactError, match=r"step/.*: missing \(listed in metadata\.json\)"):
        load_artifact(tmp_path / "model")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.update(format_version=99), "format version 99 is not supported"),
        (lambda m: m.pop("channels"), "missing field 'channels'"),
        (lambda m: m["normalization"].update(scale=[0.0, 1.0, 1.0]), "invalid value: `scale`"),
        (lambda m: m.update(format="something-else"), "not a cellwatch model metadata file"),
    ],
)
def test_incompatible_metadata_is_explained(tmp_path, edit, message):
    save_small(tmp_path / "model")
    path = tmp_path / "model" / "metadata.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match=message) as caught:
        load_artifact(tmp_path / "model")
    assert "metadata.json" in str(caught.value)


def test_metadata_that_is_not_json_gives_line_and_column(tmp_path):
    save_small(tmp_path / "model")
    (tmp_path / "model" / "metadata.json").write_text('{"format": \n')
    with pytest.raises(ArtifactError, match=r"not valid JSON \(line 2, column 1"):
        load_artifact(tmp_path / "model")


def test_channel_names_must_match_the_model(tmp_path):
    config, model = make_model()
    with pytest.raises(ArtifactError, match="expected 3 distinct names"):
        save_artifact(tmp_path / "m", model, ("a", "a", "b"), config,
                      ChannelScaler((0.0,) * 3, (1.0,) * 3), ScorerConfig(), training={})
    assert not (tmp_path / "m").exists()

