"""Decoder from integer codes to codebook vectors."""

import keras
import numpy as np
from keras import ops


@keras.saving.register_keras_serializable(package="cellwatch")
class CodebookDecoder(keras.layers.Layer):
    """Replaces every integer code by its row of a codebook.

    Indices of any shape `(...)` become vectors of shape `(..., dim)`, row
    `i` of the codebook for code `i` (a plain `take` along the codebook's
    first axis, so no index grid has to be built).

    Codes must be whole numbers in `[0, codebook_size)`. Negative codes are
    rejected rather than counted from the end, since a negative code is a
    corrupt record, not a request for the last entry. Float codes are
    accepted when they are whole numbers. An invalid code fails loudly:

    - Eagerly, `call` raises `ValueError` naming the first offending code,
      its position and the codebook size.
    - In a TensorFlow graph (`tf.function`, `fit`, `predict`), an assertion
      raises `InvalidArgumentError` with the same facts.
    - Where an assertion cannot run (XLA drops assertion ops), the rows of
      invalid codes decode to NaN instead of silently clamped values. To keep
      Keras from choosing XLA for a model containing this layer,
      `supports_jit` is `False`.

    Args:
        codebook: Codebook matrix of shape `(codebook_size, dim)`, as nested
            lists or a NumPy array of finite numbers.
        trainable_codebook: Boolean, whether the codebook is learned.

    Call arguments:
        inputs: Integer (or whole-number float) tensor of codes, any shape.

    Input shape:
        Arbitrary.

    Output shape:
        `input_shape + (dim,)`.

    Example:

    >>> decoder = CodebookDecoder(codebook=[[0.0, 0.0], [1.0, 2.0], [3.0, 4.0]])
    >>> ops.convert_to_numpy(decoder(np.array([[2, 0, 1]])))
    array([[[3., 4.],
            [0., 0.],
            [1., 2.]]], dtype=float32)
    """

    def __init__(self, codebook, trainable_codebook=False, **kwargs):
        try:
            codebook_array = np.asarray(codebook, dtype="float64")
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"`codebook` must be a 2-D array of numbers, received: {codebook!r}"
            ) from error
        if codebook_array.ndim != 2 or codebook_array.size == 0:
            raise ValueError(
                "`codebook` must be a non-empty 2-D array of shape (codebook_size, dim), "
                f"received an array of shape: {codebook_array.shape}"
            )
        if not np.all(np.isfinite(codebook_array)):
            raise ValueError("`codebook` must contain only finite values, received NaN or inf")
        if not isinstance(trainable_codebook, bool):
            raise ValueError(
                f"`trainable_codebook` must be a boolean, received: {trainable_codebook!r}"
            )
        super().__init__(**kwargs)
        self.codebook_values = codebook_array
        self.trainable_codebook = trainable_codebook
        self.supports_jit = False

    @property
    def codebook_size(self):
        return self.codebook_values.shape[0]

    @property
    def dim(self):
        return self.codebook_values.shape[1]

    def build(self, input_shape):
        # The values come in through the initializer rather than a later
        # `assign`, which would race with reads when the first call (and so
        # this build) happens inside an XLA-compiled function.
        self.codebook = self.add_weight(
            name="codebook",
            shape=(self.codebook_size, self.dim),
            initializer=lambda shape, dtype=None: ops.cast(self.codebook_values, dtype),
            trainable=self.trainable_codebook,
        )

    def call(self, inputs):
        if keras.backend.is_float_dtype(inputs.dtype):
            whole = ops.equal(ops.floor(inputs), inputs)
        else:
            whole = ops.ones_like(inputs, dtype="bool")
        valid = ops.logical_and(
            whole,
            ops.logical_and(ops.greater_equal(inputs, 0), ops.less(inputs, self.codebook_size)),
        )
        concrete = _concrete_value(inputs)
        if concrete is not None:
            _raise_for_invalid(concrete, ops.convert_to_numpy(valid), self.codebook_size)
            return ops.take(self.codebook, ops.cast(inputs, "int32"), axis=0)
        # Graph mode: invalid codes are swapped for 0 so the lookup itself
        # cannot fail or wrap around first, then both fail loudly below.
        indices = ops.where(valid, ops.cast(inputs, "int32"), 0)
        indices = _assert_valid_in_graph(indices, inputs, valid, self.codebook_size)
        decoded = ops.take(self.codebook, indices, axis=0)
        return ops.where(ops.expand_dims(valid, -1), decoded, float("nan"))

    def compute_output_shape(self, input_shape):
        return (*input_shape, self.dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "codebook": self.codebook_values.tolist(),
                "trainable_codebook": self.trainable_codebook,
            }
        )
        return config


def _raise_for_invalid(codes, valid, codebook_size):
    if valid.all():
        return
    position = tuple(int(axis) for axis in np.argwhere(~valid)[0])
    code = codes[position].item()
    reason = (
        "is not a whole number"
        if np.issubdtype(codes.dtype, np.floating) and not float(code).is_integer()
        else f"is outside [0, {codebook_size})"
    )
    raise ValueError(
        f"`CodebookDecoder` received code {code!r} at position {position}, which {reason}; "
        f"the codebook has {codebook_size} entries (valid codes are 0..{codebook_size - 1})."
    )


# TensorFlow-specific code is kept to the two helpers below. Keras has no
# backend-agnostic way to tell eager execution from graph tracing, nor an op
# that raises from inside a graph; `tf.debugging.Assert` is the one way to make
# a compiled `fit`/`predict` stop with a message rather than return garbage.
def _concrete_value(tensor):
    """The NumPy value of `tensor` when executing eagerly, else `None`."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if not tf.executing_eagerly():
            return None
        return ops.convert_to_numpy(tensor)
    # Other backends' tracers cannot be converted; only the NaN guard applies.
    try:
        return ops.convert_to_numpy(tensor)
    except Exception:
        return None


def _assert_valid_in_graph(indices, codes, valid, codebook_size):
    if keras.backend.backend() != "tensorflow":
        return indices
    import tensorflow as tf

    invalid_codes = tf.boolean_mask(codes, tf.logical_not(valid))
    check = tf.debugging.Assert(
        tf.reduce_all(valid),
        [
            "CodebookDecoder received invalid codes (first shown):",
            invalid_codes,
            f"the codebook has {codebook_size} entries (valid codes are whole numbers "
            f"0..{codebook_size - 1}).",
        ],
        summarize=5,
    )
    with tf.control_dependencies([check]):
        return tf.identity(indices)
