"""Tests for the custom Keras layers in `detector.layers`.

A shared harness checks every layer for what Keras' own `run_layer_test`
(`keras/src/testing/test_case.py`) checks: config and registered-name
serialization round trips, building from a shape alone, symbolic and eager calls
(output shapes and dtypes, `compute_output_shape` and `compute_output_spec`
against the actual output), the losses a call adds, masking support as declared,
a `fit` step, and the `mixed_float16` dtype policy; plus `.keras` save/load, bad
constructor arguments, gradient flow and batch-size independence. The per-layer
tests below it check the math against hand-computed NumPy values.
"""

import copy
import dataclasses
import json
import re
import warnings
from collections.abc import Callable

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from detector.layers import (
    CodebookDecoder,
    GaussianHead,
    IntermediateOutput,
    MemoryCell,
    NonNegativeProjection,
    SineEncoding,
    StackedNeurons,
    TemperatureSoftmax,
    ThreePointDependency,
    TimePooledStackedNeurons,
    elu_sigmoid,
    get_activation,
)

SEED = 1234
ATOL = 1e-5


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(SEED)


def _rng():
    return np.random.default_rng(SEED)


def _np(tensor):
    return ops.convert_to_numpy(tensor)


def _np_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _np_softplus(x):
    return np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0.0)


def _np_elu(x):
    return np.where(x > 0, x, np.expm1(np.minimum(x, 0.0)))


def _np_softmax(x, axis=-1):
    shifted = np.exp(x - x.max(axis=axis, keepdims=True))
    return shifted / shifted.sum(axis=axis, keepdims=True)


def _np_memory_cell(x, kernel, recurrent_kernel, bias, h0=None):
    """The spec's memory cell update, looped over time. Returns all states."""
    units = recurrent_kernel.shape[0]
    h = np.zeros((x.shape[0], units)) if h0 is None else h0
    outputs = []
    for t in range(x.shape[1]):
        mixed = x[:, t] @ kernel + h @ recurrent_kernel + bias
        retain = _np_sigmoid(mixed[:, :units])
        candidate = np.tanh(mixed[:, units:])
        h = retain * h + (1.0 - retain) * candidate
        outputs.append(h)
    return np.stack(outputs, axis=1)


# ---------------------------------------------------------------------------
# Shared harness
# ---------------------------------------------------------------------------

BASIS = [[1.0, 0.0, 2.0], [0.0, 1.0, -1.0]]
CODEBOOK = [[0.0, 0.5], [1.0, -1.0], [2.0, 3.0], [-4.0, 0.25]]


@dataclasses.dataclass
class LayerCase:
    """One layer under the shared harness.

    `make(**kwargs)` builds the layer, passing `kwargs` (e.g. `dtype`) to it (a
    `MemoryCell` comes inside `keras.layers.RNN`, both get them),
    `inputs(batch)` builds an input batch and `output_shape(batch)` is the
    expected output shape, a tuple of shapes for multi-output layers.
    `supports_masking` is what the layer declares; `sequences(batch, time)`
    builds inputs with a time axis (axis 1) for the masking check, and
    `keeps_time` says whether the output keeps that axis (and so the mask).
    `mixed_dtypes` are the output dtypes under the `mixed_float16` policy.
    """

    id: str
    make: Callable[..., keras.layers.Layer]
    inputs: Callable[[int], np.ndarray]
    output_shape: Callable[[object], object]
    supports_masking: bool
    sequences: Callable[[int, int], np.ndarray]
    keeps_time: bool = True
    mixed_dtypes: tuple[str, ...] = ("float16",)


def _floats(*shape):
    return lambda batch: _rng().normal(size=(batch, *shape)).astype("float32")


def _float_sequences(features):
    return lambda batch, time: _rng().normal(size=(batch, time, features)).astype("float32")


def _codes(batch):
    return _rng().integers(0, len(CODEBOOK), size=(batch, 3)).astype("int32")


def _code_sequences(batch, time):
    return _rng().integers(0, len(CODEBOOK), size=(batch, time)).astype("int32")


CASES = [
    LayerCase(
        "three_point_dependency",
        lambda **kw: ThreePointDependency(3, activation="tanh", **kw),
        _floats(5, 2),
        lambda b: (b, 5, 3),
        supports_masking=True,
        sequences=_float_sequences(2),
    ),
    LayerCase(
        "memory_cell_in_rnn",
        lambda **kw: keras.layers.RNN(MemoryCell(4, **kw), return_sequences=True, **kw),
        _floats(5, 2),
        lambda b: (b, 5, 4),
        supports_masking=True,
        sequences=_float_sequences(2),
    ),
    LayerCase(
        "stacked_neurons_elu_sigmoid",
        lambda **kw: StackedNeurons(4, depth=3, activation="elu_sigmoid", **kw),
        _floats(3, 2),
        lambda b: (b, 3, 4),
        supports_masking=True,
        sequences=_float_sequences(2),
    ),
    LayerCase(
        "time_pooled_stacked_neurons",
        lambda **kw: TimePooledStackedNeurons(4, activation="tanh", **kw),
        _floats(5, 2),
        lambda b: (b, 4),
        supports_masking=True,
        sequences=_float_sequences(2),
        keeps_time=False,
    ),
    LayerCase(
        "temperature_softmax",
        lambda **kw: TemperatureSoftmax(initial_temperature=0.7, **kw),
        _floats(4),
        lambda b: (b, 4),
        supports_masking=True,
        sequences=_float_sequences(4),
    ),
    LayerCase(
        "non_negative_projection",
        lambda **kw: NonNegativeProjection(BASIS, **kw),
        _floats(4),
        lambda b: (b, 3),
        supports_masking=True,
        sequences=_float_sequences(4),
    ),
    LayerCase(
        "codebook_decoder",
        lambda **kw: CodebookDecoder(CODEBOOK, trainable_codebook=True, **kw),
        _codes,
        lambda b: (b, 3, 2),
        supports_masking=False,
        sequences=_code_sequences,
    ),
    LayerCase(
        "intermediate_output",
        lambda **kw: IntermediateOutput(keras.layers.Dense(2, activation="tanh"), **kw),
        _floats(3),
        lambda b: ((b, 2), (b, 3)),
        supports_masking=True,
        sequences=_float_sequences(3),
        # The wrapped Dense keeps its own float32 policy; the input passes through as cast.
        mixed_dtypes=("float32", "float16"),
    ),
    LayerCase(
        "sine_encoding",
        lambda **kw: SineEncoding(4, **kw),
        _floats(2),
        lambda b: (b, 4),
        supports_masking=True,
        sequences=_float_sequences(2),
    ),
    LayerCase(
        "gaussian_head",
        lambda **kw: GaussianHead(2, **kw),
        _floats(3),
        lambda b: (b, 4),
        supports_masking=True,
        sequences=_float_sequences(3),
    ),
]


def _flat(structure):
    return keras.tree.flatten(structure)


def _perturb_trainable(layer):
    # Moves every trainable weight away from its initializer's values so a
    # load that silently re-initialized would be caught.
    rng = _rng()
    for variable in layer.trainable_variables:
        noise = rng.normal(scale=0.1, size=variable.shape).astype("float32")
        variable.assign(_np(variable) + noise)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_config_round_trip(case):
    layer = case.make()
    # A MemoryCell is checked on its own as well as inside its RNN.
    for checked in [layer, getattr(layer, "cell", None)]:
        if checked is None:
            continue
        config = checked.get_config()
        json.dumps(config)
        # Deep copy: RNN.from_config pops "cell" out of the dict it is given.
        clone = type(checked).from_config(copy.deepcopy(config))
        assert clone.get_config() == config

    layer(case.inputs(2))
    json.dumps(layer.get_config())


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_keras_save_and_load(case, tmp_path):
    x = case.inputs(3)
    inputs = keras.Input(shape=x.shape[1:], dtype=str(x.dtype))
    layer = case.make()
    model = keras.Model(inputs, layer(inputs))
    _perturb_trainable(layer)
    expected = model(x)

    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    actual = loaded(x)

    assert type(loaded.layers[1]) is type(layer)
    for want, got in zip(_flat(expected), _flat(actual), strict=True):
        np.testing.assert_array_equal(_np(got), _np(want))


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_gradients_reach_every_trainable_weight(case):
    layer = case.make()
    x = case.inputs(3)
    outputs = layer(x)
    # Random output weights: a plain sum would have zero gradient through a
    # softmax, whose outputs always sum to one.
    rng = _rng()
    projections = [rng.normal(size=o.shape).astype("float32") for o in _flat(outputs)]
    assert layer.trainable_variables
    with tf.GradientTape() as tape:
        outputs = layer(x)
        loss = sum(ops.sum(o * p) for o, p in zip(_flat(outputs), projections, strict=True))
    gradients = tape.gradient(loss, layer.trainable_variables)
    for variable, gradient in zip(layer.trainable_variables, gradients, strict=True):
        assert gradient is not None, variable.path
        assert np.any(_np(tf.convert_to_tensor(gradient)) != 0), variable.path


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_any_batch_size(case):
    layer = case.make()
    for batch in (1, 5):
        x = case.inputs(batch)
        outputs = layer(x)
        shapes = tuple(tuple(o.shape) for o in _flat(outputs))
        expected = case.output_shape(batch)
        expected = expected if isinstance(expected[0], tuple) else (expected,)
        assert shapes == expected
    symbolic = layer(keras.Input(shape=x.shape[1:], dtype=str(x.dtype)))
    expected = case.output_shape(None)
    expected = expected if isinstance(expected[0], tuple) else (expected,)
    assert tuple(tuple(o.shape) for o in _flat(symbolic)) == expected
    computed = layer.compute_output_shape((None, *x.shape[1:]))
    computed = computed if isinstance(computed[0], tuple) else (computed,)
    assert tuple(tuple(s) for s in computed) == expected


def _expected_shapes(case, batch):
    expected = case.output_shape(batch)
    return list(expected) if isinstance(expected[0], tuple) else [expected]


def _dtypes(structure):
    return [keras.backend.standardize_dtype(x.dtype) for x in _flat(structure)]


def _input_spec(x, layer):
    # What the layer's call sees: float inputs are cast to its compute dtype.
    float_input = keras.backend.is_float_dtype(str(x.dtype))
    return keras.KerasTensor(x.shape, dtype=layer.compute_dtype if float_input else str(x.dtype))


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_serialization_by_registered_name(case):
    # As Keras' `run_class_serialization_test`: through JSON, found by its registered
    # name without custom objects, and the revived layer has the same attributes.
    layer = case.make()
    config = layer.get_config()
    serialized = json.loads(json.dumps(keras.saving.serialize_keras_object(layer)))
    revived = keras.saving.deserialize_keras_object(serialized)
    assert type(revived) is type(layer)
    assert revived.get_config() == config
    assert set(dir(revived)) == set(dir(layer))
    assert set(dir(type(layer).from_config(copy.deepcopy(config)))) == set(dir(layer))


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_build_from_shape_alone_makes_the_weights_a_call_makes(case):
    x = case.inputs(2)
    called = case.make()
    called(x)
    built = case.make()
    built.build((None, *x.shape[1:]))
    assert built.built
    for kind in ("trainable_weights", "non_trainable_weights", "non_trainable_variables"):
        assert [(w.name, tuple(w.shape)) for w in getattr(built, kind)] == [
            (w.name, tuple(w.shape)) for w in getattr(called, kind)
        ], kind
    assert [tuple(o.shape) for o in _flat(built(x))] == _expected_shapes(case, 2)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_symbolic_and_eager_calls_match_compute_output_spec(case):
    layer = case.make()
    x = case.inputs(3)
    symbolic = layer(keras.Input(shape=x.shape[1:], dtype=str(x.dtype)))
    eager = layer(x)
    spec = layer.compute_output_spec(_input_spec(x, layer))
    assert [tuple(o.shape) for o in _flat(eager)] == _expected_shapes(case, 3)
    assert [tuple(s.shape) for s in _flat(spec)] == _expected_shapes(case, 3)
    assert _dtypes(eager) == _dtypes(symbolic) == _dtypes(spec)
    assert set(_dtypes(eager)) == {"float32"}
    # No regularizer is set: a call adds no loss.
    assert not layer.losses


def test_three_point_dependency_regularizers_add_one_loss_per_weight():
    layer = ThreePointDependency(3, kernel_regularizer="l2", bias_regularizer="l1")
    layer(np.ones((2, 4, 2), "float32"))
    assert len(layer.losses) == 4
    assert all(float(_np(loss)) > 0 for loss in layer.losses[:3])


class _AttachMask(keras.layers.Layer):
    """Passes its input on unchanged with a Keras mask attached.

    Unlike `keras.layers.Masking` it leaves the padded steps' values in place, so a
    layer that ignored the mask would see them.
    """

    def __init__(self, mask, **kwargs):
        super().__init__(**kwargs)
        self.fixed_mask = mask

    def call(self, inputs):
        return inputs

    def compute_mask(self, inputs, previous_mask=None):
        return ops.convert_to_tensor(self.fixed_mask)


class _SeenMask(keras.layers.Layer):
    """Records the mask a layer downstream of the tested one receives."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True
        self.seen = None

    def call(self, inputs, mask=None):
        self.seen = mask
        return inputs


PAD = 7.0


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_masking_support_as_declared(case):
    layer = case.make()
    assert layer.supports_masking is case.supports_masking
    time, lengths = 6, np.array([6, 4, 1])
    mask = np.arange(time)[None, :] >= (time - lengths)[:, None]  # left padding
    x = case.sequences(len(lengths), time)
    probe = _SeenMask()
    if not case.supports_masking:
        # Keras drops the mask (and says so) rather than passing it on wrong.
        with pytest.warns(UserWarning, match="does not support masking"):
            outputs = layer(_AttachMask(mask)(x))
        probe(_flat(outputs)[0])
        assert probe.seen is None
        return
    padded = np.where(mask[..., None], x, PAD).astype(x.dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "does not support masking"
        outputs = layer(_AttachMask(mask)(padded))
    for output in _flat(outputs):
        probe(output)
        if case.keeps_time:
            np.testing.assert_array_equal(_np(probe.seen), mask)
        else:
            assert probe.seen is None
    # The padded steps change nothing: each row's valid part gives what it gives alone.
    for row, length in enumerate(lengths):
        alone = _flat(layer(x[row : row + 1, time - length :]))
        for output, output_alone in zip(_flat(outputs), alone, strict=True):
            got = _np(output)[row]
            got = got[time - length :] if case.keeps_time else got
            np.testing.assert_allclose(got, _np(output_alone)[0], atol=ATOL, err_msg=f"row {row}")


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_fit_step_changes_every_trainable_weight(case):
    x = case.inputs(8)
    inputs = keras.Input(shape=x.shape[1:], dtype=str(x.dtype))
    layer = case.make()
    model = keras.Model(inputs, layer(inputs))
    rng = _rng()
    targets = [rng.normal(size=o.shape).astype("float32") for o in _flat(model(x))]
    trainable = [_np(v).copy() for v in layer.trainable_variables]
    frozen = [_np(v).copy() for v in layer.non_trainable_variables]
    single = len(targets) == 1
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse" if single else ["mse"] * 2)
    history = model.fit(
        x, targets[0] if single else tuple(targets), batch_size=4, epochs=1, verbose=0
    )
    assert np.all(np.isfinite(history.history["loss"]))
    assert trainable
    for variable, before in zip(layer.trainable_variables, trainable, strict=True):
        assert np.all(np.isfinite(_np(variable))), variable.path
        assert np.any(_np(variable) != before), variable.path
    for variable, before in zip(layer.non_trainable_variables, frozen, strict=True):
        np.testing.assert_array_equal(_np(variable), before, err_msg=variable.path)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_mixed_float16_policy(case):
    layer = case.make(dtype="mixed_float16")
    assert layer.compute_dtype == "float16"
    x = case.inputs(3)
    outputs = layer(x)
    spec = layer.compute_output_spec(_input_spec(x, layer))
    symbolic = layer(keras.Input(shape=x.shape[1:], dtype=str(x.dtype)))
    assert _dtypes(outputs) == _dtypes(spec) == _dtypes(symbolic) == list(case.mixed_dtypes)
    assert [tuple(o.shape) for o in _flat(outputs)] == _expected_shapes(case, 3)
    assert all(np.all(np.isfinite(_np(o))) for o in _flat(outputs))
    # Variables stay float32 under a mixed policy; only the computation is float16.
    assert layer.weights
    for weight in layer.weights:
        assert weight.dtype == "float32", weight.path


BAD_ARGUMENTS = [
    (ThreePointDependency, {"units": 0}, "units"),
    (ThreePointDependency, {"units": 2.5}, "units"),
    (ThreePointDependency, {"units": 3, "activation": "no_such_activation"}, "activation"),
    (ThreePointDependency, {"units": 3, "use_bias": "yes"}, "use_bias"),
    (MemoryCell, {"units": -1}, "units"),
    (MemoryCell, {"units": 2, "recurrent_activation": "nope"}, "recurrent_activation"),
    (StackedNeurons, {"units": True}, "units"),
    (StackedNeurons, {"units": 4, "depth": 0}, "depth"),
    (StackedNeurons, {"units": 4, "activation": "StackedNeurons"}, "activation"),
    (TimePooledStackedNeurons, {"units": 4, "depth": "2"}, "depth"),
    (TimePooledStackedNeurons, {"units": 0}, "units"),
    (TemperatureSoftmax, {"initial_temperature": 0.0}, "initial_temperature"),
    (TemperatureSoftmax, {"initial_temperature": float("nan")}, "initial_temperature"),
    (
        TemperatureSoftmax,
        {"initial_temperature": 0.5, "min_temperature": 0.5},
        "initial_temperature",
    ),
    (TemperatureSoftmax, {"min_temperature": 0.0}, "min_temperature"),
    (TemperatureSoftmax, {"min_temperature": -1.0}, "min_temperature"),
    (TemperatureSoftmax, {"axis": 1.5}, "axis"),
    (NonNegativeProjection, {"basis": [1.0, 2.0]}, "basis"),
    (NonNegativeProjection, {"basis": []}, "basis"),
    (NonNegativeProjection, {"basis": [[1.0, np.inf]]}, "basis"),
    (NonNegativeProjection, {"basis": [[1.0, 2.0], [3.0]]}, "basis"),
    (CodebookDecoder, {"codebook": [[[1.0]]]}, "codebook"),
    (CodebookDecoder, {"codebook": [[]]}, "codebook"),
    (CodebookDecoder, {"codebook": [[np.nan, 1.0]]}, "codebook"),
    (CodebookDecoder, {"codebook": [[1.0]], "trainable_codebook": "no"}, "trainable_codebook"),
    (IntermediateOutput, {"layer": lambda x: x}, "layer"),
    (SineEncoding, {"units": 0}, "units"),
    (SineEncoding, {"units": None}, "units"),
    (GaussianHead, {"channels": 0}, "channels"),
    (GaussianHead, {"channels": 2, "min_scale": 0.0}, "min_scale"),
    (GaussianHead, {"channels": 2, "min_scale": float("inf")}, "min_scale"),
]


@pytest.mark.parametrize(
    ("layer_class", "kwargs", "argument"),
    BAD_ARGUMENTS,
    ids=[f"{cls.__name__}-{arg}-{i}" for i, (cls, _, arg) in enumerate(BAD_ARGUMENTS)],
)
def test_bad_constructor_arguments_name_the_argument(layer_class, kwargs, argument):
    with pytest.raises(ValueError, match=re.escape(f"`{argument}`")):
        layer_class(**kwargs)


# ---------------------------------------------------------------------------
# ThreePointDependency
# ---------------------------------------------------------------------------


def _three_point_layer(features=2, units=3, activation=None):
    rng = _rng()
    layer = ThreePointDependency(units, activation=activation)
    layer.build((None, None, features))
    weights = {
        "kernel_t_minus_2": rng.normal(size=(features, units)),
        "kernel_t_minus_1": rng.normal(size=(features, units)),
        "kernel_t": rng.normal(size=(features, units)),
        "bias": rng.normal(size=(units,)),
    }
    for name, value in weights.items():
        getattr(layer, name).assign(value.astype("float32"))
    return layer, weights


def _np_three_point(x, w):
    padded = np.concatenate([np.zeros((x.shape[0], 2, x.shape[2])), x], axis=1)
    return (
        padded[:, :-2] @ w["kernel_t_minus_2"]
        + padded[:, 1:-1] @ w["kernel_t_minus_1"]
        + padded[:, 2:] @ w["kernel_t"]
        + w["bias"]
    )


def test_three_point_dependency_matches_hand_computation():
    layer, w = _three_point_layer()
    x = _rng().normal(size=(2, 5, 2)).astype("float32")
    actual = _np(layer(x))
    np.testing.assert_allclose(actual, _np_three_point(x, w), atol=ATOL)
    # The first two steps see a zero history, not the end of the sequence.
    np.testing.assert_allclose(actual[:, 0], x[:, 0] @ w["kernel_t"] + w["bias"], atol=ATOL)
    np.testing.assert_allclose(
        actual[:, 1],
        x[:, 1] @ w["kernel_t"] + x[:, 0] @ w["kernel_t_minus_1"] + w["bias"],
        atol=ATOL,
    )


def test_three_point_dependency_short_and_unknown_length_sequences():
    layer, w = _three_point_layer(activation="tanh")
    inputs = keras.Input(shape=(None, 2))
    model = keras.Model(inputs, layer(inputs))
    for length in (1, 2, 4):
        x = _rng().normal(size=(3, length, 2)).astype("float32")
        np.testing.assert_allclose(_np(model(x)), np.tanh(_np_three_point(x, w)), atol=ATOL)


def test_three_point_dependency_masked_left_padding_is_zero_history():
    layer, _ = _three_point_layer()
    x = _rng().normal(size=(1, 3, 2)).astype("float32")
    padded = np.concatenate([np.full((1, 2, 2), 9.0, "float32"), x], axis=1)
    mask = np.array([[False, False, True, True, True]])
    np.testing.assert_allclose(_np(layer(padded, mask=mask))[:, 2:], _np(layer(x)), atol=ATOL)


# ---------------------------------------------------------------------------
# MemoryCell
# ---------------------------------------------------------------------------


def _set_cell_weights(cell, features, units):
    rng = _rng()
    weights = (
        rng.normal(scale=0.5, size=(features, 2 * units)),
        rng.normal(scale=0.5, size=(units, 2 * units)),
        rng.normal(scale=0.5, size=(2 * units,)),
    )
    if not cell.built:
        cell.build((None, features))
    cell.kernel.assign(weights[0].astype("float32"))
    cell.recurrent_kernel.assign(weights[1].astype("float32"))
    cell.bias.assign(weights[2].astype("float32"))
    return weights


def test_memory_cell_matches_hand_computation_and_steps_equal_rnn():
    cell = MemoryCell(3)
    weights = _set_cell_weights(cell, features=2, units=3)
    x = _rng().normal(size=(4, 6, 2)).astype("float32")
    expected = _np_memory_cell(x, *weights)

    sequence_output = _np(keras.layers.RNN(cell, return_sequences=True)(x))
    np.testing.assert_allclose(sequence_output, expected, atol=ATOL)

    # The seed's "state kept between calls", with the state held by the caller.
    state = cell.get_initial_state(batch_size=4)
    for t in range(x.shape[1]):
        output, state = cell(x[:, t], state)
        np.testing.assert_allclose(_np(output), sequence_output[:, t], atol=ATOL)


def test_memory_cell_serves_any_batch_size():
    cell = MemoryCell(3)
    for batch in (1, 5):
        x = np.ones((batch, 2), "float32")
        output, (state,) = cell(x, cell.get_initial_state(batch_size=batch))
        assert tuple(output.shape) == (batch, 3)
        assert tuple(state.shape) == (batch, 3)
    assert [tuple(v.shape) for v in cell.weights] == [(2, 6), (3, 6), (6,)]


def test_memory_cell_retains_memory_when_gate_saturates():
    cell = MemoryCell(2)
    cell.build((None, 1))
    cell.kernel.assign(np.zeros((1, 4), "float32"))
    cell.recurrent_kernel.assign(np.zeros((2, 4), "float32"))
    cell.bias.assign(np.array([30.0, 30.0, 0.0, 0.0], "float32"))
    start = np.array([[0.5, -0.25]], "float32")
    outputs = keras.layers.RNN(cell, return_sequences=True)(
        np.zeros((1, 200, 1), "float32"), initial_state=[start]
    )
    np.testing.assert_allclose(_np(outputs)[:, -1], start, atol=1e-5)


def test_stateful_rnn_split_sequence_equals_whole_and_reset_restarts():
    cell = MemoryCell(3)
    weights = _set_cell_weights(cell, features=2, units=3)
    x = _rng().normal(size=(2, 8, 2)).astype("float32")
    expected = _np_memory_cell(x, *weights)

    rnn = keras.layers.RNN(cell, return_sequences=True, stateful=True)
    first = _np(rnn(x[:, :5]))
    second = _np(rnn(x[:, 5:]))
    np.testing.assert_allclose(np.concatenate([first, second], axis=1), expected, atol=ATOL)

    rnn.reset_state()
    np.testing.assert_array_equal(_np(rnn.states[0]), np.zeros((2, 3)))
    np.testing.assert_allclose(_np(rnn(x[:, :5])), first, atol=ATOL)
    rnn.reset_states()  # Keras 3 keeps the old name as an alias.
    np.testing.assert_allclose(_np(rnn(x[:, :5])), first, atol=ATOL)


def test_memory_cell_rnn_trains():
    rng = _rng()
    x = rng.normal(size=(32, 8, 2)).astype("float32")
    # Running mean of the first feature: needs memory across steps.
    y = (np.cumsum(x[..., :1], axis=1) / np.arange(1, 9)[None, :, None]).astype("float32")
    model = keras.Sequential(
        [
            keras.Input(shape=(8, 2)),
            keras.layers.RNN(MemoryCell(8), return_sequences=True),
            keras.layers.Dense(1),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    before = model.evaluate(x, y, verbose=0)
    model.fit(x, y, epochs=3, batch_size=32, verbose=0)
    after = model.evaluate(x, y, verbose=0)
    assert after < before


# ---------------------------------------------------------------------------
# StackedNeurons, TimePooledStackedNeurons, elu_sigmoid
# ---------------------------------------------------------------------------


def _set_stack_weights(layer, features):
    rng = _rng()
    values = []
    width = features
    for dense in layer.dense_layers:
        kernel = rng.normal(size=(width, layer.units)).astype("float32")
        bias = rng.normal(size=(layer.units,)).astype("float32")
        dense.kernel.assign(kernel)
        dense.bias.assign(bias)
        values.append((kernel, bias))
        width = layer.units
    return values


def _np_stack(x, values, activation):
    for kernel, bias in values:
        x = activation(x @ kernel + bias)
    return x


@pytest.mark.parametrize("shape", [(4, 3), (2, 5, 3)], ids=["rank2", "rank3"])
def test_stacked_neurons_matches_hand_computation(shape):
    layer = StackedNeurons(5, depth=3, activation="relu")
    layer.build(shape)
    values = _set_stack_weights(layer, features=3)
    x = _rng().normal(size=shape).astype("float32")
    relu = lambda a: np.maximum(a, 0.0)  # noqa: E731
    np.testing.assert_allclose(_np(layer(x)), _np_stack(x, values, relu), atol=ATOL)
    assert layer.compute_output_shape(shape) == (*shape[:-1], 5)
    assert [w.path.split("/", 1)[1] for w in layer.weights] == [
        "dense_0/kernel",
        "dense_0/bias",
        "dense_1/kernel",
        "dense_1/bias",
        "dense_2/kernel",
        "dense_2/bias",
    ]


def test_stacked_neurons_sublayers_do_not_start_identical():
    layer = StackedNeurons(4, depth=3)
    layer.build((None, 4))
    kernels = [_np(dense.kernel) for dense in layer.dense_layers]
    assert not np.allclose(kernels[1], kernels[2])


def test_elu_sigmoid_values():
    x = np.array([-5.0, -1.0, -0.1, 0.0, 0.1, 1.0, 5.0], "float32")
    np.testing.assert_allclose(
        _np(elu_sigmoid(ops.convert_to_tensor(x))), _np_elu(x) * _np_sigmoid(x), atol=1e-6
    )


def test_elu_sigmoid_resolves_by_short_name_registered_key_and_object():
    assert get_activation("elu_sigmoid") is elu_sigmoid
    assert get_activation("cellwatch>elu_sigmoid") is elu_sigmoid
    assert get_activation(elu_sigmoid) is elu_sigmoid
    assert get_activation(keras.activations.serialize(elu_sigmoid)) is elu_sigmoid
    assert get_activation("relu") is keras.activations.relu
    by_name = StackedNeurons(3, activation="elu_sigmoid")
    by_key = StackedNeurons(3, activation="cellwatch>elu_sigmoid")
    by_object = StackedNeurons(3, activation=elu_sigmoid)
    assert by_name.activation is by_key.activation is by_object.activation is elu_sigmoid
    assert by_name.get_config() | {"name": None} == by_object.get_config() | {"name": None}
    clone = StackedNeurons.from_config(json.loads(json.dumps(by_name.get_config())))
    assert clone.activation is elu_sigmoid


def test_stacked_neurons_with_elu_sigmoid_matches_hand_computation():
    layer = StackedNeurons(3, depth=2, activation=elu_sigmoid)
    layer.build((None, 2))
    values = _set_stack_weights(layer, features=2)
    x = _rng().normal(size=(4, 2)).astype("float32")
    expected = _np_stack(x, values, lambda a: _np_elu(a) * _np_sigmoid(a))
    np.testing.assert_allclose(_np(layer(x)), expected, atol=ATOL)


def test_time_pooled_padded_batch_equals_each_sequence_alone():
    layer = TimePooledStackedNeurons(4, depth=2, activation="tanh")
    lengths = [2, 5, 3]
    rng = _rng()
    sequences = [rng.normal(size=(n, 3)).astype("float32") for n in lengths]
    padded = np.full((3, 5, 3), 7.0, "float32")  # Nonzero padding must not leak in.
    for row, sequence in enumerate(sequences):
        padded[row, : len(sequence)] = sequence
    mask = np.arange(5)[None, :] < np.array(lengths)[:, None]

    batched = _np(layer(padded, mask=mask))
    for row, sequence in enumerate(sequences):
        alone = _np(layer(sequence[None]))
        np.testing.assert_allclose(batched[row], alone[0], atol=ATOL)

    inputs = keras.Input(shape=(None, 3))
    model = keras.Model(inputs, layer(keras.layers.Masking(mask_value=7.0)(inputs)))
    np.testing.assert_allclose(_np(model(padded)), batched, atol=ATOL)


def test_time_pooled_matches_hand_computation_and_all_masked_pools_to_zeros():
    layer = TimePooledStackedNeurons(2, depth=1, activation="relu")
    layer.build((None, 3, 2))
    values = _set_stack_weights(layer, features=2)
    x = np.array([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]] * 2, "float32")
    mask = np.array([[True, True, False], [False, False, False]])
    relu = lambda a: np.maximum(a, 0.0)  # noqa: E731
    pooled = np.array([[2.0, 3.0], [0.0, 0.0]], "float32")
    actual = _np(layer(x, mask=mask))
    assert np.all(np.isfinite(actual))
    np.testing.assert_allclose(actual, _np_stack(pooled, values, relu), atol=ATOL)


# ---------------------------------------------------------------------------
# TemperatureSoftmax
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("initial", [1e-2, 0.5, 1.0, 3.0, 50.0])
def test_temperature_starts_at_initial_value(initial):
    layer = TemperatureSoftmax(initial_temperature=initial, min_temperature=1e-3)
    assert float(layer.temperature) == pytest.approx(initial, rel=1e-6)
    layer.build((None, 3))
    assert float(layer.temperature) == pytest.approx(initial, rel=1e-6)


def test_temperature_softmax_matches_hand_computation():
    layer = TemperatureSoftmax(initial_temperature=2.0, axis=1)
    x = _rng().normal(size=(2, 4, 3)).astype("float32")
    np.testing.assert_allclose(_np(layer(x)), _np_softmax(x / 2.0, axis=1), atol=ATOL)
    assert [w.name for w in layer.trainable_weights] == ["temperature_raw"]
    frozen = TemperatureSoftmax(trainable_temperature=False)
    frozen.build((None, 3))
    assert not frozen.trainable_weights
    assert [w.name for w in frozen.non_trainable_weights] == ["temperature_raw"]


def test_temperature_stays_positive_after_hard_downward_step():
    layer = TemperatureSoftmax(initial_temperature=1.0, min_temperature=1e-3)
    x = np.array([[0.0, 1.0, 2.0]], "float32")
    layer(x)
    optimizer = keras.optimizers.SGD(learning_rate=1e6)
    for step in range(3):
        with tf.GradientTape() as tape:
            # Sharpening toward the largest logit lowers the loss, so the
            # gradient pushes the temperature down, here by a huge step.
            loss = -ops.sum(ops.log(layer(x)[:, 2]))
        gradients = tape.gradient(loss, layer.trainable_variables)
        if step == 0:
            assert float(_np(gradients[0])) > 0
        optimizer.apply_gradients(zip(gradients, layer.trainable_variables, strict=True))
    temperature = float(layer.temperature)
    assert 0 < 1e-3 <= temperature < 1.1e-3
    probabilities = _np(layer(x))
    assert np.all(np.isfinite(probabilities))
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, atol=ATOL)


# ---------------------------------------------------------------------------
# NonNegativeProjection, SineEncoding, GaussianHead, IntermediateOutput
# ---------------------------------------------------------------------------


def test_non_negative_projection_matches_hand_computation():
    layer = NonNegativeProjection(BASIS)
    layer.build((None, 2))
    kernel = np.array([[1.0, -1.0], [0.5, 2.0]], "float32")
    layer.projection_kernel.assign(kernel)
    x = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]], "float32")
    coefficients = np.maximum(x @ kernel, 0.0)
    assert coefficients.min() == 0.0  # The case exercises the clipping.
    np.testing.assert_allclose(_np(layer(x)), coefficients @ np.array(BASIS), atol=ATOL)
    assert [w.name for w in layer.trainable_weights] == ["projection_kernel"]
    assert [w.name for w in layer.non_trainable_weights] == ["basis"]
    np.testing.assert_array_equal(_np(layer.basis), np.array(BASIS, "float32"))
    assert layer.get_config()["basis"] == BASIS


def test_sine_encoding_matches_hand_computation():
    layer = SineEncoding(3)
    layer.build((None, 2))
    rng = _rng()
    kernel, bias, frequency = rng.normal(size=(2, 3)), rng.normal(size=3), rng.normal(size=3)
    layer.kernel.assign(kernel.astype("float32"))
    layer.bias.assign(bias.astype("float32"))
    layer.frequency.assign(frequency.astype("float32"))
    x = rng.normal(size=(4, 2)).astype("float32")
    np.testing.assert_allclose(_np(layer(x)), np.sin(frequency * (x @ kernel + bias)), atol=ATOL)


def test_sine_encoding_default_frequency_is_one():
    layer = SineEncoding(3)
    layer.build((None, 2))
    np.testing.assert_array_equal(_np(layer.frequency), np.ones(3))


def test_gaussian_head_matches_hand_computation_and_scale_is_bounded():
    head = GaussianHead(2, min_scale=0.01)
    head.build((None, 3))
    rng = _rng()
    weights = {
        "mean_kernel": rng.normal(size=(3, 2)),
        "mean_bias": rng.normal(size=2),
        "scale_kernel": rng.normal(size=(3, 2)),
        "scale_bias": rng.normal(size=2),
    }
    for name, value in weights.items():
        getattr(head, name).assign(value.astype("float32"))
    x = rng.normal(size=(4, 3)).astype("float32")
    mean = x @ weights["mean_kernel"] + weights["mean_bias"]
    scale = 0.01 + _np_softplus(x @ weights["scale_kernel"] + weights["scale_bias"])
    np.testing.assert_allclose(_np(head(x)), np.concatenate([mean, scale], -1), atol=ATOL)

    head.scale_bias.assign(np.full(2, -1e4, "float32"))
    scale = _np(head(x))[:, 2:]
    assert np.all(scale > 0)
    np.testing.assert_allclose(scale, 0.01, rtol=1e-6)


def test_gaussian_head_kernels_do_not_start_identical():
    head = GaussianHead(2)
    head.build((None, 3))
    assert not np.allclose(_np(head.mean_kernel), _np(head.scale_kernel))


def test_intermediate_output_returns_layer_output_and_input():
    dense = keras.layers.Dense(2, kernel_initializer="ones", bias_initializer="zeros")
    wrapper = IntermediateOutput(dense)
    x = np.array([[1.0, 2.0, 3.0]], "float32")
    output, passed_through = wrapper(x)
    np.testing.assert_allclose(_np(output), [[6.0, 6.0]])
    np.testing.assert_array_equal(_np(passed_through), x)
    assert wrapper.layer is dense
    config = wrapper.get_config()
    assert config["layer"]["class_name"] == "Dense"
    snapshot = copy.deepcopy(config)
    assert IntermediateOutput.from_config(config).layer.units == 2
    assert config == snapshot


# ---------------------------------------------------------------------------
# CodebookDecoder
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(5,), (2, 3), (2, 2, 2)], ids=["rank1", "rank2", "rank3"])
def test_codebook_decoder_any_index_shape(shape):
    decoder = CodebookDecoder(CODEBOOK)
    indices = _rng().integers(0, 4, size=shape)
    np.testing.assert_array_equal(_np(decoder(indices)), np.array(CODEBOOK, "float32")[indices])
    assert not decoder.trainable_weights
    assert [w.name for w in decoder.non_trainable_weights] == ["codebook"]


def test_codebook_decoder_accepts_whole_floats():
    decoder = CodebookDecoder(CODEBOOK)
    np.testing.assert_array_equal(
        _np(decoder(np.array([[3.0, 0.0]], "float32"))), np.array(CODEBOOK, "float32")[[[3, 0]]]
    )


@pytest.mark.parametrize(
    ("codes", "message"),
    [
        (np.array([[0, 4]]), r"code 4 at position \(0, 1\).*4 entries"),
        (np.array([[0, 1], [-1, 2]]), r"code -1 at position \(1, 0\).*4 entries"),
        (np.array([1.0, 2.5], "float32"), r"code 2.5 .*not a whole number"),
    ],
    ids=["too_large", "negative", "fractional"],
)
def test_codebook_decoder_rejects_invalid_codes_eagerly(codes, message):
    decoder = CodebookDecoder(CODEBOOK)
    with pytest.raises(ValueError, match=message):
        decoder(codes)


@pytest.mark.parametrize("bad_code", [4, -1], ids=["too_large", "negative"])
def test_codebook_decoder_fails_loudly_in_compiled_graphs(bad_code):
    decoder = CodebookDecoder(CODEBOOK)
    codes = tf.constant([[0, bad_code]])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"4 entries"):
        tf.function(decoder)(codes)

    inputs = keras.Input(shape=(2,), dtype="int32")
    model = keras.Model(inputs, decoder(inputs))
    assert model.predict(np.array([[0, 1]]), verbose=0).shape == (1, 2, 2)
    with pytest.raises(tf.errors.InvalidArgumentError, match=str(bad_code)):
        model.predict(np.array([[0, bad_code]]), verbose=0)


def test_codebook_decoder_under_xla_marks_invalid_codes_with_nan():
    # XLA drops assertion ops; the layer then returns NaN rather than the
    # clamped row XLA's gather would give.
    decoder = CodebookDecoder(CODEBOOK)
    decode = tf.function(decoder, jit_compile=True)
    decoded = _np(decode(tf.constant([1, 9])))
    np.testing.assert_array_equal(decoded[0], CODEBOOK[1])
    assert np.all(np.isnan(decoded[1]))
