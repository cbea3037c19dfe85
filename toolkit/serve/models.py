"""The served-model adapters: what each model answers to, and how a request becomes a `Job` for its engine.

Names and versions
    Each package serves its ONNX model under the manifest's name (`RawModel`); the package's variants are that
    model's versions, named exactly as the variants are (``fp32``, ``int8``, ``fp16`` ...), because a variant
    name says what it is and Triton-style numbers would not. A request without a version gets ``fp32`` (or the
    first variant when a package has no fp32). A package whose task serves a text pipeline model
    (`Task.served_outputs`: ``embed``, ``classify``) also serves ``<name>-text`` (`PipelineModel`): BYTES
    ``text`` [N] in, tokenized on the server, and the task's results out (``embedding`` FP32 [N, dim]; ``label``
    BYTES [N] and ``probabilities`` FP32 [N, labels]), post-processed by the task exactly as its pipeline does.
    It shares the raw model's session and queue, so both batch together. Tasks that serve images
    (`ServesImages`) serve ``<name>-image`` (`ImagePipelineModel`); encoder-decoder packages serve a decoding
    model beside the raw encoder (`toolkit.serve.decoding`). A generator package serves one model,
    `GeneratorModel`, under its name (one variant: its version): ready, metadata and the repository index answer
    for it as for any model, its text goes through the generate routes (OpenAI's and Triton's), and a KServe
    ``infer`` on it is a 400 naming them. Which models a package serves is the registry's question
    (`toolkit.serve.registry`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import numpy as np

from toolkit.errors import BadInputError
from toolkit.manifest import TensorSpec
from toolkit.preprocess import MAX_IMAGE_PIXELS, open_image
from toolkit.runner import Runner
from toolkit.serve.engine import Engine, Feeds, ModelEngine, Outputs
from toolkit.serve.errors import ModelNotFoundError, WrongRouteError
from toolkit.serve.tensors import InferenceRequest, v2_datatype
from toolkit.tasks import ServedTensor, Task
from toolkit.tasks.base import ServesImages
from toolkit.tasks.generate import TextGenerator
from toolkit.tasks.modality import TextModality

__all__ = [
    "GeneratorModel",
    "ImagePipelineModel",
    "Job",
    "PipelineModel",
    "RawModel",
    "ServedModel",
    "TensorMetadata",
    "bytes_input",
    "generator_models",
    "metadata_of",
    "model_named",
    "request_texts",
]


@dataclass(frozen=True)
class TensorMetadata:
    """A tensor as the protocol describes it: name, v2 datatype, shape with -1 for dynamic dims."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        """The metadata object of the v2 model metadata response."""
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


def _metadata(name: str, dtype: str, shape: Sequence[int | str]) -> TensorMetadata:
    return TensorMetadata(
        name, v2_datatype(dtype), tuple(d if isinstance(d, int) and d > 0 else -1 for d in shape)
    )


@dataclass(frozen=True)
class Job:
    """A request turned into feeds for the engine, and how to turn the engine's outputs into the answer.

    `tokens` is what counts against ``max_request_tokens`` when the feeds do not show it (None: count the
    feeds); `cancel` is called once the request is answered or abandoned (a decode in flight stops early).
    """

    feeds: Feeds
    rows: int
    outputs: tuple[str, ...]
    finish: Callable[[Outputs], Outputs] = field(default=lambda outputs: outputs)
    tokens: int | None = None
    cancel: Callable[[], None] = field(default=lambda: None)
    # more runs of the same request whose shapes differ from `feeds`' (images of other sizes): each is queued
    # on its own, and `finish` gets every run's outputs concatenated along the batch, `feeds`' first
    more_runs: tuple[Feeds, ...] = ()


class ServedModel:
    """A model as the protocol sees it: name, version, tensor metadata, and `prepare` (request -> Job).

    `prepare_off_loop`: its `prepare` decodes media (images, WAV files), so the server runs it on a worker thread
    whatever the body's size."""

    platform = "onnxruntime_onnx"
    prepare_off_loop: ClassVar[bool] = False
    # False: its requests never reach the batching scheduler (a generator decodes on its own step-level worker)
    scheduled: ClassVar[bool] = True

    def __init__(
        self,
        name: str,
        engine: ModelEngine,
        inputs: Sequence[TensorMetadata],
        outputs: Sequence[TensorMetadata],
    ) -> None:
        self.name = name
        self.version = engine.version
        self.engine = engine
        self.inputs = tuple(inputs)
        self.outputs = tuple(outputs)

    @property
    def batched(self) -> bool:
        """Whether the model has a batch dim: a symbolic first dim shared by every input and output."""
        return self.engine.batch_dim is not None

    def requested_outputs(self, request: InferenceRequest) -> tuple[str, ...]:
        """The output names the request asks for (all when it names none); unknown ones are a BadInputError."""
        known = [o.name for o in self.outputs]
        names = tuple(o.name for o in request.outputs) or tuple(known)
        unknown = [n for n in names if n not in known]
        if unknown:
            raise BadInputError(
                f"model '{self.name}' has no output '{unknown[0]}'; it gives {', '.join(repr(n) for n in known)}"
            )
        return names

    def check_inferable(self) -> None:
        """Raise WrongRouteError (400) when KServe's ``infer`` does not run this model, before its body is read."""

    def prepare(self, request: InferenceRequest) -> Job:
        """Check the request against this model and turn it into a `Job`."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, version={self.version!r})"


class RawModel(ServedModel):
    """The package's ONNX model as it is: the request's tensors are the model's inputs.

    `value_ranges` holds the inclusive [low, high] each integer input may take (token ids: the embedding
    table); a value outside is a 400, where onnxruntime would read a negative id from the table's end.
    `task` is the package's task, for routes that speak its own protocol over this engine (``/v1/rerank``).
    """

    engine: Engine

    def __init__(
        self,
        engine: Engine,
        value_ranges: Mapping[str, tuple[int, int]] | None = None,
        task: Task[Any] | None = None,
    ) -> None:
        runner = engine.runner
        super().__init__(
            engine.name,
            engine,
            [_metadata(s.name, s.dtype, s.shape) for s in runner.inputs],
            [_metadata(s.name, s.dtype, s.shape) for s in runner.outputs],
        )
        self.value_ranges = dict(value_ranges or {})
        self.task = task

    def prepare(self, request: InferenceRequest) -> Job:
        """Check names, datatypes, ranks, fixed dims and shared dims; the inputs become the feeds."""
        given = {i.name: i for i in request.inputs}
        expected = [m.name for m in self.inputs]
        unknown = [n for n in given if n not in expected]
        missing = [n for n in expected if n not in given]
        if unknown or missing:
            problem = f"unknown input '{unknown[0]}'" if unknown else f"missing input '{missing[0]}'"
            raise BadInputError(
                f"model '{self.name}': {problem}; it takes {', '.join(repr(n) for n in expected)}"
            )
        feeds = {}
        for meta in self.inputs:
            tensor = given[meta.name]
            where = f"input '{meta.name}'"
            if tensor.datatype != meta.datatype:
                raise BadInputError(
                    f"{where}: expected datatype {meta.datatype}, got {tensor.datatype}; send it as {meta.datatype}"
                )
            if len(tensor.shape) != len(meta.shape) or any(
                want != -1 and want != have for want, have in zip(meta.shape, tensor.shape, strict=False)
            ):
                raise BadInputError(
                    f"{where}: expected shape {list(meta.shape)} (-1: any size), got {list(tensor.shape)}"
                )
            if 0 in tensor.shape[1 if self.batched else 0 :]:  # an empty batch has its own message below
                raise BadInputError(
                    f"{where}: shape {list(tensor.shape)} has an empty dimension; send at least one element per dimension"
                )
            _check_range(where, tensor.data, self.value_ranges.get(meta.name))
            feeds[meta.name] = tensor.data
        self.engine.dim_sizes(feeds)
        rows = self.engine.rows(feeds)
        if self.batched and rows < 1:
            raise BadInputError(
                f"model '{self.name}': the batch is empty (first dim 0); send at least one row"
            )
        return Job(feeds, rows, self.requested_outputs(request))


def _check_range(where: str, data: np.ndarray, value_range: tuple[int, int] | None) -> None:
    if value_range is None or data.size == 0 or data.dtype.kind not in "iu":
        return
    low, high = value_range
    smallest, largest = int(data.min()), int(data.max())
    if smallest < low or largest > high:
        bad = smallest if smallest < low else largest
        raise BadInputError(
            f"{where}: value {bad} is outside the model's range [{low}, {high}] (token ids index a table of "
            f"{high + 1}); send ids from the model's tokenizer"
        )


def bytes_input(model: ServedModel, request: InferenceRequest, name: str, what: str) -> np.ndarray:
    """The request's one BYTES input `name` (shape [N] or [N, 1]) flattened to [N]; `what` says what its
    elements are in the error messages."""
    if len(request.inputs) != 1 or request.inputs[0].name != name:
        names = ", ".join(repr(i.name) for i in request.inputs)
        raise BadInputError(f"model '{model.name}' takes one input '{name}' (BYTES [N], {what}), got {names}")
    tensor = request.inputs[0]
    if tensor.datatype != "BYTES":
        raise BadInputError(
            f"input '{name}': expected datatype BYTES, got {tensor.datatype}; send {what} as BYTES"
        )
    if not (len(tensor.shape) == 1 or (len(tensor.shape) == 2 and tensor.shape[1] == 1)):
        raise BadInputError(f"input '{name}': expected shape [N] or [N, 1], got {list(tensor.shape)}")
    if tensor.data.size == 0:
        raise BadInputError(f"input '{name}' is empty; send at least one element ({what})")
    return tensor.data.reshape(-1)


def request_texts(model: ServedModel, request: InferenceRequest) -> list[str]:
    """The request's one input ``text`` (BYTES [N] or [N, 1], UTF-8) as strings; anything else is a BadInputError."""
    data = bytes_input(model, request, "text", "UTF-8 texts")
    try:
        return [item.decode("utf-8") for item in data]
    except UnicodeDecodeError:
        raise BadInputError("input 'text': an element is not valid UTF-8; send UTF-8 text") from None


class PipelineModel(ServedModel):
    """A ``<name>-text`` model: BYTES texts in, tokenized on the server, the task's results out.

    What comes out is the task's own (`Task.served_outputs` and `Task.serve`), the same post-processing its
    pipeline applies; it shares the raw model's engine, so both batch together.
    """

    platform = "edge_text_pipeline"
    engine: Engine

    def __init__(self, task: Task[TextModality], engine: Engine) -> None:
        outputs = [metadata_of(t) for t in task.served_outputs(engine.outputs)]
        super().__init__(f"{engine.name}-text", engine, [TensorMetadata("text", "BYTES", (-1,))], outputs)
        self.task = task

    def prepare(self, request: InferenceRequest) -> Job:
        """Tokenize the texts (padded to their own longest); `finish` applies the task's post-processing."""
        outputs = self.requested_outputs(request)
        texts = request_texts(self, request)
        feeds = self.task.data.feeds(texts)
        return Job(feeds, len(texts), outputs, lambda raw: self.task.serve(raw, feeds))


def _images(model: ServedModel, request: InferenceRequest) -> list[bytes]:
    if len(request.inputs) != 1 or request.inputs[0].name != "image":
        names = ", ".join(repr(i.name) for i in request.inputs)
        raise BadInputError(
            f"model '{model.name}' takes one input 'image' (BYTES [N], encoded files), got {names}"
        )
    tensor = request.inputs[0]
    if tensor.datatype != "BYTES" or tensor.data.size == 0:
        raise BadInputError("input 'image': send at least one encoded image file (JPEG, PNG, ...) as BYTES")
    return [bytes(item) for item in tensor.data.reshape(-1)]


class ImagePipelineModel(ServedModel):
    """A ``<name>-image`` model: encoded image files (BYTES) in, decoded and preprocessed on the server, the
    task's results out (`serve_images` of the detect and image-text tasks: detections JSON, embeddings)."""

    platform = "edge_image_pipeline"

    prepare_off_loop = True

    def __init__(self, task: Task[Any], engine: Engine, max_image_pixels: int = MAX_IMAGE_PIXELS) -> None:
        if not isinstance(task, ServesImages):
            raise TypeError(f"task '{task.name}' has no serve_images; it cannot be an image model")
        outputs = [metadata_of(t) for t in task.served_outputs(engine.outputs)]
        super().__init__(f"{engine.name}-image", engine, [TensorMetadata("image", "BYTES", (-1,))], outputs)
        self.serve_images = task.serve_images
        self.max_image_pixels = max_image_pixels

    def prepare(self, request: InferenceRequest) -> Job:
        """Decode (each image's declared size checked against --max-image-pixels from its header first) and
        preprocess the images; `finish` applies the task's post-processing."""
        outputs = self.requested_outputs(request)
        images = [
            open_image(blob, self.max_image_pixels, f"input 'image' element {index}")
            for index, blob in enumerate(_images(self, request))
        ]
        runs, finish = self.serve_images(images)
        return Job(runs[0], len(images), outputs, finish, more_runs=tuple(runs[1:]))


def _generate_routes_only(name: str) -> WrongRouteError:
    return WrongRouteError(
        f"model '{name}' is a generator, which KServe infer does not run; send its text to POST /v1/completions, "
        f"/v1/chat/completions or /v2/models/{name}/generate"
    )


@dataclass
class _GenerateRoutesEngine:
    """The `ModelEngine` face of a generator: the batching scheduler never runs it (its model refuses KServe's
    infer before a job exists, and is not `scheduled`), so each job it would get is answered with that refusal."""

    name: str
    version: str
    runner: Runner
    batch_dim: str | None = None
    merge: bool = False
    inputs: tuple[TensorSpec, ...] = ()
    requests_per_run: int | None = 1

    @property
    def label(self) -> tuple[str, str]:
        """(model, version), for metrics and thread names."""
        return (self.name, self.version)

    def run_many(self, jobs: Sequence[Feeds]) -> list[Outputs | BaseException]:
        """Each job's refusal (the generate routes run a generator)."""
        return [_generate_routes_only(self.name) for _ in jobs]


class GeneratorModel(ServedModel):
    """A generator package as a served model, under the package's name at the variant it serves: what its
    generate routes take and give as Triton's generate extension describes them (``text_input`` BYTES in,
    ``text_output`` BYTES out); the generators' service (`toolkit.serve.continuous`) decodes its requests."""

    platform = "edge_generator"
    scheduled = False

    def __init__(self, name: str, version: str, generator: TextGenerator) -> None:
        super().__init__(
            name,
            _GenerateRoutesEngine(name, version, generator.runner),
            [TensorMetadata("text_input", "BYTES", (1,))],
            [TensorMetadata("text_output", "BYTES", (-1,))],
        )
        self.generator = generator

    def check_inferable(self) -> None:
        """Always a 400 naming the generate routes."""
        raise _generate_routes_only(self.name)

    def prepare(self, request: InferenceRequest) -> Job:
        """Never a job: a 400 naming the generate routes."""
        raise _generate_routes_only(self.name)


def generator_models(models: Iterable[ServedModel]) -> list[GeneratorModel]:
    """The generators among `models`, in their order."""
    return [model for model in models if isinstance(model, GeneratorModel)]


def metadata_of(tensor: ServedTensor) -> TensorMetadata:
    return TensorMetadata(tensor.name, tensor.datatype, tensor.shape)


_Model = TypeVar("_Model")


def model_named(models: Mapping[str, _Model], name: str, kind: str) -> _Model:
    """The `kind` model (``embedding``, ``rerank``) a route's request names; a 404 listing them otherwise."""
    model = models.get(name)
    if model is None:
        article = "an" if kind[0] in "aeiou" else "a"
        raise ModelNotFoundError(
            f"model {name!r} is not {article} {kind} model served here; {kind} models: {', '.join(models) or 'none'}"
        )
    return model
