"""edge-toolkit converters: export models to ONNX model packages and validate them.

torch, transformers and optimum-onnx are imported lazily, inside the functions that need them.
"""

from converters.conversion import ConvertOptions, convert
from converters.input_specs import InputSpec, parse_input_specs
from converters.quantization import CalibrationOptions, QuantizeOptions, QuantizeResult, quantize
from converters.recipes import Recipe, list_recipes, load_recipe

__all__ = [
    "CalibrationOptions",
    "ConvertOptions",
    "InputSpec",
    "QuantizeOptions",
    "QuantizeResult",
    "Recipe",
    "convert",
    "list_recipes",
    "load_recipe",
    "parse_input_specs",
    "quantize",
]
