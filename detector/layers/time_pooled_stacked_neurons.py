"""Masked mean over time followed by a stack of dense layers."""

import keras
from keras import ops

from detector.layers.stacked_neurons import StackedNeurons


@keras.saving.register_keras_serializable(package="cellwatch")
class TimePooledStackedNeurons(StackedNeurons):
    """Averages a variable-length sequence over its valid steps, then stacks dense layers.

    The mean runs over the time steps the mask marks as valid only, so a
    padded batch gives each sequence the same result it would get alone. A
    sequence with no valid step pools to zeros (not `0 / 0 = NaN`) before the
    dense stack.

    Args:
        units: Positive integer, width of every dense sublayer.
        depth: Positive integer, number of dense sublayers.
        activation: Activation applied after every sublayer; see
            `StackedNeurons`.
        use_bias: Boolean, whether the sublayers use bias vectors.
        kernel_initializer: Initializer for the sublayers' kernels.
        bias_initializer: Initializer for the sublayers' biases.

    Call arguments:
        inputs: A 3D tensor `(batch, time, features)`.
        mask: Optional boolean or 0/1 tensor `(batch, time)`; `False` marks
            padding. Taken from the Keras mask of `inputs` when not given
            (e.g. after `keras.layers.Masking`). Without a mask every step
            counts.

    Input shape:
        3D tensor with shape `(batch_size, time, features)`.

    Output shape:
        2D tensor with shape `(batch_size, units)`.

    Example:

    >>> layer = TimePooledStackedNeurons(8)
    >>> x = np.zeros((3, 5, 4), "float32")
    >>> mask = np.array([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], bool)
    >>> ops.shape(layer(x, mask=mask))
    (3, 8)
    """

    def __init__(
        self,
        units,
        depth=2,
        activation="relu",
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(
            units,
            depth=depth,
            activation=activation,
            use_bias=use_bias,
            kernel_initializer=kernel_initializer,
            bias_initializer=bias_initializer,
            **kwargs,
        )
        self.input_spec = keras.layers.InputSpec(ndim=3)

    def build(self, input_shape):
        super().build((input_shape[0], input_shape[-1]))

    def call(self, inputs, mask=None):
        if mask is None:
            pooled = ops.mean(inputs, axis=1)
        else:
            weights = ops.expand_dims(ops.cast(mask, inputs.dtype), -1)
            total = ops.sum(ops.multiply(inputs, weights), axis=1)
            # A fully masked row has total 0; dividing by max(count, 1) makes
            # it pool to zeros rather than NaN.
            count = ops.maximum(ops.sum(weights, axis=1), 1.0)
            pooled = ops.divide(total, count)
        return super().call(pooled)

    def compute_mask(self, inputs, mask=None):
        # The time axis is gone, and with it anything a mask could mark.
        return None

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.units)
