"""Custom activations for cellwatch layers and a resolver for their names."""

import keras
from keras import ops

PACKAGE = "cellwatch"


@keras.saving.register_keras_serializable(package=PACKAGE, name="elu_sigmoid")
def elu_sigmoid(x):
    """ELU gated by a sigmoid: `elu(x) * sigmoid(x)`.

    Smooth everywhere, close to zero for very negative inputs and close to the
    identity for large positive ones, so it behaves like a soft ReLU whose
    negative side does not saturate at -1 the way plain ELU does.

    Args:
        x: Input tensor.

    Returns:
        A tensor of the same shape and dtype as `x`.

    Example:

    >>> float(elu_sigmoid(keras.ops.convert_to_tensor(0.0)))
    0.0
    """
    return ops.multiply(ops.elu(x), ops.sigmoid(x))


def get_activation(identifier, argument="activation"):
    """Resolves an activation identifier, including cellwatch's own names.

    `keras.activations.get` only looks strings up among Keras' built-in
    activations; a registered custom function is found there only through its
    serialized dict form. Layers in this package accept, in addition, the
    registered key (`"cellwatch>elu_sigmoid"`), any key registered with
    `keras.saving.register_keras_serializable` or present in a
    `keras.saving.custom_object_scope`, and the short name of a cellwatch
    activation (`"elu_sigmoid"`). Nothing global is modified.

    Args:
        identifier: `None`, a string, a serialized activation dict or a
            callable.
        argument: Name of the constructor argument being resolved, used in
            the error message.

    Returns:
        The activation function (`keras.activations.linear` for `None`).

    Raises:
        ValueError: If the identifier cannot be resolved to a callable.
    """
    try:
        return keras.activations.get(identifier)
    except (ValueError, TypeError) as error:
        if isinstance(identifier, str):
            for name in (identifier, f"{PACKAGE}>{identifier}"):
                found = keras.saving.get_registered_object(name)
                # Registered layer classes are callable too; only functions qualify.
                if callable(found) and not isinstance(found, type):
                    return found
        raise ValueError(
            f"`{argument}` must be the name of a Keras or cellwatch activation or a "
            f"callable, received: {identifier!r}"
        ) from error
