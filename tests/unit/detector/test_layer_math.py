"""The custom layers in `detector.layers` against hand-computed NumPy values, layer by layer
(the shared harness that checks them as Keras checks its own layers is
`test_layer_harness.py`).
"""

import copy
import json

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
from tests.unit.detector.layer_cases import (
    ATOL,
    BASIS,
    CODEBOOK,
    SEED,
    np_elu,
    np_memory_cell,
    np_sigmoid,
    np_softmax,
    np_softplus,
    seeded_rng,
    to_numpy,
)


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(SEED)



# ---------------------------------------------------------------------------
# ThreePointDependency
# ---------------------------------------------------------------------------


def _three_point_layer(features=2, units=3, activation=None):
    rng = seeded_rng()
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
    x = seeded_rng().normal(size=(2, 5, 2)).astype("float32")
    actual = to_numpy(layer(x))
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
        x = seeded_rng().normal(size=(3, length, 2)).astype("float32")
        np.testing.assert_allclose(to_numpy(model(x)), np.tanh(_np_three_point(x, w)), atol=ATOL)


def test_three_point_dependency_masked_left_padding_is_zero_history():
    layer, _ = _three_point_layer()
    x = seeded_rng().normal(size=(1, 3, 2)).astype("float32")
    padded = np.concatenate([np.full((1, 2, 2), 9.0, "float32"), x], axis=1)
    mask = np.array([[False, False, True, True, True]])
    np.testing.assert_allclose(to_numpy(layer(padded, mask=mask))[:, 2:], to_numpy(layer(x)),
                               atol=ATOL)


# ---------------------------------------------------------------------------
# MemoryCell
# ---------------------------------------------------------------------------


def _set_cell_weights(cell, features, units):
    rng = seeded_rng()
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
    x = seeded_rng().normal(size=(4, 6, 2)).astype("float32")
    expected = np_memory_cell(x, *weights)

    sequence_output = to_numpy(keras.layers.RNN(cell, return_sequences=True)(x))
    np.testing.assert_allclose(sequence_output, expected, atol=ATOL)

    # The seed's "state kept between calls", with the state held by the caller.
    state = cell.get_initial_state(batch_size=4)
    for t in range(x.shape[1]):
        output, state = cell(x[:, t], state)
        np.testing.assert_allclose(to_numpy(output), sequence_output[:, t], atol=ATOL)


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
    np.testing.assert_allclose(to_numpy(outputs)[:, -1], start, atol=1e-5)


def test_stateful_rnn_split_sequence_equals_whole_and_reset_restarts():
    cell = MemoryCell(3)
    weights = _set_cell_weights(cell, features=2, units=3)
    x = seeded_rng().normal(size=(2, 8, 2)).astype("float32")
    expected = np_memory_cell(x, *weights)

    rnn = keras.layers.RNN(cell, return_sequences=True, stateful=True)
    first = to_numpy(rnn(x[:, :5]))
    second = to_numpy(rnn(x[:, 5:]))
    np.testing.assert_allclose(np.concatenate([first, second], axis=1), expected, atol=ATOL)

    rnn.reset_state()
    np.testing.assert_array_equal(to_numpy(rnn.states[0]), np.zeros((2, 3)))
    np.testing.assert_allclose(to_numpy(rnn(x[:, :5])), first, atol=ATOL)
    rnn.reset_states()  # Keras 3 keeps the old name as an alias.
    np.testing.assert_allclose(to_numpy(rnn(x[:, :5])), first, atol=ATOL)


def test_memory_cell_rnn_trains():
    rng = seeded_rng()
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
    rng = seeded_rng()
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
    x = seeded_rng().normal(size=shape).astype("float32")
    relu = lambda a: np.maximum(a, 0.0)  # noqa: E731
    np.testing.assert_allclose(to_numpy(layer(x)), _np_stack(x, values, relu), atol=ATOL)
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
    kernels = [to_numpy(dense.kernel) for dense in layer.dense_layers]
    assert not np.allclose(kernels[1], kernels[2])


def test_elu_sigmoid_values():
    x = np.array([-5.0, -1.0, -0.1, 0.0, 0.1, 1.0, 5.0], "float32")
    np.testing.assert_allclose(
        to_numpy(elu_sigmoid(ops.convert_to_tensor(x))), np_elu(x) * np_sigmoid(x), atol=1e-6
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
    x = seeded_rng().normal(size=(4, 2)).astype("float32")
    expected = _np_stack(x, values, lambda a: np_elu(a) * np_sigmoid(a))
    np.testing.assert_allclose(to_numpy(layer(x)), expected, atol=ATOL)


def test_time_pooled_padded_batch_equals_each_sequence_alone():
    layer = TimePooledStackedNeurons(4, depth=2, activation="tanh")
    lengths = [2, 5, 3]
    rng = seeded_rng()
    sequences = [rng.normal(size=(n, 3)).astype("float32") for n in lengths]
    padded = np.full((3, 5, 3), 7.0, "float32")  # Nonzero padding must not leak in.
    for row, sequence in enumerate(sequences):
        padded[row, : len(sequence)] = sequence
    mask = np.arange(5)[None, :] < np.array(lengths)[:, None]

    batched = to_numpy(layer(padded, mask=mask))
    for row, sequence in enumerate(sequences):
        alone = to_numpy(layer(sequence[None]))
        np.testing.assert_allclose(batched[row], alone[0], atol=ATOL)

    inputs = keras.Input(shape=(None, 3))
    model = keras.Model(inputs, layer(keras.layers.Masking(mask_value=7.0)(inputs)))
    np.testing.assert_allclose(to_numpy(model(padded)), batched, atol=ATOL)


def test_time_pooled_matches_hand_computation_and_all_masked_pools_to_zeros():
    layer = TimePooledStackedNeurons(2, depth=1, activation="relu")
    layer.build((None, 3, 2))
    values = _set_stack_weights(layer, features=2)
    x = np.array([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]] * 2, "float32")
    mask = np.array([[True, True, False], [False, False, False]])
    relu = lambda a: np.maximum(a, 0.0)  # noqa: E731
    pooled = np.array([[2.0, 3.0], [0.0, 0.0]], "float32")
    actual = to_numpy(layer(x, mask=mask))
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
    x = seeded_rng().normal(size=(2, 4, 3)).astype("float32")
    np.testing.assert_allclose(to_numpy(layer(x)), np_softmax(x / 2.0, axis=1), atol=ATOL)
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
            assert float(to_numpy(gradients[0])) > 0
        optimizer.apply_gradients(zip(gradients, layer.trainable_variables, strict=True))
    temperature = float(layer.temperature)
    assert 0 < 1e-3 <= temperature < 1.1e-3
    probabilities = to_numpy(layer(x))
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
    np.testing.assert_allclose(to_numpy(layer(x)), coefficients @ np.array(BASIS), atol=ATOL)
    assert [w.name for w in layer.trainable_weights] == ["projection_kernel"]
    assert [w.name for w in layer.non_trainable_weights] == ["basis"]
    np.testing.assert_array_equal(to_numpy(layer.basis), np.array(BASIS, "float32"))
    assert layer.get_config()["basis"] == BASIS


def test_sine_encoding_matches_hand_computation():
    layer = SineEncoding(3)
    layer.build((None, 2))
    rng = seeded_rng()
    kernel, bias, frequency = rng.normal(size=(2, 3)), rng.normal(size=3), rng.normal(size=3)
    layer.kernel.assign(kernel.astype("float32"))
    layer.bias.assign(bias.astype("float32"))
    layer.frequency.assign(frequency.astype("float32"))
    x = rng.normal(size=(4, 2)).astype("float32")
    np.testing.assert_allclose(to_numpy(layer(x)), np.sin(frequency * (x @ kernel + bias)),
                               atol=ATOL)


def test_sine_encoding_default_frequency_is_one():
    layer = SineEncoding(3)
    layer.build((None, 2))
    np.testing.assert_array_equal(to_numpy(layer.frequency), np.ones(3))


def test_gaussian_head_matches_hand_computation_and_scale_is_bounded():
    head = GaussianHead(2, min_scale=0.01)
    head.build((None, 3))
    rng = seeded_rng()
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
    scale = 0.01 + np_softplus(x @ weights["scale_kernel"] + weights["scale_bias"])
    np.testing.assert_allclose(to_numpy(head(x)), np.concatenate([mean, scale], -1), atol=ATOL)

    head.scale_bias.assign(np.full(2, -1e4, "float32"))
    scale = to_numpy(head(x))[:, 2:]
    assert np.all(scale > 0)
    np.testing.assert_allclose(scale, 0.01, rtol=1e-6)


def test_gaussian_head_kernels_do_not_start_identical():
    head = GaussianHead(2)
    head.build((None, 3))
    assert not np.allclose(to_numpy(head.mean_kernel), to_numpy(head.scale_kernel))


def test_intermediate_output_returns_layer_output_and_input():
    dense = keras.layers.Dense(2, kernel_initializer="ones", bias_initializer="zeros")
    wrapper = IntermediateOutput(dense)
    x = np.array([[1.0, 2.0, 3.0]], "float32")
    output, passed_through = wrapper(x)
    np.testing.assert_allclose(to_numpy(output), [[6.0, 6.0]])
    np.testing.assert_array_equal(to_numpy(passed_through), x)
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
    indices = seeded_rng().integers(0, 4, size=shape)
    np.testing.assert_array_equal(to_numpy(decoder(indices)),
                                  np.array(CODEBOOK, "float32")[indices])
    assert not decoder.trainable_weights
    assert [w.name for w in decoder.non_trainable_weights] == ["codebook"]


def test_codebook_decoder_accepts_whole_floats():
    decoder = CodebookDecoder(CODEBOOK)
    np.testing.assert_array_equal(
        to_numpy(decoder(np.array([[3.0, 0.0]], "float32"))),
        np.array(CODEBOOK, "float32")[[[3, 0]]])


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
    decoded = to_numpy(decode(tf.constant([1, 9])))
    np.testing.assert_array_equal(decoded[0], CODEBOOK[1])
    assert np.all(np.isnan(decoded[1]))

