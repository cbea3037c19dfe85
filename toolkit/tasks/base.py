"""The `Task` and `Pipeline` base classes; `toolkit.tasks` describes what a task owns."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Generic, Protocol, TypeVar, cast, runtime_checkable

import numpy as np

from toolkit.agreement import Meaning
from toolkit.checks import text_list
from toolkit.errors import BadInputError, BadModelError
from toolkit.manifest import FP32_VARIANT, ModelPackage, TensorSpec
from toolkit.preprocess import (
    AudioInput,
    ImageInput,
    TextTokenizer,
    clip_list,
    image_list,
    padding_groups,
    preprocess_audio,
    preprocess_image,
)
from toolkit.providers import ProviderConfig
from toolkit.runner import Runner
from toolkit.tasks.accuracy import AccuracyReport, HeldOut, Runs, max_abs_diff_report
from toolkit.tasks.modality import AudioModality, ImageModality, Modality, TensorModality, TextModality

__all__ = [
    "OWN_HELD_OUT_LIMIT",
    "PAD_ID",
    "AudioPipeline",
    "DecodeCall",
    "DecodePlan",
    "DecodingFace",
    "Family",
    "Feeds",
    "ImagePipeline",
    "Outputs",
    "Pipeline",
    "ServedTensor",
    "ServesDecoding",
    "ServesEmbeddings",
    "ServesImages",
    "ServesRerank",
    "Task",
    "TextPipeline",
    "bytes_array",
    "flag_parameter",
    "own_lines",
    "spread",
    "string_parameter",
    "token_id_rows",
]

Feeds = dict[str, np.ndarray]
Outputs = dict[str, np.ndarray]
# the most held-out samples taken from a user's file: each costs a run of every candidate a quantizer scores
OWN_HELD_OUT_LIMIT = 64
_Item = TypeVar("_Item")


def own_lines(text: str, exclude_texts: Sequence[str] = ()) -> list[str]:
    """The non-blank lines of a user's text, stripped, minus `exclude_texts`."""
    excluded = set(exclude_texts)
    return [line for line in (raw.strip() for raw in text.splitlines()) if line and line not in excluded]


def spread(items: Sequence[_Item], limit: int) -> list[_Item]:
    """At most `limit` of `items`, evenly spaced over them (all when there are no more)."""
    if len(items) <= limit:
        return list(items)
    return [items[i * len(items) // limit] for i in range(limit)]


class Family(Enum):
    """How a task's models run, the one question the code outside the tasks asks about a task: one pass of one
    graph, an encoder and its decoders, or a decoder generating token by token over its KV cache."""

    SINGLE_PASS = "single-pass"
    ENCODER_DECODER = "encoder-decoder"
    GENERATOR = "generator"


@runtime_checkable
class ServesImages(Protocol):
    """A task the server also offers as ``NAME-image``: encoded image files in, the task's results out."""

    def serve_images(self, images: Sequence[ImageInput]) -> tuple[list[Feeds], Callable[[Outputs], Outputs]]:
        """(the runs for the images: one feeds per image size; the post-processing of the runs' outputs,
        concatenated along the batch in the runs' order)."""
        ...


@runtime_checkable
class ServesEmbeddings(Protocol):
    """A text task whose ``NAME-text`` model the server also offers behind ``/v1/embeddings``."""

    @property
    def data(self) -> TextModality:
        """The tokenizer and input names its requests are encoded with."""
        ...

    def embeddings(self, outputs: Mapping[str, np.ndarray], feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        """Embeddings float32 [N, dim] of one run's `outputs`, pooled under `feeds`' mask as the pipeline does."""
        ...


@runtime_checkable
class ServesRerank(Protocol):
    """A text task the server also offers behind the rerank routes: (query, document) pairs in, a score each."""

    @property
    def data(self) -> TextModality:
        """The tokenizer and input names the pairs are encoded with."""
        ...

    def pair_rows(self, query: str, documents: Sequence[str]) -> list[tuple[list[int], list[int]]]:
        """Token ids and type ids of each (query, document) pair, unpadded."""
        ...

    def relevance_scores(self, outputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """One relevance score per pair of a run's `outputs`, float32 [N]."""
        ...


PAD_ID = -1  # fills a served ``token_ids`` tensor after a row's last token


@dataclass(frozen=True)
class DecodingFace:
    """How a decoding pipeline is served: as ``NAME-<suffix>`` under `platform`, one BYTES [N] `input` whose
    elements are `holds` (for error messages), its `outputs`, and the decoder's `positions` (the most new tokens
    a request may ask for)."""

    suffix: str
    platform: str
    input: str
    holds: str
    outputs: tuple[ServedTensor, ...]
    positions: int


@dataclass(frozen=True)
class DecodePlan:
    """One checked request to a decoding pipeline: its rows (`items`), decoded one at a time by `decode`, the
    results turned into the served outputs by `outputs`, the output names it `answers`, and its `tokens` against
    the server's limit (None: its inputs do not show it)."""

    items: tuple[Any, ...]
    decode: Callable[[Any], Any]
    outputs: Callable[[Sequence[Any]], Outputs]
    answers: tuple[str, ...]
    tokens: int | None = None


@dataclass(frozen=True)
class DecodeCall:
    """What the server hands a decoding pipeline: the request's one input flattened to [N], its parameters, the
    output names it asks for (`named`: those the request named itself; all outputs when it named none), and its
    bounded ``max_new_tokens`` and ``num_beams`` (None: the model's default)."""

    data: np.ndarray
    parameters: Mapping[str, Any]
    outputs: tuple[str, ...]
    named: frozenset[str]
    max_new_tokens: int | None
    num_beams: int | None


@runtime_checkable
class ServesDecoding(Protocol):
    """A decoding pipeline (an encoder-decoder's) the server offers beside the raw encoder."""

    def decoding_face(self) -> DecodingFace:
        """How it is served."""
        ...

    def plan_decode(self, call: DecodeCall) -> DecodePlan:
        """Check the request (a BadInputError naming the problem, before it waits in the queue) and plan it."""
        ...


def string_parameter(parameters: Mapping[str, Any], key: str, example: str) -> str | None:
    """A request parameter that must be a non-empty string when given (None: not given)."""
    value = parameters.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise BadInputError(f"parameter '{key}' must be a string such as {example!r}, got {value!r}")
    return value


def flag_parameter(parameters: Mapping[str, Any], key: str) -> bool:
    """A request parameter that must be true or false (False: not given)."""
    value = parameters.get(key, False)
    if not isinstance(value, bool):
        raise BadInputError(f"parameter '{key}' must be true or false, got {value!r}")
    return value


def bytes_array(texts: Sequence[str]) -> np.ndarray:
    """Texts as a served BYTES [N] tensor (UTF-8)."""
    array = np.empty(len(texts), dtype=object)
    array[:] = [t.encode("utf-8") for t in texts]
    return array


def token_id_rows(rows: Sequence[Sequence[int]]) -> np.ndarray:
    """Token ids as a served INT64 [N, longest] tensor, `PAD_ID` after each row's last."""
    array = np.full((len(rows), max((len(r) for r in rows), default=0)), PAD_ID, dtype=np.int64)
    for index, row in enumerate(rows):
        array[index, : len(row)] = row
    return array


_Result = TypeVar("_Result")
_P = TypeVar("_P", bound="Pipeline[Any]")
_M = TypeVar("_M", bound=Modality)


@dataclass(frozen=True)
class ServedTensor:
    """A tensor of a task's server pipeline model: name, KServe v2 datatype, shape (-1: any size)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


class Task(Generic[_M]):
    """What one task owns; an instance is bound to one package (and, once a runner exists, its specs).

    Subclasses set the class attributes and override what differs; see `toolkit.tasks` for the contract.
    """

    name: ClassVar[str] = "features"
    modality: ClassVar[type[Modality]] = TensorModality
    family: ClassVar[Family] = Family.SINGLE_PASS
    # the accuracy metric quantization checks: cosine of `metric_values`, their top-1 agreement, or
    # max_abs_diff (with the cosine of every raw output against the budget)
    metric: ClassVar[str] = "max_abs_diff"
    # the output the task reads (None: the first), and a hint for a package that lacks the section
    preferred_output: ClassVar[str | None] = None
    # per output name, the checks of what the output means that validation adds to ``allclose``
    meaning: ClassVar[Meaning] = {}
    # graphs cut from the export beside it, by name: (inputs, outputs); a pipeline runs one where it needs no
    # more (inputs the export lacks are left out; a subgraph whose outputs it lacks is not cut)
    subgraphs: ClassVar[Mapping[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {}
    source_hint: ClassVar[str] = ""
    # what `edge run` passes this task: "text", "image" or "audio" (None: raw --input tensors only)
    run_input: ClassVar[str | None] = None
    # op types `edge quantize --method dynamic-int8` makes 8-bit blockwise weight-only (MatMulNBits) unless told
    # otherwise, with the ops it quantizes dynamically besides (None: every supported op)
    int8_blockwise: ClassVar[tuple[str, ...]] = ()
    int8_dynamic_op_types: ClassVar[tuple[str, ...] | None] = None
    # preprocessing assets the task reads beyond its modality's section (which names its own), that a source
    # must bring beside the graph (an ONNX file alone brings none)
    extra_assets: ClassVar[tuple[str, ...]] = ()

    def __init__(self, package: ModelPackage, specs: Sequence[TensorSpec] | None = None) -> None:
        self.package = package
        self.manifest = package.manifest
        self.inputs: tuple[TensorSpec, ...] = tuple(specs or package.manifest.inputs)
        self.input_names = frozenset(spec.name for spec in self.inputs)
        self.data = cast(_M, self.modality(package, self.inputs, self.name, self.source_hint))

    @classmethod
    def accepts(cls, package: ModelPackage) -> bool:
        """Whether `package` has what this task needs; when not, `task_for` falls back to ``features``."""
        return cls.modality.accepts(package)

    def output_name(self, outputs: Sequence[TensorSpec]) -> str:
        """The output this task reads: `preferred_output` when the model has it, else the first."""
        names = [o.name for o in outputs]
        preferred = self.preferred_output
        return preferred if preferred is not None and preferred in names else names[0]

    # -- samples: one generator per modality, seeded by purpose ------------------------------------------

    def samples(self, purpose: str, count: int | None, exclude_texts: Sequence[str] = ()) -> list[Feeds]:
        """`count` batch-1 feeds for `purpose` (``held-out``, ``calibration``, ``validation``, ``bench``)."""
        return self.data.samples(purpose, count, exclude_texts)

    def text_samples(self, texts: Sequence[str]) -> list[Feeds]:
        """Batch-1 feeds for these sentences (calibration text), padded alike; a text task's only."""
        return self.text_data().text_feeds(texts, padded=True)

    def text_data(self) -> TextModality:
        """The task's text modality (a BadInputError when it reads no text)."""
        data = self.data
        if not isinstance(data, TextModality):
            raise BadInputError(
                f"task '{self.name}' of package '{self.package.path}' takes no text; "
                f"it reads {data.kind} inputs"
            )
        return data

    def own_held_out(self, text: str, exclude_texts: Sequence[str] = ()) -> list[Feeds]:
        """Held-out feeds from the user's own text: one per non-blank line (minus `exclude_texts`, the calibration
        texts), at most `OWN_HELD_OUT_LIMIT` spread over the file; a text task's only."""
        return self.text_data().text_feeds(spread(own_lines(text, exclude_texts), OWN_HELD_OUT_LIMIT))

    def timing_feeds(self, batch: int = 1, seq: int = 128) -> Feeds:
        """Fixed-shape feeds of `batch` rows for latency measurements."""
        return self.data.timing_feeds(batch, seq)

    def float16_state(self) -> frozenset[str]:
        """Inputs and outputs carrying state from one run to the next (a KV cache) that an fp16 variant keeps in
        float16; its other float inputs and outputs stay float32."""
        return frozenset()

    # -- accuracy -------------------------------------------------------------------------------------

    def metric_output(self) -> str:
        """The output the accuracy metric reads."""
        return self.output_name(self.manifest.outputs)

    def metric_values(self, outputs: Mapping[str, np.ndarray], feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        """What the metric compares, per sample: the metric output itself unless a task says otherwise."""
        return outputs[self.metric_output()]

    # -- `edge run` -----------------------------------------------------------------------------------

    def run_lines(self, items: Sequence[str], results: Sequence[Any]) -> list[str]:
        """How `edge run` prints this task's results, one or more lines per input."""
        return [f"{item}: {result!r}" for item, result in zip(items, results, strict=True)]

    def run_json(self, results: Sequence[Any]) -> dict[str, Any]:
        """This task's results for `edge run --json` (arrays allowed; the CLI serialises them)."""
        return {"results": list(results)}

    # -- the server's pipeline model -----------------------------------------------------------------

    def served_outputs(self, outputs: Sequence[TensorSpec]) -> tuple[ServedTensor, ...]:
        """The outputs of this task's pipeline model on the server (empty: the server serves the raw model only)."""
        return ()

    def serve(self, outputs: Mapping[str, np.ndarray], feeds: Mapping[str, np.ndarray]) -> Outputs:
        """The pipeline model's answer for one request's raw outputs."""
        raise NotImplementedError(f"task '{self.name}' has no server pipeline model")

    # -- the accuracy report of a variant against fp32 (`toolkit.tasks.accuracy`) ------------------------

    # the outputs the report compares (None: every output)
    metric_outputs: ClassVar[tuple[str, ...] | None] = None

    def accuracy_report(self, runs: Runs, feeds: HeldOut) -> AccuracyReport:
        """The variant against fp32 from their outputs `runs` on the held-out `feeds`: the difference of every
        output unless a task reports its own metric."""
        return max_abs_diff_report(runs, feeds)


class Pipeline(Generic[_M]):
    """A `Runner` plus a task: the typed face an application uses. Subclasses add the task's methods.

    `load(path)` builds one from a package of the pipeline's own task (another task is a BadModelError);
    `close()` or a ``with`` block releases the session.
    """

    task_class: ClassVar[type[Task[Any]]] = Task

    def __init__(self, package: ModelPackage, runner: Runner, task: Task[_M] | None = None) -> None:
        self.package = package
        self.runner = runner
        self.task: Task[_M] = task or self.task_class(package, runner.inputs)

    @classmethod
    def load(
        cls: type[_P],
        path: str | Path | ModelPackage,
        *,
        variant: str = FP32_VARIANT,
        providers: str | Sequence[str] | None = None,
        threads: int | None = None,
        strict: bool = False,
        config: ProviderConfig | None = None,
    ) -> _P:
        """This pipeline over the package at `path` (or the package already opened), on a `Runner` for
        `variant`; refuses another task's package."""
        package = path if isinstance(path, ModelPackage) else ModelPackage.open(path)
        cls.refuse_other_task(package, cls.task_class.name)
        runner = Runner(package, providers, variant=variant, threads=threads, strict=strict, config=config)
        return cls(package, runner)

    @staticmethod
    def refuse_other_task(package: ModelPackage, wanted: str) -> None:
        """A BadModelError when `package`'s task is not `wanted` (``features`` pipelines take any package)."""
        if wanted != Task.name and package.manifest.task != wanted:
            raise BadModelError(
                f"package '{package.path}' has task '{package.manifest.task}', not '{wanted}'; "
                f"load it with toolkit.load() or the pipeline for '{package.manifest.task}'"
            )

    def run_items(self, items: Sequence[Any]) -> list[Any]:
        """The task's results for `items` with its default options (what `edge run` prints)."""
        raise BadInputError(
            f"task '{self.task.name}' takes raw feeds only; run it with --input NAME=FILE.npy"
        )

    def run(self, feeds: Mapping[str, Any]) -> Outputs:
        """Run the raw model on `feeds`."""
        return self.runner.run(feeds)

    def close(self) -> None:
        """Release the onnxruntime session."""
        self.runner.close()

    def __enter__(self: _P) -> _P:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def _map(
        self,
        encoded: Sequence[_Item],
        batch_size: int,
        collate: Callable[[Sequence[_Item]], Feeds],
        finish: Callable[[Outputs, Feeds], Sequence[_Result]],
        *,
        order: Sequence[int] | None = None,
        same_batch: Callable[[_Item, _Item], bool] | None = None,
        outputs: Sequence[str] | None = None,
        runner: Runner | None = None,
        batches: Sequence[Sequence[int]] | None = None,
    ) -> list[_Result]:
        """Run encoded items in batches (`batches` of item indices, else in `order`: a batch ends at `batch_size`
        or where `same_batch` says) on `runner` (default: the pipeline's); results come back in the items' own
        order."""
        if batch_size < 1:
            raise BadInputError(f"batch_size must be at least 1, got {batch_size}")
        if batches is None:
            batches = _in_order(encoded, batch_size, order, same_batch)
        results: list[_Result | None] = [None] * len(encoded)
        for rows in batches:
            feeds = collate([encoded[i] for i in rows])
            ran = (runner or self.runner).run(feeds, outputs)
            for row, result in zip(rows, finish(ran, feeds), strict=True):
                results[row] = result
        return [r for r in results if r is not None]


def _in_order(
    encoded: Sequence[_Item],
    batch_size: int,
    order: Sequence[int] | None,
    same_batch: Callable[[_Item, _Item], bool] | None,
) -> list[list[int]]:
    """Item indices in `order` (default: as given), cut into batches of `batch_size` or where `same_batch` says."""
    batches: list[list[int]] = []
    for index in order if order is not None else range(len(encoded)):
        current = batches[-1] if batches else None
        if (
            current
            and len(current) < batch_size
            and (same_batch is None or same_batch(encoded[current[0]], encoded[index]))
        ):
            current.append(index)
        else:
            batches.append([index])
    return batches


# -- pipelines per modality: how items become batches --------------------------------------------------------


class TextPipeline(Pipeline[TextModality]):
    """Texts tokenized, sorted by length so padding stays small, run in batches, results in the texts' order."""

    def __init__(self, package: ModelPackage, runner: Runner, task: Task[TextModality] | None = None) -> None:
        super().__init__(package, runner, task)
        _ = self.task.data.tokenizer  # a missing or escaping tokenizer fails at load, not at the first call

    @property
    def tokenizer(self) -> TextTokenizer:
        """The package's `TextTokenizer`."""
        return self.task.data.tokenizer

    def _texts(
        self, texts: Iterable[str], batch_size: int, finish: Callable[[Outputs, Feeds], Sequence[_Result]]
    ) -> list[_Result]:
        return self._encoded(self.task.data.tokenizer.encode(text_list(texts)), batch_size, finish)

    def _encoded(
        self,
        encodings: Sequence[tuple[list[int], list[int]]],
        batch_size: int,
        finish: Callable[[Outputs, Feeds], Sequence[_Result]],
    ) -> list[_Result]:
        """Token ids and type ids (texts or text pairs) in batches of like length (`padding_groups`: padding paid
        only where it costs less than another run), each padded alone; results in the encodings' order."""
        data = self.task.data
        return self._map(
            encodings,
            batch_size,
            lambda rows: {k: v for k, v in data.tokenizer.pad(rows).items() if k in data.input_names},
            finish,
            outputs=[self.task.output_name(self.runner.outputs)],
            batches=padding_groups([len(ids) for ids, _ in encodings], max_rows=batch_size),
        )


class ImagePipeline(Pipeline[ImageModality]):
    """Images decoded and preprocessed as the manifest says; a change of size starts a new batch."""

    def preprocess(self, images: Sequence[ImageInput]) -> np.ndarray:
        """Images -> pixel values float32 [N, C, H, W] (every image must come out the same size)."""
        arrays = [self._pixels(image) for image in image_list(images)]
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise BadInputError(
                f"images came out in different sizes {sorted(shapes)}; this package resizes by the shortest edge "
                "without a crop, so preprocess them one at a time (classify() does)"
            )
        return np.stack(arrays) if arrays else np.zeros((0, 3, 1, 1), dtype=np.float32)

    def _pixels(self, image: ImageInput) -> np.ndarray:
        pixels = preprocess_image(image, self.task.data.pre)
        shape = self.runner.inputs[0].shape
        channels = shape[1] if len(shape) == 4 else None
        if isinstance(channels, int) and pixels.shape[0] != channels:
            raise BadModelError(
                f"package '{self.package.path}' takes {channels}-channel images; this pipeline makes RGB ones"
            )
        return pixels

    def _images(
        self,
        images: Sequence[ImageInput],
        batch_size: int,
        finish: Callable[[Outputs, Feeds], Sequence[_Result]],
        outputs: Sequence[str] | None = None,
    ) -> list[_Result]:
        pixels = [self._pixels(image) for image in image_list(images)]
        name = self.task.data.input_name
        return self._map(
            pixels,
            batch_size,
            lambda batch: {name: np.stack(batch)},
            finish,
            same_batch=lambda a, b: a.shape == b.shape,
            outputs=outputs,
        )


class AudioPipeline(Pipeline[AudioModality]):
    """Clips one at a time: wav2vec 2.0 base-style models take no attention mask, so zero-padding clips to a
    common length would change their outputs."""

    def _clips(
        self,
        clips: Sequence[AudioInput],
        sampling_rate: int | None,
        finish: Callable[[Outputs, Feeds], Sequence[_Result]],
        outputs: Sequence[str] | None = None,
    ) -> list[_Result]:
        data = self.task.data
        takes_mask = any(spec.name == "attention_mask" for spec in self.runner.inputs)

        def feeds(batch: Sequence[np.ndarray]) -> Feeds:
            waveform = batch[0][None]
            if takes_mask:
                return {data.input_name: waveform, "attention_mask": np.ones(waveform.shape, dtype=np.int64)}
            return {data.input_name: waveform}

        waveforms = [preprocess_audio(clip, data.pre, sampling_rate) for clip in clip_list(clips)]
        return self._map(waveforms, 1, feeds, finish, outputs=outputs)
