"""Output head predicting a Gaussian per channel."""

import math
import numbers

import keras
from keras import initializers, ops

from detector.layers.initialization import fresh_initializer


@keras.saving.register_keras_serializable(package="cellwatch")
class GaussianHead(keras.layers.Layer):
    """Predicts the mean and scale of the next reading for every channel.

    Computes
    `mean = inputs @ mean_kernel + mean_bias` and
    `scale = min_scale + softplus(inputs @ scale_kernel + scale_bias)`,
    and returns `concatenate([mean, scale], axis=-1)`: the first `channels`
    outputs are means, the last `channels` are scales. The scale is bounded
    below by `min_scale` so likelihoods and z-scores computed from it never
    divide by zero.

    Args:
        channels: Positive integer, number of channels predicted.
        min_scale: Float > 0, lower bound of the predicted scale.
        kernel_initializer: Initializer for `mean_kernel` and
            `scale_kernel`.
        bias_initializer: Initializer for `mean_bias` and `scale_bias`.

    Call arguments:
        inputs: A tensor of rank 2 or more.

    Input shape:
        N-D tensor with shape `(batch_size, ..., features)`, N >= 2.

    Output shape:
        N-D tensor with shape `(batch_size, ..., 2 * channels)`.

    Example:

    >>> head = GaussianHead(channels=3)
    >>> prediction = head(np.zeros((8, 16), "float32"))
    >>> mean, scale = prediction[:, :3], prediction[:, 3:]
    >>> ops.shape(prediction)
    (8, 6)
    """

    def __init__(
        self,
        channels,
        min_scale=1e-3,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        **kwargs,
    ):
        if (
            not isinstance(channels, numbers.Integral)
            or isinstance(channels, bool)
            or channels <= 0
        ):
            raise ValueError(f"`channels` must be a positive integer, received: {channels!r}")
        if (
            not isinstance(min_scale, numbers.Real)
            or isinstance(min_scale, bool)
            or not math.isfinite(min_scale)
            or min_scale <= 0
        ):
            raise ValueError(
                f"`min_scale` must be a finite number greater than 0, received: {min_scale!r}"
            )
        super().__init__(**kwargs)
        self.channels = int(channels)
        self.min_scale = float(min_scale)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.input_spec = keras.layers.InputSpec(min_ndim=2)
        self.supports_masking = True

    def build(self, input_shape):
        features = input_shape[-1]
        if features is None:
            raise ValueError(
                "`GaussianHead` needs a known feature dimension, received input shape: "
                f"{input_shape}"
            )
        self.mean_kernel = self.add_weight(
            name="mean_kernel",
            shape=(features, self.channels),
            initializer=fresh_initializer(self.kernel_initializer),
        )
        self.mean_bias = self.add_weight(
            name="mean_bias",
            shape=(self.channels,),
            initializer=fresh_initializer(self.bias_initializer),
        )
        self.scale_kernel = self.add_weight(
            name="scale_kernel",
            shape=(features, self.channels),
            initializer=fresh_initializer(self.kernel_initializer),
        )
        self.scale_bias = self.add_weight(
            name="scale_bias",
            shape=(self.channels,),
            initializer=fresh_initializer(self.bias_initializer),
        )
        self.input_spec = keras.layers.InputSpec(min_ndim=2, axes={-1: features})

    def call(self, inputs):
        mean = ops.add(ops.matmul(inputs, self.mean_kernel), self.mean_bias)
        scale_logit = ops.add(ops.matmul(inputs, self.scale_kernel), self.scale_bias)
        scale = ops.add(self.min_scale, ops.softplus(scale_logit))
        return ops.concatenate([mean, scale], axis=-1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 2 * self.channels)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "channels": self.channels,
                "min_scale": self.min_scale,
                "kernel_initializer": initializers.serialize(self.kernel_initializer),
                "bias_initializer": initializers.serialize(self.bias_initializer),
            }
        )
        return config

