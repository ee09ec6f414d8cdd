"""The custom layers' shared test material: the layer cases the harness runs, seeded inputs,
and NumPy references of the activations and the memory cell.

Kept apart from the tests (``test_layer_harness.py`` runs every case through what Keras'
own ``run_layer_test`` checks, ``test_layer_math.py`` checks each layer's arithmetic by
hand), so both read one definition of each case and reference.
"""


import dataclasses
from collections.abc import Callable

import keras
import numpy as np
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

SEED = 1234
ATOL = 1e-5


def seeded_rng():
    return np.random.default_rng(SEED)


def to_numpy(tensor):
    return ops.convert_to_numpy(tensor)


def np_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def np_softplus(x):
    return np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0.0)


def np_elu(x):
    return np.where(x > 0, x, np.expm1(np.minimum(x, 0.0)))


def np_softmax(x, axis=-1):
    shifted = np.exp(x - x.max(axis=axis, keepdims=True))
    return shifted / shifted.sum(axis=axis, keepdims=True)


def np_memory_cell(x, kernel, recurrent_kernel, bias, h0=None):
    """The spec's memory cell update, looped over time. Returns all states."""
    units = recurrent_kernel.shape[0]
    h = np.zeros((x.shape[0], units)) if h0 is None else h0
    outputs = []
    for t in range(x.shape[1]):
        mixed = x[:, t] @ kernel + h @ recurrent_kernel + bias
        retain = np_sigmoid(mixed[:, :units])
        candidate = np.tanh(mixed[:, units:])
        h = retain * h + (1.0 - retain) * candidate
        outputs.append(h)
    return np.stack(outputs, axis=1)


# ---------------------------------------------------------------------------
# The layer cases the harness runs (test_layer_harness.py)
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
    return lambda batch: seeded_rng().normal(size=(batch, *shape)).astype("float32")


def _float_sequences(features):
    return lambda batch, time: seeded_rng().normal(size=(batch, time, features)).astype("float32")


def _codes(batch):
    return seeded_rng().integers(0, len(CODEBOOK), size=(batch, 3)).astype("int32")


def _code_sequences(batch, time):
    return seeded_rng().integers(0, len(CODEBOOK), size=(batch, time)).astype("int32")


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

