"""The model artifact: one directory with everything a worker needs to score streams.

Layout::

    <artifact>/
        model.keras       the Keras forecaster (loaded in safe mode)
        step/             the streaming step as a TensorFlow SavedModel (detector.export)
        metadata.json     written last; lists every other file with its size and SHA-256

An artifact is written into a temporary sibling directory and renamed into place, and
``metadata.json`` is its last file, so an interrupted save never leaves a directory that loads
as if it were complete. Loading checks the format version and every file's checksum, and
names the file and the problem when something is wrong.

This module does file I/O only on paths its caller passes in.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from detector.features import ChannelScaler
from detector.model import ForecasterConfig, step_params
from detector.scorer_config import ScorerConfig
from detector.state import StateLayout
from detector.step import StreamingStep

FORMAT = "cellwatch-model"
FORMAT_VERSION = 1
MODEL_FILE = "model.keras"
STEP_DIR = "step"
METADATA_FILE = "metadata.json"


class ArtifactError(ValueError):
    """A model artifact that is missing, incomplete, corrupt or incompatible."""


@dataclasses.dataclass(frozen=True)
class ArtifactMetadata:
    """What ``metadata.json`` records about an artifact."""

    model_version: str
    created_at: str
    channels: tuple[str, ...]
    forecaster: ForecasterConfig
    normalization: ChannelScaler
    scorer: ScorerConfig
    state_layout: StateLayout
    training: dict[str, Any]
    library_versions: dict[str, str]
    files: dict[str, dict[str, Any]]
    format_version: int = FORMAT_VERSION

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": self.format_version,
            "model_version": self.model_version,
            "created_at": self.created_at,
            "channels": list(self.channels),
            "forecaster": self.forecaster.to_json(),
            "normalization": self.normalization.to_json(),
            "scorer": self.scorer.to_json(),
            "state_layout": {**self.state_layout.to_json(), "size": self.state_layout.size},
            "training": self.training,
            "library_versions": self.library_versions,
            "files": self.files,
        }

    @classmethod
    def from_json(cls, data: Any, source: Path) -> ArtifactMetadata:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ArtifactError(f"{source}: not a cellwatch model metadata file "
                                f"(expected \"format\": \"{FORMAT}\")")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ArtifactError(
                f"{source}: format version {version!r} is not supported; this cellwatch "
                f"reads version {FORMAT_VERSION}")
        try:
            layout_json = dict(data["state_layout"])
            layout_json.pop("size", None)
            return cls(
                model_version=str(data["model_version"]),
                created_at=str(data["created_at"]),
                channels=tuple(data["channels"]),
                forecaster=ForecasterConfig.from_json(data["forecaster"]),
                normalization=ChannelScaler.from_json(data["normalization"]),
                scorer=ScorerConfig.from_json(data["scorer"]),
                state_layout=StateLayout.from_json(layout_json),
                training=dict(data["training"]),
                library_versions=dict(data["library_versions"]),
                files=dict(data["files"]),
                format_version=version,
            )
        except KeyError as error:
            raise ArtifactError(f"{source}: missing field {error.args[0]!r}") from None
        except (TypeError, ValueError) as error:
            raise ArtifactError(f"{source}: invalid value: {error}") from None


@dataclasses.dataclass(frozen=True)
class ModelArtifact:
    """A loaded artifact: its metadata, the Keras model and the streaming step."""

    path: Path
    metadata: ArtifactMetadata
    model: keras.Model
    step: StreamingStep


def _digest(path: Path) -> dict[str, Any]:
    sha = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return {"bytes": path.stat().st_size, "sha256": sha.hexdigest()}


def _library_versions() -> dict[str, str]:
    return {"tensorflow": tf.__version__, "keras": keras.__version__, "numpy": np.__version__}


def save_artifact(
    path: Path,
    model: keras.Model,
    channels: tuple[str, ...],
    forecaster: ForecasterConfig,
    scaler: ChannelScaler,
    scorer: ScorerConfig,
    training: dict[str, Any],
    created_at: dt.datetime | None = None,
) -> ArtifactMetadata:
    """Writes a complete artifact to ``path``, replacing one that is there.

    Args:
        path: the artifact directory.
        model: a forecaster built by :func:`detector.model.build_forecaster`.
        channels: channel names, in the model's channel order.
        forecaster: the model's configuration.
        scaler: the normalization fitted on the training data.
        scorer: likelihood settings and threshold.
        training: JSON-ready facts of the training run (data fingerprint, metrics, ...).
        created_at: creation time (now, UTC, when None).
    """
    from detector.export import save_exported_step  # TensorFlow tracing is only needed here

    if len(channels) != forecaster.channels or len(set(channels)) != len(channels):
        raise ArtifactError(
            f"channels: expected {forecaster.channels} distinct names, received {channels}")
    step = StreamingStep(step_params(model), scaler, scorer)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.parent / f".{path.name}.partial-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        model.save(staging / MODEL_FILE)
        save_exported_step(step, staging / STEP_DIR)
        files = {
            str(file.relative_to(staging)): _digest(file)
            for file in sorted(staging.rglob("*")) if file.is_file()
        }
        metadata = ArtifactMetadata(
            model_version=files[MODEL_FILE]["sha256"][:12],
            created_at=(created_at or dt.datetime.now(dt.UTC)).isoformat(timespec="seconds"),
            channels=tuple(channels),
            forecaster=forecaster,
            normalization=scaler,
            scorer=scorer,
            state_layout=step.layout,
            training=training,
            library_versions=_library_versions(),
            files=files,
        )
        (staging / METADATA_FILE).write_text(
            json.dumps(metadata.to_json(), indent=2, sort_keys=False) + "\n", encoding="utf-8")
        _swap_into_place(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return metadata


def _swap_into_place(staging: Path, path: Path) -> None:
    # A directory cannot be renamed over a non-empty one, so the old artifact steps aside
    # first; a reader in that instant sees no artifact rather than half of one.
    retired = None
    if path.exists():
        retired = path.parent / f".{path.name}.retired-{uuid.uuid4().hex[:8]}"
        os.replace(path, retired)
    os.replace(staging, path)
    if retired is not None:
        shutil.rmtree(retired, ignore_errors=True)


def read_metadata(path: Path) -> ArtifactMetadata:
    """Reads and checks ``metadata.json`` and the checksums of the files it lists."""
    path = Path(path)
    if not path.is_dir():
        raise ArtifactError(f"model artifact {path}: not found (expected a directory)")
    metadata_path = path / METADATA_FILE
    if not metadata_path.is_file():
        raise ArtifactError(
            f"{metadata_path}: missing; {path} is not a complete cellwatch model artifact "
            f"(train one with `cellwatch train`)")
    try:
        data = json.loads(metadata_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ArtifactError(
            f"{metadata_path}: not valid JSON (line {error.lineno}, column {error.colno}: "
            f"{error.msg})") from None
    metadata = ArtifactMetadata.from_json(data, metadata_path)
    for name, expected in metadata.files.items():
        file = path / name
        if not file.is_file():
            raise ArtifactError(f"{file}: missing (listed in {METADATA_FILE})")
        found = _digest(file)
        if found != expected:
            raise ArtifactError(
                f"{file}: truncated or modified: expected {expected['bytes']} bytes with "
                f"SHA-256 {expected['sha256'][:12]}..., found {found['bytes']} bytes with "
                f"{found['sha256'][:12]}...")
    return metadata


def load_artifact(path: Path) -> ModelArtifact:
    """Loads an artifact written by :func:`save_artifact`; raises :class:`ArtifactError`."""
    path = Path(path)
    metadata = read_metadata(path)
    model_path = path / MODEL_FILE
    try:
        model = keras.saving.load_model(model_path, compile=False, safe_mode=True)
    except Exception as error:  # Keras raises many types for a damaged archive
        raise ArtifactError(f"{model_path}: cannot be loaded: {error}") from error
    try:
        step = StreamingStep(step_params(model), metadata.normalization, metadata.scorer)
    except ValueError as error:
        raise ArtifactError(f"{model_path}: {error}") from None
    if step.layout != metadata.state_layout:
        raise ArtifactError(
            f"{path / METADATA_FILE}: state layout {metadata.state_layout} does not match the "
            f"model's {step.layout}")
    return ModelArtifact(path=path, metadata=metadata, model=model, step=step)
