"""edge-toolkit runtime: run ONNX model packages with onnxruntime.

This package imports neither torch nor transformers; converting models lives in `converters`.
"""

from toolkit.errors import BadInputError, BadModelError, EdgeError, ExportError, ProviderUnavailableError
from toolkit.generation import Generation, TextGenerator  # issue 15
from toolkit.manifest import Manifest, ModelPackage, TensorSpec, Variant
from toolkit.pipelines import (
    AudioClassifier,
    AudioEncoder,
    Classification,
    ImageClassifier,
    ModelPipeline,
    TextClassifier,
    TextEmbedding,
    load,
)
from toolkit.runner import Runner

__all__ = [
    "AudioClassifier",
    "AudioEncoder",
    "BadInputError",
    "BadModelError",
    "Classification",
    "EdgeError",
    "ExportError",
    "Generation",
    "ImageClassifier",
    "Manifest",
    "ModelPackage",
    "ModelPipeline",
    "ProviderUnavailableError",
    "Runner",
    "TensorSpec",
    "TextClassifier",
    "TextEmbedding",
    "TextGenerator",
    "Variant",
    "load",
]

__version__ = "0.1.0"
