"""Small forecasters with non-trivial weights and recorded sequences, shared by detector tests."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest

from detector.features import ChannelScaler, clock_features
from detector.model import ForecasterConfig, build_forecaster, step_params
from detector.scorer_config import ScorerConfig
from detector.step import StreamingStep


@dataclasses.dataclass
class Recording:
    values: np.ndarray  # [streams, time, channels], raw units
    timestamps_ms: np.ndarray  # [streams, time]


def make_model(time_features: bool = True, seed: int = 11, memory_units: int = 6
               ) -> tuple[ForecasterConfig, keras.Model]:
    keras.utils.set_random_seed(seed)
    config = ForecasterConfig(channels=3, time_features=time_features, clock_units=4,
                              dependency_units=8, memory_units=memory_units, hidden_units=5,
                              depth=2)
    model = build_forecaster(config)
    rng = np.random.default_rng(seed)
    # Zero biases and tiny initial weights would hide mistakes; give every weight a value.
    for variable in model.weights:
        variable.assign(rng.normal(0.0, 0.4, size=variable.shape).astype("float32"))
    return config, model


def make_recording(streams: int = 5, steps: int = 40, channels: int = 3,
                   seed: int = 5) -> Recording:
    rng = np.random.default_rng(seed)
    level = rng.normal(10.0, 3.0, size=(streams, 1, channels))
    values = level + np.cumsum(rng.normal(0, 1.0, size=(streams, steps, channels)), axis=1)
    start = 1_700_000_000_000 + rng.integers(0, 10**9, size=(streams, 1))
    timestamps = start + 60_000 * np.arange(steps)[None, :]
    return Recording(values.astype(np.float32), timestamps.astype(np.int64))


def scaler_for(recording: Recording) -> ChannelScaler:
    return ChannelScaler.fit(recording.values, clip=3.0)  # small clip: the clip path is used


def keras_forecasts(model: keras.Model, scaler: ChannelScaler,
                    recording: Recording) -> tuple[np.ndarray, np.ndarray]:
    """Forecast mean and scale of the next reading, per step, from the Keras model."""
    normalized = scaler.normalize(recording.values)
    inputs = {"values": scaler.model_input(normalized)}
    if "clock" in model.input:
        inputs["clock"] = clock_features(recording.timestamps_ms)
    output = keras.ops.convert_to_numpy(model(inputs))
    channels = recording.values.shape[-1]
    return normalized + output[..., :channels], output[..., channels:]


@pytest.fixture(params=[True, False], ids=["with-clock", "without-clock"])
def forecaster(request):
    config, model = make_model(time_features=request.param)
    return config, model


@pytest.fixture
def recording() -> Recording:
    return make_recording()


@pytest.fixture
def scorer() -> ScorerConfig:
    return ScorerConfig(learning_period=5, history=12, threshold=0.9, average_span=4,
                        level_history=15, refractory=4)


@pytest.fixture
def step(forecaster, recording, scorer) -> StreamingStep:
    _, model = forecaster
    return StreamingStep(step_params(model), scaler_for(recording), scorer)
