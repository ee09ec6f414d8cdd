"""Reconstruction from a fixed basis with learned non-negative coefficients."""

import keras
import numpy as np
from keras import initializers, ops


@keras.saving.register_keras_serializable(package="cellwatch")
class NonNegativeProjection(keras.layers.Layer):
    """Maps inputs to non-negative coefficients over a fixed basis and reconstructs.

    Computes `coefficients = relu(inputs @ projection_kernel)` and returns
    `coefficients @ basis`: every output is a non-negative combination of the
    rows of `basis`, e.g. known traffic profiles that a cell's load is made
    of. The basis is fixed (a non-trainable weight); only the projection is
    learned.

    Args:
        basis: Fixed basis matrix of shape `(num_basis, dim)`, as nested lists
            or a NumPy array of finite numbers, one basis vector per row.
        kernel_initializer: Initializer for `projection_kernel`.

    Call arguments:
        inputs: A tensor of rank 2 or more.

    Input shape:
        N-D tensor with shape `(batch_size, ..., features)`, N >= 2.

    Output shape:
        N-D tensor with shape `(batch_size, ..., dim)`.

    Example:

    >>> layer = NonNegativeProjection(basis=[[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    >>> ops.shape(layer(np.ones((4, 6), "float32")))
    (4, 3)
    """

    def __init__(self, basis, kernel_initializer="glorot_uniform", **kwargs):
        try:
            basis_array = np.asarray(basis, dtype="float64")
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"`basis` must be a 2-D array of numbers, received: {basis!r}"
            ) from error
        if basis_array.ndim != 2 or basis_array.size == 0:
            raise ValueError(
                "`basis` must be a non-empty 2-D array of shape (num_basis, dim), received "
                f"an array of shape: {basis_array.shape}"
            )
        if not np.all(np.isfinite(basis_array)):
            raise ValueError("`basis` must contain only finite values, received NaN or inf")
        super().__init__(**kwargs)
        self.basis_values = basis_array
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.input_spec = keras.layers.InputSpec(min_ndim=2)
        # Each position is projected on its own, as `Dense` does: a mask passes through.
        self.supports_masking = True

    @property
    def num_basis(self):
        return self.basis_values.shape[0]

    @property
    def dim(self):
        return self.basis_values.shape[1]

    def build(self, input_shape):
        features = input_shape[-1]
        if features is None:
            raise ValueError(
                "`NonNegativeProjection` needs a known feature dimension, received input "
                f"shape: {input_shape}"
            )
        self.projection_kernel = self.add_weight(
            name="projection_kernel",
            shape=(features, self.num_basis),
            initializer=self.kernel_initializer,
        )
        # A weight rather than a constant so the basis is saved with the model
        # and placed and cast like the other weights. Its values come in
        # through the initializer: a later `assign` would race with reads when
        # this build happens inside an XLA-compiled function.
        self.basis = self.add_weight(
            name="basis",
            shape=(self.num_basis, self.dim),
            initializer=lambda shape, dtype=None: ops.cast(self.basis_values, dtype),
            trainable=False,
        )
        self.input_spec = keras.layers.InputSpec(min_ndim=2, axes={-1: features})

    def call(self, inputs):
        coefficients = ops.relu(ops.matmul(inputs, self.projection_kernel))
        return ops.matmul(coefficients, self.basis)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "basis": self.basis_values.tolist(),
                "kernel_initializer": initializers.serialize(self.kernel_initializer),
            }
        )
        return config
