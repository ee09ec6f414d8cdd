"""Keras 3 layers and activations of the cellwatch forecasting model."""

from detector.layers.activations import elu_sigmoid, get_activation
from detector.layers.codebook_decoder import CodebookDecoder
from detector.layers.gaussian_head import GaussianHead
from detector.layers.intermediate_output import IntermediateOutput
from detector.layers.memory_cell import MemoryCell
from detector.layers.non_negative_projection import NonNegativeProjection
from detector.layers.sine_encoding import SineEncoding
from detector.layers.stacked_neurons import StackedNeurons
from detector.layers.temperature_softmax import TemperatureSoftmax
from detector.layers.three_point_dependency import ThreePointDependency
from detector.layers.time_pooled_stacked_neurons import TimePooledStackedNeurons

__all__ = [
    "CodebookDecoder",
    "GaussianHead",
    "IntermediateOutput",
    "MemoryCell",
    "NonNegativeProjection",
    "SineEncoding",
    "StackedNeurons",
    "TemperatureSoftmax",
    "ThreePointDependency",
    "TimePooledStackedNeurons",
    "elu_sigmoid",
    "get_activation",
]
