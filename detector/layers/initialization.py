"""Weight initialization shared by the layers that create several same-shaped weights."""

import keras


def fresh_initializer(initializer):
    """A new instance of `initializer` with the same config.

    Keras initializers are stateless: one instance (even an unseeded one) returns the same
    values on every call, so equally shaped weights sharing it would start identical and stay
    symmetric.
    """
    if not isinstance(initializer, keras.initializers.Initializer):
        return initializer
    return initializer.__class__.from_config(initializer.get_config())
