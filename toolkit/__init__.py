"""edge-toolkit runtime: run ONNX model packages with onnxruntime.

This package imports neither torch nor transformers; converting models lives in `converters`.
"""

from toolkit.decoding import Generation
from toolkit.errors import BadInputError, BadModelError, EdgeError, ExportError, ProviderUnavailableError
from toolkit.manifest import Manifest, ModelPackage, TensorSpec, Variant
from toolkit.pipelines import (
    AudioClassifier,
    AudioEncoder,
    Classification,
    ImageClassifier,
    ModelPipeline,
    Pipeline,
    TextClassifier,
    TextEmbedding,
    load,
)
from toolkit.runner import Runner
from toolkit.tasks.detect import Detection, ObjectDetector
from toolkit.tasks.generate import TextGenerator
from toolkit.tasks.image_text import ImageTextEmbedding, ZeroShotLabel
from toolkit.tasks.rerank import RankedDocument, Reranker
from toolkit.tasks.segment import SemanticSegmenter
from toolkit.tasks.text2text import Seq2SeqGenerator
from toolkit.tasks.token_classify import TokenClassifier
from toolkit.tasks.transcribe import SpeechRecognizer, Transcript

__all__ = [
    "AudioClassifier",
    "AudioEncoder",
    "BadInputError",
    "BadModelError",
    "Classification",
    "Detection",
    "EdgeError",
    "ExportError",
    "Generation",
    "ImageClassifier",
    "ImageTextEmbedding",
    "Manifest",
    "ModelPackage",
    "ModelPipeline",
    "ObjectDetector",
    "Pipeline",
    "ProviderUnavailableError",
    "RankedDocument",
    "Reranker",
    "Runner",
    "SemanticSegmenter",
    "Seq2SeqGenerator",
    "SpeechRecognizer",
    "TensorSpec",
    "TextClassifier",
    "TextEmbedding",
    "TextGenerator",
    "TokenClassifier",
    "Transcript",
    "Variant",
    "ZeroShotLabel",
    "load",
]

__version__ = "0.1.0"
