"""Quantization of model packages: dynamic and static int8, fp16, int4, and `auto` within an accuracy budget.

`quantize(package, method, options)` is the entry point; `METHODS` is the table of methods.
"""

from converters.quantization.calibration import CALIBRATION_METHODS, CalibrationOptions
from converters.quantization.entry import quantize
from converters.quantization.methods import (
    METHODS,
    Candidate,
    Method,
    QuantizeOptions,
    QuantizeResult,
)

__all__ = [
    "CALIBRATION_METHODS",
    "METHODS",
    "CalibrationOptions",
    "Candidate",
    "Method",
    "QuantizeOptions",
    "QuantizeResult",
    "quantize",
]
