"""Task pipelines over a `Runner`: preprocessing in, task-shaped results out.

Each pipeline is a `Runner` plus its task (`toolkit.tasks`), and loads itself typed:
``TextEmbedding.load(path, threads=2).embed(texts)``; loading another task's package is a BadModelError.
`load(path)` is the dynamic entry: the pipeline of the package's task from the registry (`ModelPipeline`,
the raw model, for a task without one or a package lacking what its task needs, such as an audio model with
a spectrogram front end).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from toolkit.manifest import FP32_VARIANT, ModelPackage
from toolkit.preprocess import (
    AudioInput,
    Classification,
    ImageInput,
    TextTokenizer,
    open_image,
    pool,
    preprocess_audio,
    preprocess_image,
    read_wav,
)
from toolkit.providers import ProviderConfig
from toolkit.runner import Runner
from toolkit.tasks import Pipeline, pipeline_class, pipelines
from toolkit.tasks.audio_classify import AudioClassifier
from toolkit.tasks.audio_features import AudioEncoder
from toolkit.tasks.classify import TextClassifier
from toolkit.tasks.embed import TextEmbedding
from toolkit.tasks.features import ModelPipeline
from toolkit.tasks.image_classify import ImageClassifier

__all__ = [
    "PIPELINES",
    "AudioClassifier",
    "AudioEncoder",
    "AudioInput",
    "Classification",
    "ImageClassifier",
    "ImageInput",
    "ModelPipeline",
    "Pipeline",
    "TextClassifier",
    "TextEmbedding",
    "TextTokenizer",
    "load",
    "open_image",
    "pipeline_class",
    "pool",
    "preprocess_audio",
    "preprocess_image",
    "read_wav",
]

# task -> its pipeline class, from the task registry
PIPELINES: dict[str, type[Pipeline[Any]]] = pipelines()


def load(
    path: str | Path,
    providers: str | Sequence[str] | None = None,
    *,
    variant: str = FP32_VARIANT,
    threads: int | None = None,
    strict: bool = False,
    config: ProviderConfig | None = None,
) -> Pipeline[Any]:
    """The pipeline for the package's task, on a `Runner` over `variant` (GPU options in `config`)."""
    package = ModelPackage.open(path)
    runner = Runner(package.model_path(variant), providers, threads=threads, strict=strict, config=config)
    return pipeline_class(package)(package, runner)
