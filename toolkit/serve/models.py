"""The served models: what each package answers to, how a request becomes feeds, and how feeds batch.

Names and versions
    Each package serves its ONNX model under the manifest's name; the package's variants are that
    model's versions, named exactly as the variants are (``fp32``, ``int8``, ``fp16`` ...), because a
    variant name says what it is and Triton-style numbers would not. A request without a version gets
    ``fp32`` (or the first variant when a package has no fp32). A package whose task serves a text
    pipeline model (`Task.served_outputs`: ``embed``, ``classify``) also serves ``<name>-text``: BYTES
    ``text`` [N] in, tokenized on the server, and the task's results out (``embedding`` FP32 [N, dim];
    ``label`` BYTES [N] and ``probabilities`` FP32 [N, labels]), post-processed by the task exactly as its
    pipeline does. It shares the raw model's session and queue, so both batch together. Encoder-decoder
    packages (``transcribe``, ``text2text``) serve a decoding model beside the raw encoder:
    `toolkit.serve.seq2seq` (``<name>-audio``, ``<name>-text``).

Batching (`Engine`)
    Requests are concatenated along axis 0, when every input and output has the same symbolic first
    dim (the batch); otherwise each request runs alone. Other dims that differ are padded only where
    padding cannot change the answer: for text packages with an ``attention_mask``, the dims of that
    mask are padded (``input_ids`` with the tokenizer's pad id, the rest with 0) and outputs with the
    same dim are cut back per request. Anything else is never zero-padded (a model without a mask would
    see the zeros): requests whose other dims differ go into separate runs of the same batch. Padded
    runs are also split by length, so padding never costs more than `PADDING_SLACK` of a run's work.
    Models with `BATCH_COUPLED_OPS` (dynamic-int8 variants) are never merged: with one activation scale
    per tensor, a request's answer would depend on its batch-mates. If a
    merged run fails (say one request holds an out-of-range token id), its requests run one by one so
    only the bad one gets the error.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from toolkit.errors import BadInputError, EdgeError
from toolkit.inspect import op_types
from toolkit.manifest import FP32_VARIANT, ModelPackage, TensorSpec
from toolkit.preprocess import MAX_IMAGE_PIXELS, PADDING_SLACK, open_image, padding_groups
from toolkit.providers import ProviderConfig
from toolkit.runner import Runner
from toolkit.serve.errors import ModelNotFoundError
from toolkit.serve.protocol import InferenceRequest, v2_datatype
from toolkit.tasks import ServedTensor, Task, task_for
from toolkit.tasks.base import ServesImages
from toolkit.tasks.encoder_decoder import DecodeLimits
from toolkit.tasks.modality import TextModality

__all__ = [
    "BATCH_COUPLED_OPS",
    "PADDING_SLACK",
    "Engine",
    "Job",
    "LoadOptions",
    "ModelEngine",
    "ModelRegistry",
    "PipelineModel",
    "RawModel",
    "ServedModel",
    "TensorMetadata",
    "TextPiece",
    "bytes_input",
    "request_texts",
    "text_pieces",
]

log = logging.getLogger(__name__)


# Operators whose result for one row depends on the other rows of the tensor: dynamic quantization picks
# one activation scale per tensor. A model holding any of them is never merged (a request's answer must
# not depend on its batch-mates), so a dynamic-int8 variant serves every request as sent.
BATCH_COUPLED_OPS = frozenset({"DynamicQuantizeLinear", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM"})

Feeds = Mapping[str, np.ndarray]
Outputs = dict[str, np.ndarray]


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
class TextPiece:
    """Some rows of a text request, padded to their own longest: the feeds, and the rows' places in the request."""

    feeds: Feeds
    rows: tuple[int, ...]


def text_pieces(
    text: TextModality, encodings: Sequence[tuple[list[int], list[int]]], max_rows: int
) -> list[TextPiece]:
    """A request's token rows (ids, type ids) split by length (`padding_groups`), each piece padded alone: the
    scheduler merges pieces of like length across requests, where one padded batch would pad every row to the
    request's longest."""
    pieces = []
    for group in padding_groups([len(ids) for ids, _ in encodings], max_rows=max_rows):
        padded = text.tokenizer.pad([encodings[i] for i in group])
        feeds = {k: v for k, v in padded.items() if k in text.input_names}
        pieces.append(TextPiece(feeds, tuple(group)))
    return pieces


# -- the engine: one runner, batched ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Slot:
    """Where one request sits in a merged batch: its rows and the sizes of its padded dims."""

    offset: int
    rows: int
    sizes: Mapping[str, int]


class Engine:
    """One `Runner` and how requests merge for it: concatenated on the batch dim, padded where safe."""

    requests_per_run: int | None = None  # requests batch freely

    def __init__(
        self,
        name: str,
        version: str,
        runner: Runner,
        pad_values: Mapping[str, int | float] | None = None,
        pad_dims: Iterable[str] = (),
        *,
        merge: bool = True,
    ) -> None:
        self.name = name
        self.version = version
        self.runner = runner
        self.inputs = runner.inputs
        self.outputs = runner.outputs
        self.batch_dim = self._batch_dim()
        self.merge = merge and self.batch_dim is not None
        self.pad_values = dict(pad_values or {})
        self.pad_dims = self._safe_pad_dims(frozenset(pad_dims))

    @property
    def label(self) -> tuple[str, str]:
        """(model, version), for metrics and thread names."""
        return (self.name, self.version)

    def _batch_dim(self) -> str | None:
        firsts = {spec.shape[0] if spec.shape else None for spec in (*self.inputs, *self.outputs)}
        if len(firsts) == 1:
            (first,) = firsts
            if isinstance(first, str):
                return first
        log.info(
            "model %s: inputs and outputs share no symbolic batch dim; requests run one at a time", self.name
        )
        return None

    def _safe_pad_dims(self, dims: frozenset[str]) -> frozenset[str]:
        """Drop padding when an output has a dynamic dim the inputs do not name (it could not be cut back)."""
        if not dims or self.batch_dim is None:
            return frozenset()
        named = {d for spec in self.inputs for d in spec.shape if isinstance(d, str)}
        for spec in self.outputs:
            unknown = [d for d in spec.shape[1:] if isinstance(d, str) and d not in named]
            if unknown:
                log.info(
                    "model %s: output %s has dim %s no input names; no padding",
                    self.name,
                    spec.name,
                    unknown[0],
                )
                return frozenset()
        return dims - {self.batch_dim}

    def dim_sizes(self, feeds: Feeds) -> dict[str, int]:
        """Each symbolic dim's size in `feeds`; a BadInputError when two inputs disagree on one."""
        sizes: dict[str, int] = {}
        seen: dict[str, str] = {}
        for spec in self.inputs:
            array = feeds[spec.name]
            for dim, size in zip(spec.shape, array.shape, strict=True):
                if not isinstance(dim, str):
                    continue
                if dim in sizes and sizes[dim] != size:
                    raise BadInputError(
                        f"input '{spec.name}': dimension '{dim}' is {size} but input '{seen[dim]}' has {sizes[dim]}; "
                        "inputs sharing a dimension must agree"
                    )
                sizes[dim] = size
                seen[dim] = spec.name
        return sizes

    def rows(self, feeds: Feeds) -> int:
        """The request's batch size (1 when the model has no batch dim)."""
        if self.batch_dim is None:
            return 1
        return int(feeds[self.inputs[0].name].shape[0])

    def _group_key(self, feeds: Feeds) -> tuple[tuple[int, ...], ...]:
        """Requests with equal keys can share one run: every dim but the batch and the padded ones agrees."""
        return tuple(
            tuple(
                size
                for axis, (dim, size) in enumerate(zip(spec.shape, feeds[spec.name].shape, strict=True))
                if axis > 0 and dim not in self.pad_dims
            )
            for spec in self.inputs
        )

    def _merge(self, jobs: Sequence[Feeds]) -> tuple[dict[str, np.ndarray], list[_Slot]]:
        slots = []
        offset = 0
        for feeds in jobs:
            rows = self.rows(feeds)
            sizes = self.dim_sizes(feeds)
            slots.append(_Slot(offset, rows, {d: s for d, s in sizes.items() if d in self.pad_dims}))
            offset += rows
        merged = {}
        for spec in self.inputs:
            arrays = [feeds[spec.name] for feeds in jobs]
            shape = (offset, *(max(a.shape[axis] for a in arrays) for axis in range(1, arrays[0].ndim)))
            batch = np.full(shape, self.pad_values.get(spec.name, 0), dtype=arrays[0].dtype)
            for array, slot in zip(arrays, slots, strict=True):
                batch[
                    (slice(slot.offset, slot.offset + slot.rows), *(slice(0, n) for n in array.shape[1:]))
                ] = array
            merged[spec.name] = batch
        return merged, slots

    def _split(self, outputs: Mapping[str, np.ndarray], slots: Sequence[_Slot]) -> list[Outputs]:
        pieces: list[Outputs] = [{} for _ in slots]
        for spec in self.outputs:
            array = outputs[spec.name]
            for piece, slot in zip(pieces, slots, strict=True):
                index = (
                    slice(slot.offset, slot.offset + slot.rows),
                    *(
                        slice(0, slot.sizes[d]) if isinstance(d, str) and d in slot.sizes else slice(None)
                        for d in spec.shape[1:]
                    ),
                )
                piece[spec.name] = np.ascontiguousarray(array[index])
        return pieces

    def _buckets(self, jobs: Sequence[Feeds], members: list[int]) -> list[list[int]]:
        """Split a group by padded size so no run spends more than `PADDING_SLACK` of its work on padding
        (`padding_groups`); on a CPU, where work grows with padded tokens, this keeps most of batching's gain."""
        if not self.pad_dims or len(members) < 2:
            return [members]

        def size(index: int) -> int:
            sizes = self.dim_sizes(jobs[index])
            return math.prod(sizes[d] for d in self.pad_dims if d in sizes)

        groups = padding_groups([size(i) for i in members], [self.rows(jobs[i]) for i in members])
        return [[members[k] for k in group] for group in groups]

    def _run_one(self, feeds: Feeds) -> Outputs | BaseException:
        try:
            return self.runner.run(feeds)
        except Exception as exc:  # noqa: BLE001 - handed to the request's future and answered there
            return exc

    def run_many(self, jobs: Sequence[Feeds]) -> list[Outputs | BaseException]:
        """Run requests' feeds as few merged batches as their shapes allow; per request, outputs or the error."""
        results: list[Outputs | BaseException | None] = [None] * len(jobs)
        if not self.merge:
            return [self._run_one(feeds) for feeds in jobs]
        groups: dict[tuple[tuple[int, ...], ...], list[int]] = {}
        for index, feeds in enumerate(jobs):
            groups.setdefault(self._group_key(feeds), []).append(index)
        runs = [bucket for members in groups.values() for bucket in self._buckets(jobs, members)]
        for members in runs:
            if len(members) == 1:
                results[members[0]] = self._run_one(jobs[members[0]])
                continue
            try:
                merged, slots = self._merge([jobs[i] for i in members])
                pieces = self._split(self.runner.run(merged), slots)
            except EdgeError:
                # One bad request must not fail the others: run them one by one, each gets its own answer.
                for i in members:
                    results[i] = self._run_one(jobs[i])
                continue
            for i, piece in zip(members, pieces, strict=True):
                results[i] = piece
        return [r if r is not None else RuntimeError("request was not run") for r in results]


class ModelEngine(Protocol):
    """What a served model runs on, as the app and the scheduler see it: an ONNX `Engine`, or a decoding
    pipeline (`toolkit.serve.seq2seq.DecodeEngine`)."""

    name: str
    version: str
    runner: Runner
    batch_dim: str | None
    merge: bool
    inputs: tuple[TensorSpec, ...]
    requests_per_run: int | None

    @property
    def label(self) -> tuple[str, str]:
        """(model, version), for metrics and thread names."""
        ...

    def run_many(self, jobs: Sequence[Feeds]) -> list[Outputs | BaseException]:
        """Per request, outputs or the error."""
        ...


# -- served models -------------------------------------------------------------------------------


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
        outputs = [_metadata_of(t) for t in task.served_outputs(engine.outputs)]
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
        outputs = [_metadata_of(t) for t in task.served_outputs(engine.outputs)]
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


def _metadata_of(tensor: ServedTensor) -> TensorMetadata:
    return TensorMetadata(tensor.name, tensor.datatype, tensor.shape)


# -- the registry ----------------------------------------------------------------------------------


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
            variants = [v for v in package.manifest.variants if not options.variants or v in options.variants]
            if not variants:
                raise BadInputError(
                    f"package '{package.path}' has none of the variants {', '.join(options.variants)} "
                    f"(it has {', '.join(package.manifest.variants)}); drop --variant or create one with `edge quantize`"
                )
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
        """Every distinct engine (a raw model and its text model share one)."""
        unique: dict[int, ModelEngine] = {}
        for model in self:
            unique.setdefault(id(model.engine), model.engine)
        return tuple(unique.values())


def _package_models(
    package: ModelPackage, variants: Sequence[str], options: LoadOptions
) -> list[ServedModel]:
    from toolkit.serve.seq2seq import decoding_models  # it builds on this module's classes

    manifest = package.manifest
    task = task_for(package)
    text = task.data if isinstance(task.data, TextModality) else None
    tokenizer = text.tokenizer if text is not None else None
    ranges = {spec.name: spec.value_range for spec in manifest.inputs if spec.value_range is not None}
    if tokenizer is not None:
        # packages converted before ranges were recorded: the tokenizer's vocabulary bounds the ids
        ranges.setdefault("input_ids", (0, tokenizer.vocab_size - 1))
    models: list[ServedModel] = []
    for variant in variants:
        runner = Runner(
            package.model_path(variant),
            config=options.config,
            threads=options.threads,
            spinning=options.spinning,
        )
        inputs = {spec.name: spec for spec in runner.inputs}
        pad_values: dict[str, int | float] = {}
        pad_dims: tuple[str, ...] = ()
        if tokenizer is not None and "attention_mask" in inputs:
            pad_values = {"input_ids": tokenizer.pad_id}
            pad_dims = tuple(d for d in inputs["attention_mask"].shape if isinstance(d, str))
        coupled = sorted(op_types(runner.path) & BATCH_COUPLED_OPS)
        if coupled:
            log.info(
                "model %s %s has %s: requests run as sent, never merged", manifest.name, variant, coupled[0]
            )
        engine = Engine(manifest.name, variant, runner, pad_values, pad_dims, merge=not coupled)
        models.append(RawModel(engine, ranges, task))
        if text is not None and task.served_outputs(runner.outputs):
            models.append(PipelineModel(task, engine))
        if isinstance(task, ServesImages) and task.served_outputs(runner.outputs):
            models.append(ImagePipelineModel(task, engine, options.max_image_pixels))
        models.extend(decoding_models(package, variant, runner, options.decode_limits))
    return models
