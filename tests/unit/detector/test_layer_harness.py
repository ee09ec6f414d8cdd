"""The custom layers in `detector.layers` under a shared harness.

It checks every layer for what Keras' own `run_layer_test`
(`keras/src/testing/test_case.py`) checks: config and registered-name
serialization round trips, building from a shape alone, symbolic and eager calls
(output shapes and dtypes, `compute_output_shape` and `compute_output_spec`
against the actual output), the losses a call adds, masking support as declared,
a `fit` step, and the `mixed_float16` dtype policy; plus `.keras` save/load, bad
constructor arguments, gradient flow and batch-size independence. The cases are in
`layer_cases.py`; each layer's arithmetic is checked by hand in `test_layer_math.py`.
"""

import copy
import json
import re
import warnings

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
)
from tests.unit.detector.layer_cases import (
    ATOL,
    CASES,
    SEED,
    seeded_rng,
    to_numpy,
)


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(SEED)



def _flat(structure):
    return keras.tree.flatten(structure)


def _perturb_trainable(layer):
    # Moves every trainable weight away from its initializer's values so a
    # load that silently re-initialized would be caught.
    rng = seeded_rng()
    for variable in layer.trainable_variables:
        noise = rng.normal(scale=0.1, size=variable.shape).astype("float32")
        variable.assign(to_numpy(variable) + noise)


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
        np.testing.assert_array_equal(to_numpy(got), to_numpy(want))


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_gradients_reach_every_trainable_weight(case):
    layer = case.make()
    x = case.inputs(3)
    outputs = layer(x)
    # Random output weights: a plain sum would have zero gradient through a
    # softmax, whose outputs always sum to one.
    rng = seeded_rng()
    projections = [rng.normal(size=o.shape).astype("float32") for o in _flat(outputs)]
    assert layer.trainable_variables
    with tf.GradientTape() as tape:
        outputs = layer(x)
        loss = sum(ops.sum(o * p) for o, p in zip(_flat(outputs), projections, strict=True))
    gradients = tape.gradient(loss, layer.trainable_variables)
    for variable, gradient in zip(layer.trainable_variables, gradients, strict=True):
        assert gradient is not None, variable.path
        assert np.any(to_numpy(tf.convert_to_tensor(gradient)) != 0), variable.path


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
    assert all(float(to_numpy(loss)) > 0 for loss in layer.losses[:3])


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
            np.testing.assert_array_equal(to_numpy(probe.seen), mask)
        else:
            assert probe.seen is None
    # The padded steps change nothing: each row's valid part gives what it gives alone.
    for row, length in enumerate(lengths):
        alone = _flat(layer(x[row : row + 1, time - length :]))
        for output, output_alone in zip(_flat(outputs), alone, strict=True):
            got = to_numpy(output)[row]
            got = got[time - length :] if case.keeps_time else got
            np.testing.assert_allclose(got, to_numpy(output_alone)[0], atol=ATOL,
                                       err_msg=f"row {row}")


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_fit_step_changes_every_trainable_weight(case):
    x = case.inputs(8)
    inputs = keras.Input(shape=x.shape[1:], dtype=str(x.dtype))
    layer = case.make()
    model = keras.Model(inputs, layer(inputs))
    rng = seeded_rng()
    targets = [rng.normal(size=o.shape).astype("float32") for o in _flat(model(x))]
    trainable = [to_numpy(v).copy() for v in layer.trainable_variables]
    frozen = [to_numpy(v).copy() for v in layer.non_trainable_variables]
    single = len(targets) == 1
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse" if single else ["mse"] * 2)
    history = model.fit(
        x, targets[0] if single else tuple(targets), batch_size=4, epochs=1, verbose=0
    )
    assert np.all(np.isfinite(history.history["loss"]))
    assert trainable
    for variable, before in zip(layer.trainable_variables, trainable, strict=True):
        assert np.all(np.isfinite(to_numpy(variable))), variable.path
        assert np.any(to_numpy(variable) != before), variable.path
    for variable, before in zip(layer.non_trainable_variables, frozen, strict=True):
        np.testing.assert_array_equal(to_numpy(variable), before, err_msg=variable.path)


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
    assert all(np.all(np.isfinite(to_numpy(o))) for o in _flat(outputs))
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

