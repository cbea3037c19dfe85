"""The model registry: which served models each package offers, by name and version.

The registry asks each package's task family what it serves (`_FAMILY_SERVES`): a single-pass task every
variant's raw model (`RawModel`, the ONNX graph as it is) and its text and image pipeline models when it has them
(`PipelineModel`, `ImagePipelineModel`); an encoder-decoder every variant's raw encoder and its decoding pipeline
(`DecodingModel`); a generator one variant (the first of ``--variant`` it has, else fp32) as a `GeneratorModel`,
whose text the generate routes serve (`toolkit.serve.openai`, `toolkit.serve.triton`). So every package answers
to readiness, metadata, metrics, limits and shutdown the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolkit.errors import BadInputError
from toolkit.inspect import op_types
from toolkit.manifest import FP32_VARIANT, ModelPackage
from toolkit.preprocess import MAX_IMAGE_PIXELS
from toolkit.providers import ProviderConfig
from toolkit.runner import Runner
from toolkit.serve.decoding import DecodeEngine, DecodingModel
from toolkit.serve.engine import BATCH_COUPLED_OPS, Engine, ModelEngine
from toolkit.serve.errors import ModelNotFoundError
from toolkit.serve.models import GeneratorModel, ImagePipelineModel, PipelineModel, RawModel, ServedModel
from toolkit.tasks import Task, family_of, pipeline_class, task_for
from toolkit.tasks.base import Family, ServesDecoding, ServesImages
from toolkit.tasks.encoder_decoder import DecodeLimits
from toolkit.tasks.generate import TextGenerator
from toolkit.tasks.modality import TextModality

__all__ = ["LoadOptions", "ModelRegistry"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadOptions:
    """How packages are loaded: providers, onnxruntime threads, which variants (empty: all), thread spinning, and
    what one request to a served pipeline may ask for: image pixels (``NAME-image``) and the decoding limits of
    ``NAME-audio`` / ``NAME-text`` (`DecodeLimits`)."""

    config: ProviderConfig | None = None
    threads: int | None = None
    variants: tuple[str, ...] = ()
    spinning: bool = False
    max_image_pixels: int = MAX_IMAGE_PIXELS
    decode_limits: DecodeLimits = field(default_factory=DecodeLimits)

    def __post_init__(self) -> None:
        if self.max_image_pixels < 1:
            raise BadInputError(f"max_image_pixels must be at least 1, got {self.max_image_pixels}")


def _version_order(version: str) -> tuple[bool, str]:
    return (version != FP32_VARIANT, version)


class ModelRegistry:
    """Served models by name and version; a request without a version gets the model's default."""

    def __init__(self, models: Iterable[ServedModel]) -> None:
        self._models: dict[str, dict[str, ServedModel]] = {}
        for model in models:
            versions = self._models.setdefault(model.name, {})
            if model.version in versions:
                raise BadInputError(
                    f"two packages serve model '{model.name}' version '{model.version}'; "
                    "serve one of them, or give one package another name"
                )
            versions[model.version] = model
        if not self._models:
            raise BadInputError("no models to serve; pass at least one model package directory")

    @classmethod
    def load(cls, paths: Sequence[str | Path], options: LoadOptions | None = None) -> ModelRegistry:
        """Open every package (all checked before any session is created), then build the served models."""
        options = options or LoadOptions()
        packages = [ModelPackage.open(path) for path in paths]
        plan = []
        for package in packages:
            variants = _FAMILY_SERVES[family_of(package)].variants(package, options)
            for variant in variants:
                package.model_path(variant)  # a missing file fails here, before any session exists
            plan.append((package, sorted(variants, key=_version_order)))
        names = [p.manifest.name for p, _ in plan]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise BadInputError(
                f"several packages are named '{duplicates[0]}'; serve one of them, or rename one in its edge.json"
            )
        models: list[ServedModel] = []
        for package, variants in plan:
            models.extend(_package_models(package, variants, options))
        return cls(models)

    def get(self, name: str, version: str | None = None) -> ServedModel:
        """The model `name` at `version` (default: fp32 or its first); ModelNotFoundError (404) otherwise."""
        versions = self._models.get(name)
        if versions is None:
            known = ", ".join(sorted(self._models))
            raise ModelNotFoundError(f"model '{name}' is not served here; this server has: {known}")
        if version is None or version == "":
            return versions[self.versions(name)[0]]
        if version not in versions:
            raise ModelNotFoundError(
                f"model '{name}' has no version '{version}'; it has: {', '.join(self.versions(name))}"
            )
        return versions[version]

    def names(self) -> tuple[str, ...]:
        """Served model names, in load order."""
        return tuple(self._models)

    def versions(self, name: str) -> tuple[str, ...]:
        """A model's versions, the default (fp32) first."""
        return tuple(sorted(self._models[name], key=_version_order))

    def __iter__(self) -> Iterator[ServedModel]:
        for name in self._models:
            for version in self.versions(name):
                yield self._models[name][version]

    def engines(self) -> tuple[ModelEngine, ...]:
        """Every distinct engine the batching scheduler runs (a raw model and its text model share one; a
        generator decodes on its own worker, `toolkit.serve.continuous`)."""
        unique: dict[int, ModelEngine] = {}
        for model in self:
            if model.scheduled:
                unique.setdefault(id(model.engine), model.engine)
        return tuple(unique.values())


def _value_ranges(package: ModelPackage, task: Task[Any]) -> dict[str, tuple[int, int]]:
    """The inclusive range of each integer input the manifest records (token ids: the embedding table)."""
    ranges = {spec.name: spec.value_range for spec in package.manifest.inputs if spec.value_range is not None}
    if isinstance(task.data, TextModality):
        # packages converted before ranges were recorded: the tokenizer's vocabulary bounds the ids
        ranges.setdefault("input_ids", (0, task.data.tokenizer.vocab_size - 1))
    return ranges


def _engine(name: str, variant: str, runner: Runner, task: Task[Any]) -> Engine:
    """The variant's batching engine: text inputs padded under their attention mask, never merged when the
    graph has `BATCH_COUPLED_OPS`."""
    inputs = {spec.name: spec for spec in runner.inputs}
    pad_values: dict[str, int | float] = {}
    pad_dims: tuple[str, ...] = ()
    if isinstance(task.data, TextModality) and "attention_mask" in inputs:
        pad_values = {"input_ids": task.data.tokenizer.pad_id}
        pad_dims = tuple(d for d in inputs["attention_mask"].shape if isinstance(d, str))
    coupled = sorted(op_types(runner.path) & BATCH_COUPLED_OPS)
    if coupled:
        log.info("model %s %s has %s: requests run as sent, never merged", name, variant, coupled[0])
    return Engine(name, variant, runner, pad_values, pad_dims, merge=not coupled)


def _variants(package: ModelPackage, options: LoadOptions) -> list[str]:
    """Every variant of the package that `options.variants` names (all when it names none); none is an error."""
    variants = [v for v in package.manifest.variants if not options.variants or v in options.variants]
    if not variants:
        raise BadInputError(
            f"package '{package.path}' has none of the variants {', '.join(options.variants)} "
            f"(it has {', '.join(package.manifest.variants)}); drop --variant or create one with `edge quantize`"
        )
    return variants


def _generator_variant(package: ModelPackage, options: LoadOptions) -> list[str]:
    """A generator's one served variant: the first of `options.variants` it has, else fp32."""
    return [next((v for v in options.variants if v in package.manifest.variants), FP32_VARIANT)]


def _raw_model(package: ModelPackage, task: Task[Any], variant: str, options: LoadOptions) -> RawModel:
    """The variant's ONNX model as it is, over its own batching engine."""
    runner = Runner(
        package.model_path(variant), config=options.config, threads=options.threads, spinning=options.spinning
    )
    engine = _engine(package.manifest.name, variant, runner, task)
    return RawModel(engine, _value_ranges(package, task), task)


def _pipeline_models(
    package: ModelPackage, task: Task[Any], variant: str, options: LoadOptions
) -> list[ServedModel]:
    """A single-pass task's raw model, and its text (``NAME-text``) and image (``NAME-image``) models when it
    serves them."""
    raw = _raw_model(package, task, variant, options)
    models: list[ServedModel] = [raw]
    if not task.served_outputs(raw.engine.outputs):
        return models
    if isinstance(task.data, TextModality):
        models.append(PipelineModel(task, raw.engine))
    if isinstance(task, ServesImages):
        models.append(ImagePipelineModel(task, raw.engine, options.max_image_pixels))
    return models


def _decoding_models(
    package: ModelPackage, task: Task[Any], variant: str, options: LoadOptions
) -> list[ServedModel]:
    """An encoder-decoder's raw encoder, and its decoding model (``NAME-<suffix>``) over the encoder's runner."""
    raw = _raw_model(package, task, variant, options)
    engine = raw.engine
    pipeline = pipeline_class(package)(package, engine.runner)
    if not isinstance(pipeline, ServesDecoding):
        raise TypeError(f"task '{package.manifest.task}' has no decoding pipeline to serve")
    name = f"{package.manifest.name}-{pipeline.decoding_face().suffix}"
    return [
        raw,
        DecodingModel(DecodeEngine(name, engine.version, pipeline, engine.runner, options.decode_limits)),
    ]


def _generator_models(
    package: ModelPackage, task: Task[Any], variant: str, options: LoadOptions
) -> list[ServedModel]:
    """A generator as one served model under the package's name (no raw model: its KV-cache graph is decoded
    step by step, never run as sent)."""
    runner = Runner(package.model_path(variant), config=options.config, threads=options.threads)
    return [GeneratorModel(package.manifest.name, variant, TextGenerator(package, runner))]


@dataclass(frozen=True)
class _Serves:
    """What a task family serves of a package: which variants, and the served models of each."""

    variants: Callable[[ModelPackage, LoadOptions], list[str]]
    models: Callable[[ModelPackage, Task[Any], str, LoadOptions], list[ServedModel]]


_FAMILY_SERVES: dict[Family, _Serves] = {
    Family.SINGLE_PASS: _Serves(_variants, _pipeline_models),
    Family.ENCODER_DECODER: _Serves(_variants, _decoding_models),
    Family.GENERATOR: _Serves(_generator_variant, _generator_models),
}


def _package_models(
    package: ModelPackage, variants: Sequence[str], options: LoadOptions
) -> list[ServedModel]:
    task = task_for(package)
    family_models = _FAMILY_SERVES[family_of(package)].models
    return [model for variant in variants for model in family_models(package, task, variant, options)]
