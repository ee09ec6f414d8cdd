"""The forecaster's forward pass for one reading per stream, outside Keras.

:func:`forecast` advances ThreePointDependency, the MemoryCell, StackedNeurons and the
Gaussian head by one reading, with the weights as plain arrays (:class:`StepParams`, taken
from a trained model by :func:`detector.model.step_params`). Its arithmetic equals the Keras
forecaster run over the same sequences (tested to 1e-5).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from detector.array_ops import ACTIVATIONS, UNIT_BOUNDED_ACTIVATIONS
from detector.exact_product import ExactKernel


@dataclasses.dataclass(frozen=True)
class StepParams:
    """The forecaster's weights as plain arrays, in the order the step uses them."""

    clock_kernel: np.ndarray | None
    clock_bias: np.ndarray | None
    clock_frequency: np.ndarray | None
    dependency_kernel: np.ndarray  # [3 * D, U]: rows for inputs t, t-1, t-2
    dependency_bias: np.ndarray
    dependency_activation: str
    # [U + M, 2M]: the cell's kernel rows, then its recurrent kernel rows; retention gate
    # columns, then candidate columns. One product instead of two.
    gate_kernel: np.ndarray
    gate_bias: np.ndarray
    memory_activation: str
    memory_recurrent_activation: str
    stack: tuple[tuple[np.ndarray, np.ndarray], ...]
    stack_activation: str
    head_kernel: np.ndarray  # [H, 2F]: mean columns, then scale columns
    head_bias: np.ndarray
    min_scale: float

    @property
    def uses_clock(self) -> bool:
        return self.clock_kernel is not None

    @property
    def input_width(self) -> int:
        return self.dependency_kernel.shape[0] // 3

    @property
    def memory_units(self) -> int:
        return self.gate_kernel.shape[1] // 2

    @property
    def channels(self) -> int:
        return self.head_kernel.shape[1] // 2


def forecast(ops, params: StepParams, model_input, previous_1, previous_2, memory):
    """One step of the forecaster for a batch of streams.

    Args:
        model_input: ``[B, D]`` this reading's model input (clipped values, encoded clock).
        previous_1, previous_2: ``[B, D]`` the inputs of the two readings before it.
        memory: ``[B, M]`` the memory cell's state after the previous reading.

    Returns:
        ``(new_memory [B, M], change [B, F], scale [B, F])``: the forecast of the next
        reading as a change from this one, and its standard deviation (normalized units).
    """
    return recur(ops, params, dependency_features(
        ops, params, model_input, previous_1, previous_2), memory)


def dependency_features(ops, params: StepParams, model_input, previous_1, previous_2):
    """ThreePointDependency's output ``[B, U]``: a function of three readings' inputs alone,
    so a stream's readings of a whole batch can have theirs in one product before the
    recurrence runs (:meth:`detector.step.StreamingStep.prepare`)."""
    window = ops.concat([model_input, previous_1, previous_2], axis=-1)
    return ACTIVATIONS[params.dependency_activation](
        ops, ops.matmul(window, params.dependency_kernel) + params.dependency_bias)


def recur(ops, params: StepParams, features, memory):
    """The recurrent part of :func:`forecast`: the memory cell, the dense stack and the head,
    from the dependency ``features [B, U]`` and the ``memory [B, M]``."""
    units = params.memory_units
    gates = ops.matmul(ops.concat([features, memory], axis=-1), params.gate_kernel) \
        + params.gate_bias
    retain = ACTIVATIONS[params.memory_recurrent_activation](ops, gates[:, :units])
    candidate = ACTIVATIONS[params.memory_activation](ops, gates[:, units:])
    new_memory = retain * memory + (1.0 - retain) * candidate
    hidden = new_memory
    stack_activation = ACTIVATIONS[params.stack_activation]
    for kernel, bias in params.stack:
        hidden = stack_activation(ops, ops.matmul(hidden, kernel) + bias)
    head = ops.matmul(hidden, params.head_kernel) + params.head_bias
    channels = params.channels
    scale = params.min_scale + ops.softplus(head[:, channels:])
    return new_memory, head[:, :channels], scale


def with_exact_kernels(params: StepParams, clip: float) -> StepParams:
    """``params`` with every kernel converted once for :func:`detector.exact_product`.

    Inputs that are bounded by construction get a fixed unit: the clock's harmonics and its
    sine encoding (|x| <= 1), the clipped values (``clip``), and, when the activations
    bound them, the dependency features and the memory (a convex mix of its candidates).
    """
    window_bound = max(float(clip), 1.0)
    bounded_gates = (params.dependency_activation in UNIT_BOUNDED_ACTIVATIONS
                     and params.memory_activation in UNIT_BOUNDED_ACTIVATIONS
                     and params.memory_recurrent_activation == "sigmoid")
    return dataclasses.replace(
        params,
        clock_kernel=None if params.clock_kernel is None
        else ExactKernel.of(params.clock_kernel, input_bound=1.0),
        dependency_kernel=ExactKernel.of(params.dependency_kernel, input_bound=window_bound),
        gate_kernel=ExactKernel.of(params.gate_kernel,
                                   input_bound=1.0 if bounded_gates else None),
        # The first dense layer reads the memory, bounded as the gates' inputs are.
        stack=tuple((ExactKernel.of(kernel, input_bound=1.0 if index == 0 and bounded_gates
                                    else None), bias)
                    for index, (kernel, bias) in enumerate(params.stack)),
        head_kernel=ExactKernel.of(params.head_kernel),
    )


def _check_finite(name: str, array: np.ndarray) -> None:
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name}: model weights contain NaN or infinity")


def check_params(params: StepParams) -> None:
    """Raises ValueError for weights no step could run with (non-finite values)."""
    for field in dataclasses.fields(params):
        value = getattr(params, field.name)
        if isinstance(value, np.ndarray):
            _check_finite(field.name, value)
    for i, (kernel, bias) in enumerate(params.stack):
        _check_finite(f"stack[{i}].kernel", kernel)
        _check_finite(f"stack[{i}].bias", bias)
    if not math.isfinite(params.min_scale) or params.min_scale <= 0:
        raise ValueError(f"min_scale must be > 0, received {params.min_scale}")
