"""Recurrent memory cell with a retention gate."""

import numbers

import keras
from keras import initializers, ops

from detector.layers.activations import get_activation


@keras.saving.register_keras_serializable(package="cellwatch")
class MemoryCell(keras.layers.Layer):
    """Memory cell whose state is carried by the caller, with a retention gate.

    Processes one time step. With `U = units`, input `x` and previous state
    `h`:

    ```
    z = recurrent_activation(x @ kernel[:, :U] + h @ recurrent_kernel[:, :U] + bias[:U])
    c = activation(x @ kernel[:, U:] + h @ recurrent_kernel[:, U:] + bias[U:])
    h_new = z * h + (1 - z) * c
    ```

    and returns `(h_new, [h_new])`. The retention gate `z` lets the cell keep
    its memory over long sequences instead of overwriting it every step, as
    the plain `tanh(x K + h R)` update would.

    The state is an input and an output of `call`, never a weight, so a
    single cell serves any batch size. Wrap it in `keras.layers.RNN` to run
    it over sequences; `keras.layers.RNN(..., stateful=True)` keeps the state
    between calls for a fixed batch of streams, and `reset_state()` on that
    RNN layer clears it.

    Args:
        units: Positive integer, dimensionality of the state and output.
        activation: Activation of the candidate state. Default: `"tanh"`.
        recurrent_activation: Activation of the retention gate.
            Default: `"sigmoid"`.
        use_bias: Boolean, whether the cell uses a bias vector.
        kernel_initializer: Initializer for the `kernel` weights matrix,
            applied to the inputs.
        recurrent_initializer: Initializer for the `recurrent_kernel` weights
            matrix, applied to the state.
        bias_initializer: Initializer for the bias vector.

    Call arguments:
        inputs: A 2D tensor `(batch, features)`, one time step.
        states: A list or tuple holding one 2D tensor `(batch, units)`, the
            state after the previous step.
        training: Python boolean; unused, accepted for the RNN API.

    Input shape:
        2D tensor with shape `(batch_size, features)` and a state of shape
        `(batch_size, units)`.

    Output shape:
        2D tensor with shape `(batch_size, units)`, and the new state as a
        one-element list of the same shape.

    Example:

    >>> rnn = keras.layers.RNN(MemoryCell(8), return_sequences=True)
    >>> ops.shape(rnn(np.zeros((4, 20, 3), "float32")))
    (4, 20, 8)
    """

    def __init__(
        self,
        units,
        activation="tanh",
        recurrent_activation="sigmoid",
        use_bias=True,
        kernel_initializer="glorot_uniform",
        recurrent_initializer="orthogonal",
        bias_initializer="zeros",
        **kwargs,
    ):
        if not isinstance(units, numbers.Integral) or isinstance(units, bool) or units <= 0:
            raise ValueError(f"`units` must be a positive integer, received: {units!r}")
        if not isinstance(use_bias, bool):
            raise ValueError(f"`use_bias` must be a boolean, received: {use_bias!r}")
        super().__init__(**kwargs)
        self.units = int(units)
        self.activation = get_activation(activation, "activation")
        self.recurrent_activation = get_activation(recurrent_activation, "recurrent_activation")
        self.use_bias = use_bias
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.recurrent_initializer = initializers.get(recurrent_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.state_size = self.units
        self.output_size = self.units

    def build(self, input_shape):
        features = input_shape[-1]
        if features is None:
            raise ValueError(
                f"`MemoryCell` needs a known feature dimension, received input shape: {input_shape}"
            )
        # Gate and candidate share one matmul per operand; columns [:U] feed
        # the retention gate and [U:] the candidate.
        self.kernel = self.add_weight(
            name="kernel",
            shape=(features, 2 * self.units),
            initializer=self.kernel_initializer,
        )
        self.recurrent_kernel = self.add_weight(
            name="recurrent_kernel",
            shape=(self.units, 2 * self.units),
            initializer=self.recurrent_initializer,
        )
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias",
                shape=(2 * self.units,),
                initializer=self.bias_initializer,
            )
        else:
            self.bias = None

    def call(self, inputs, states, training=False):
        previous = states[0] if isinstance(states, (list, tuple)) else states
        mixed = ops.add(
            ops.matmul(inputs, self.kernel), ops.matmul(previous, self.recurrent_kernel)
        )
        if self.bias is not None:
            mixed = ops.add(mixed, self.bias)
        retain = self.recurrent_activation(mixed[:, : self.units])
        candidate = self.activation(mixed[:, self.units :])
        new_state = ops.add(
            ops.multiply(retain, previous), ops.multiply(ops.subtract(1.0, retain), candidate)
        )
        new_states = [new_state] if isinstance(states, (list, tuple)) else new_state
        return new_state, new_states

    def get_initial_state(self, batch_size=None):
        return [ops.zeros((batch_size, self.units), dtype=self.compute_dtype)]

    def compute_output_shape(self, inputs_shape, states_shape=None):
        output_shape = (inputs_shape[0], self.units)
        return output_shape, [output_shape]

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "units": self.units,
                "activation": keras.activations.serialize(self.activation),
                "recurrent_activation": keras.activations.serialize(self.recurrent_activation),
                "use_bias": self.use_bias,
                "kernel_initializer": initializers.serialize(self.kernel_initializer),
                "recurrent_initializer": initializers.serialize(self.recurrent_initializer),
                "bias_initializer": initializers.serialize(self.bias_initializer),
            }
        )
        return config
