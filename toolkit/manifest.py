"""The model package and its manifest, ``edge.json``: the one place that reads and writes it.

A model package is a directory a user can copy to a device::

    model.onnx            the fp32 export
    model.<variant>.onnx  quantized or converted variants (int8, fp16, int4, ...)
    edge.json             this manifest
    tokenizer.json ...    preprocessing assets

Everything else in edge-toolkit goes through `Manifest` and `ModelPackage`; nothing parses
``edge.json`` by hand.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, TypeVar

from toolkit.atomic import atomic_write_text
from toolkit.checks import is_finite_number
from toolkit.errors import BadInputError, BadModelError

__all__ = [
    "DECODER_GRAPHS",
    "FORMAT_VERSION",
    "FP32_VARIANT",
    "GQA_INPLACE_GRAPH",
    "GQA_SEQLENS_GRAPH",
    "MANIFEST_NAME",
    "OPTIMUM_GRAPH",
    "AudioPreprocessing",
    "GenerationSpec",
    "Host",
    "ImagePreprocessing",
    "Manifest",
    "ModelPackage",
    "OutputCheck",
    "RuleCheck",
    "Seq2SeqSpec",
    "SourceInfo",
    "TensorSpec",
    "TextPreprocessing",
    "Validation",
    "Variant",
    "check_manifest",
    "check_relative",
    "resolve_inside",
    "section_of",
    "seq2seq_files",
    "tool_versions",
    "variant_file_name",
]

FORMAT_VERSION = 1
MANIFEST_NAME = "edge.json"
FP32_VARIANT = "fp32"

Dim = int | str


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output: name, numpy dtype name, and shape with symbolic dims as strings."""

    name: str
    dtype: str
    shape: tuple[Dim, ...]
    value_range: tuple[int, int] | None = None

    def describe(self) -> str:
        """Render as ``int64 [batch_size, sequence_length]``."""
        return f"{self.dtype} [{', '.join(str(d) for d in self.shape)}]"


@dataclass(frozen=True)
class SourceInfo:
    """Where the model came from: the resolver kind, the reference the user gave, and a content hash."""

    kind: str
    ref: str
    sha256: str
    recipe: str | None = None


@dataclass(frozen=True)
class RuleCheck:
    """One rule's verdict on one output: what it measured (`value`, e.g. the worst cosine), its `limit`, and
    `ratio`, the error over the error the rule allows (at most 1 passes; the largest ratio decides)."""

    rule: str
    value: float
    limit: float
    ratio: float

    @property
    def passed(self) -> bool:
        """Whether the output is within this rule."""
        return self.ratio <= 1.0


@dataclass(frozen=True)
class OutputCheck:
    """One output's comparison against the reference: worst and mean absolute difference over all cases, every
    rule applied (`rules`) and the one that decided (`decided_by`: the first failing, else the nearest its
    limit). Packages made before the rules carry the differences only."""

    name: str
    max_abs_diff: float
    mean_abs_diff: float
    passed: bool
    rules: tuple[RuleCheck, ...] = ()
    decided_by: str = "max_abs_diff"


@dataclass(frozen=True)
class Host:
    """The machine a validation ran on: CPU model, architecture, the int8 kernel path onnxruntime takes there
    (``avx2``, ``avx512-vnni``, ``amx``, ``arm-dotprod``, ... see `toolkit.host`), onnxruntime version, provider."""

    cpu: str
    arch: str
    int8_path: str
    onnxruntime: str
    provider: str = "cpu"

    def describe(self) -> str:
        """``Intel Xeon (avx512-vnni), onnxruntime 1.31.1, cpu``."""
        return f"{self.cpu} ({self.int8_path}), onnxruntime {self.onnxruntime}, {self.provider}"


@dataclass(frozen=True)
class Validation:
    """How a variant compares with its reference (PyTorch for the export, fp32 for variants), on which host."""

    metric: str
    value: float
    threshold: float
    reference: str
    samples: int
    passed: bool
    outputs: tuple[OutputCheck, ...] = ()
    cases: tuple[str, ...] = ()
    host: Host | None = None
    # the ``allclose`` rule's tolerances (value: the worst ratio of any output's deciding rule, threshold 1)
    atol: float | None = None
    rtol: float | None = None
    held_out: str | None = None
    """Where a quantized variant's held-out inputs came from (built-in samples, or the user's file)."""


@dataclass(frozen=True)
class Variant:
    """One ONNX file of the package with how it was made and how accurate it is.

    `validation` is the measurement made with the file; `verifications` are re-measurements on other hosts
    (`edge verify --update`), one per host int8 path and provider, the newest kept. `subgraphs` are files cut
    from this one that compute some outputs from some inputs only (`Task.subgraphs`: CLIP's text tower), by
    name; a pipeline runs one where it needs no more (validated with the file).
    """

    name: str
    file: str
    precision: str
    method: str
    size_bytes: int
    settings: Mapping[str, Any] = field(default_factory=dict)
    validation: Validation | None = None
    tool_versions: Mapping[str, str] = field(default_factory=dict)
    verifications: tuple[Validation, ...] = ()
    subgraphs: Mapping[str, str] = field(default_factory=dict)

    def with_verification(self, result: Validation) -> Variant:
        """A copy with `result` recorded, replacing an earlier one from a host of the same int8 path and provider."""

        def key(v: Validation) -> tuple[str, str] | None:
            return (v.host.int8_path, v.host.provider) if v.host else None

        kept = tuple(v for v in self.verifications if key(v) != key(result))
        return dataclasses.replace(self, verifications=(*kept, result))


@dataclass(frozen=True)
class TextPreprocessing:
    """Tokenizer file and the sentence-transformers style pooling applied after the model; `activation` is what a
    cross-encoder applies to its score (``sigmoid``, ``identity``: `toolkit.tasks.rerank`)."""

    tokenizer: str
    max_length: int
    pooling: str | None = None
    normalize: bool = False
    output: str | None = None
    kind: str = "text"
    activation: str | None = None


@dataclass(frozen=True)
class ImagePreprocessing:
    """Resize, centre crop, rescale and normalise, as the model's image processor did.

    `resize` ``exact`` resizes to `size` (height, width); ``shortest_edge`` keeps the aspect ratio and makes the
    shorter side `size[0]` long. `resample` is the PIL filter (``bilinear``, ``bicubic``, ...).
    """

    size: tuple[int, int]
    crop_size: tuple[int, int] | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    rescale_factor: float = 1 / 255
    kind: str = "image"
    resize: str = "exact"
    resample: str = "bilinear"


@dataclass(frozen=True)
class AudioPreprocessing:
    """A mono waveform in [-1, 1] at `sampling_rate`; with `normalize`, each clip is scaled to zero mean and unit
    variance first (wav2vec 2.0's feature extractor, ``do_normalize``)."""

    sampling_rate: int
    normalize: bool = True
    kind: str = "audio"


Preprocessing = TextPreprocessing | ImagePreprocessing | AudioPreprocessing
_Section = TypeVar("_Section", TextPreprocessing, ImagePreprocessing, AudioPreprocessing)


def section_of(preprocessing: Preprocessing | None, kind: type[_Section]) -> _Section | None:
    """`preprocessing` when it is a section of `kind`, else None: the one place that tells sections apart."""
    return preprocessing if isinstance(preprocessing, kind) else None


# --- generation contract ---------------------------------------------------------------------
# the decoder graphs a generate package may hold: optimum-onnx's export (past in, a longer present out) and
# edge-toolkit's own (converters/gqa_decoder.py: GroupQueryAttention over one in-place buffer); "gqa-inplace"
# took left-padded rows and an attention mask (packages made before "gqa-seqlens" replaced it), "gqa-seqlens"
# takes each row's length instead (rows start at column 0, no mask)
OPTIMUM_GRAPH = "optimum"
GQA_INPLACE_GRAPH = "gqa-inplace"
GQA_SEQLENS_GRAPH = "gqa-seqlens"
DECODER_GRAPHS = (OPTIMUM_GRAPH, GQA_INPLACE_GRAPH, GQA_SEQLENS_GRAPH)


@dataclass(frozen=True)
class GenerationSpec:
    """What a generator needs beyond the graph: the KV cache layout, the positions, special ids, chat template.

    The decoder takes ``past_key_values.{i}.key`` / ``.value`` and returns ``present.{i}.key`` / ``.value``,
    each ``[batch, kv_heads, positions, head_dim]`` of `cache_dtype`, for ``i < layers``. `defaults` are the
    model's ``generation_config.json`` settings (do_sample, temperature, top_k, top_p, repetition_penalty,
    max_new_tokens) that a caller's arguments override. `graph` says which decoder graph the package holds
    (`DECODER_GRAPHS`; packages made before it was recorded hold optimum's); `rotary_inv_freq`, the frequencies
    of the rotary embedding a graph applies by cache column (the in-place graph), lets the cache re-rotate keys
    it moves to other columns.
    """

    layers: int
    kv_heads: int
    head_dim: int
    cache_dtype: str
    max_positions: int
    eos_token_ids: tuple[int, ...]
    pad_token_id: int
    bos_token_id: int | None = None
    chat_template: str | None = None
    defaults: Mapping[str, Any] = field(default_factory=dict)
    past_input: str = "past_key_values.{layer}.{kind}"
    present_output: str = "present.{layer}.{kind}"
    position_ids: bool = True
    graph: str = OPTIMUM_GRAPH
    rotary_inv_freq: tuple[float, ...] = ()

    @property
    def in_place(self) -> bool:
        """The decoder writes new positions into its past buffer (past and present bound to one buffer of the
        full capacity) and takes ``num_logits_to_keep``; else it returns a present one position longer."""
        return self.graph in (GQA_INPLACE_GRAPH, GQA_SEQLENS_GRAPH)

    @property
    def row_lengths(self) -> bool:
        """The decoder takes each row's length (``seqlens_k``, ``total_sequence_length``) instead of an attention
        mask: every row's tokens start at cache column 0, and rows of different lengths need no padding mask."""
        return self.graph == GQA_SEQLENS_GRAPH


def _generation(d: Mapping[str, Any] | None) -> GenerationSpec | None:
    if d is None:
        return None
    return GenerationSpec(
        **{
            **d,
            "eos_token_ids": tuple(d["eos_token_ids"]),
            "defaults": d.get("defaults", {}),
            "rotary_inv_freq": tuple(d.get("rotary_inv_freq", ())),
        }
    )


@dataclass(frozen=True)
class Seq2SeqSpec:
    """An encoder-decoder's decoder contract: the encoder is the variant's file, the decoders are
    `seq2seq_files`; start tokens, eos/pad ids, target positions, the tokens its generation config suppresses or
    forces, its defaults (num_beams, max_length, length_penalty, early_stopping, no_repeat_ngram_size,
    min_length) and, for Whisper, its languages, tasks, no-timestamps token (the timestamp tokens follow it), the
    highest timestamp index its first timestamp may take (``max_initial_timestamp_index``; None: no limit, absent
    from packages made before it was recorded: 50, the value of OpenAI's Whisper checkpoints) and front end (mel
    bins, chunk)."""

    layers: int
    decoder_start_ids: tuple[int, ...]
    eos_token_ids: tuple[int, ...]
    pad_token_id: int
    max_target_positions: int
    suppress_tokens: tuple[int, ...] = ()
    begin_suppress_tokens: tuple[int, ...] = ()
    forced_bos_token_id: int | None = None
    forced_eos_token_id: int | None = None
    defaults: Mapping[str, Any] = field(default_factory=dict)
    languages: Mapping[str, int] = field(default_factory=dict)
    tasks: Mapping[str, int] = field(default_factory=dict)
    no_timestamps_token_id: int | None = None
    max_initial_timestamp_index: int | None = 50
    n_mels: int = 0
    chunk_length: int = 30


_SEQ2SEQ_LISTS = ("decoder_start_ids", "eos_token_ids", "suppress_tokens", "begin_suppress_tokens")


def _seq2seq(d: Mapping[str, Any] | None) -> Seq2SeqSpec | None:
    if d is None:
        return None
    return Seq2SeqSpec(**{**d, **{k: tuple(d[k]) for k in _SEQ2SEQ_LISTS if k in d}})


def seq2seq_files(variant: str = "fp32") -> tuple[str, str, str]:
    """The encoder, decoder and decoder-with-past files of an encoder-decoder package's `variant`."""
    encoder = variant_file_name(variant)
    return encoder, encoder.replace("model", "decoder", 1), encoder.replace("model", "decoder_with_past", 1)


# --- end generation contract ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Manifest:
    """The parsed ``edge.json``."""

    name: str
    task: str
    source: SourceInfo
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    opset: int
    variants: Mapping[str, Variant]
    preprocessing: Preprocessing | None = None
    labels: tuple[str, ...] | None = None
    exporter: Mapping[str, Any] = field(default_factory=dict)
    format: int = FORMAT_VERSION
    generation: GenerationSpec | None = None  # generators only
    seq2seq: Seq2SeqSpec | None = None  # encoder-decoders only

    def variant(self, name: str) -> Variant:
        """The variant called `name`, or a BadInputError listing the ones that exist."""
        try:
            return self.variants[name]
        except KeyError:
            known = ", ".join(sorted(self.variants)) or "none"
            raise BadInputError(
                f"variant '{name}' is not in package '{self.name}' (it has: {known}); "
                "pick one of those or create it with `edge quantize`"
            ) from None

    def section(self, kind: type[_Section]) -> _Section | None:
        """The preprocessing section when it is of `kind`, else None."""
        return section_of(self.preprocessing, kind)

    def with_variant(self, variant: Variant) -> Manifest:
        """A copy with `variant` added or replaced."""
        return dataclasses.replace(self, variants={**self.variants, variant.name: variant})

    def to_json(self) -> str:
        """Serialise, with variants in a stable order (fp32 first)."""
        data = dataclasses.asdict(self)
        data["variants"] = {
            name: dataclasses.asdict(self.variants[name])
            for name in sorted(self.variants, key=lambda n: (n != FP32_VARIANT, n))
        }
        for section in ("generation", "seq2seq"):
            if data[section] is None:
                del data[section]  # only generators and encoder-decoders carry one
        ordered = {"format": data.pop("format"), **data}
        return json.dumps(ordered, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, origin: str) -> Manifest:
        """Parse; `origin` names the file in error messages."""
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, or an integer of over 4,300 digits
            raise BadModelError(
                f"{origin} is not valid JSON ({_one_line(exc)}); re-create the package with `edge convert`"
            ) from None
        if not isinstance(data, dict):
            raise BadModelError(f"{origin} is not an edge-toolkit manifest; re-create it with `edge convert`")
        version = data.get("format")
        if version != FORMAT_VERSION:
            raise BadModelError(
                f"{origin} has manifest format {version!r}, this edge-toolkit reads format {FORMAT_VERSION}; "
                "re-create the package with this version's `edge convert`"
            )
        _check_layout(data, origin)
        try:
            manifest = _manifest_from_dict(data)
        except KeyError as exc:
            raise BadModelError(
                f"{origin} is missing the field {exc}; re-create it with `edge convert`"
            ) from None
        except (TypeError, ValueError, AttributeError, IndexError, OverflowError) as exc:
            raise BadModelError(
                f"{origin} is missing or has a malformed field ({type(exc).__name__}: {_one_line(exc)}); "
                "re-create it with `edge convert`"
            ) from None
        check_manifest(manifest, origin)
        return manifest


def _tensor(d: Mapping[str, Any]) -> TensorSpec:
    value_range = d.get("value_range")
    return TensorSpec(
        name=d["name"],
        dtype=d["dtype"],
        shape=tuple(d["shape"]),
        value_range=tuple(value_range) if value_range is not None else None,
    )


def _validation(d: Mapping[str, Any] | None) -> Validation | None:
    if d is None:
        return None
    return Validation(
        metric=d["metric"],
        value=float(d["value"]),
        threshold=float(d["threshold"]),
        reference=d["reference"],
        samples=int(d["samples"]),
        passed=bool(d["passed"]),
        outputs=tuple(_output_check(o) for o in d.get("outputs", ())),
        cases=tuple(d.get("cases", ())),
        host=Host(**d["host"]) if d.get("host") is not None else None,
        atol=_optional_float(d.get("atol")),
        rtol=_optional_float(d.get("rtol")),
        held_out=d.get("held_out"),
    )


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _output_check(d: Mapping[str, Any]) -> OutputCheck:
    rules = tuple(RuleCheck(**r) for r in d.get("rules", ()))
    return OutputCheck(**{**d, "rules": rules})


def _preprocessing(d: Mapping[str, Any] | None) -> Preprocessing | None:
    if d is None:
        return None
    if d["kind"] == "text":
        return TextPreprocessing(**d)
    if d["kind"] == "image":
        return ImagePreprocessing(
            size=tuple(d["size"]),
            crop_size=tuple(d["crop_size"]) if d.get("crop_size") else None,
            mean=tuple(d["mean"]),
            std=tuple(d["std"]),
            rescale_factor=float(d["rescale_factor"]),
            resize=d.get("resize", "exact"),
            resample=d.get("resample", "bilinear"),
        )
    if d["kind"] == "audio":
        return AudioPreprocessing(
            sampling_rate=int(d["sampling_rate"]), normalize=bool(d.get("normalize", True))
        )
    raise ValueError(f"unknown preprocessing kind {d['kind']!r}")


def _manifest_from_dict(data: Mapping[str, Any]) -> Manifest:
    variants = {
        name: Variant(
            name=v["name"],
            file=v["file"],
            precision=v["precision"],
            method=v["method"],
            size_bytes=int(v["size_bytes"]),
            settings=v.get("settings", {}),
            validation=_validation(v.get("validation")),
            tool_versions=v.get("tool_versions", {}),
            verifications=tuple(
                result for r in v.get("verifications", ()) if (result := _validation(r)) is not None
            ),
            subgraphs=v.get("subgraphs", {}),
        )
        for name, v in data["variants"].items()
    }
    labels = data.get("labels")
    return Manifest(
        name=data["name"],
        task=data["task"],
        source=SourceInfo(**data["source"]),
        inputs=tuple(_tensor(t) for t in data["inputs"]),
        outputs=tuple(_tensor(t) for t in data["outputs"]),
        opset=int(data["opset"]),
        variants=variants,
        preprocessing=_preprocessing(data.get("preprocessing")),
        labels=tuple(labels) if labels is not None else None,
        exporter=data.get("exporter", {}),
        format=int(data["format"]),
        generation=_generation(data.get("generation")),
        seq2seq=_seq2seq(data.get("seq2seq")),
    )


# -- checks: a parsed manifest holds what its fields say, and every path it names stays in the package --------


def _member(key: object) -> str:
    """A mapping key as a field path shows it: as it is when printable, else its repr (a key with a newline or
    a control character must not break the one-line error)."""
    return key if isinstance(key, str) and key.isprintable() and key else repr(key)


def _fail(origin: str, field_name: str, problem: str) -> BadModelError:
    return BadModelError(f"{origin}: {field_name} {problem}; re-create the package with `edge convert`")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_str(origin: str, field_name: str, value: Any, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or not value:
        raise _fail(origin, field_name, f"must be a non-empty string, got {_short(value)}")


def _one_line(exc: BaseException) -> str:
    """An exception's text on one line (Python names a bad keyword argument unescaped), at most 200 chars."""
    return ascii(" ".join(str(exc).split()))[1:-1][:200]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_layout(data: Mapping[str, Any], origin: str) -> None:
    """The JSON types of the manifest's sections, so a wrong one is named rather than met as a TypeError."""
    objects = {
        "source": False,
        "variants": False,
        "preprocessing": True,
        "exporter": True,
        "generation": True,
        "seq2seq": True,
    }
    for key, optional in objects.items():
        if key in data and not isinstance(data[key], dict) and not (optional and data[key] is None):
            raise _fail(origin, key, f"must be an object, got {_short(data[key])}")
    for key in ("inputs", "outputs"):
        if key in data and not (isinstance(data[key], list) and all(isinstance(t, dict) for t in data[key])):
            raise _fail(origin, key, "must be a list of tensor objects")
    for key in ("inputs", "outputs"):
        for position, tensor in enumerate(data.get(key) or ()):
            if not isinstance(tensor.get("shape"), list):
                raise _fail(
                    origin, f"{key}[{position}].shape", f"must be a list, got {_short(tensor.get('shape'))}"
                )
            if tensor.get("value_range") is not None and not isinstance(tensor["value_range"], list):
                raise _fail(origin, f"{key}[{position}].value_range", "must be [low, high] or null")
    for name, variant in (data.get("variants") or {}).items():
        if not isinstance(variant, dict):
            raise _fail(origin, f"variants.{_member(name)}", f"must be an object, got {_short(variant)}")
    for key in ("labels",):
        if data.get(key) is not None and not isinstance(data[key], list):
            raise _fail(origin, key, f"must be a list, got {_short(data[key])}")
    seq2seq = data.get("seq2seq")
    if isinstance(seq2seq, dict):
        for key in _SEQ2SEQ_LISTS:
            if key in seq2seq and not isinstance(seq2seq[key], list):
                raise _fail(origin, f"seq2seq.{key}", f"must be a list, got {_short(seq2seq[key])}")
    generation = data.get("generation")
    if isinstance(generation, dict) and not isinstance(generation.get("eos_token_ids"), list):
        raise _fail(
            origin,
            "generation.eos_token_ids",
            f"must be a list, got {_short(generation.get('eos_token_ids'))}",
        )


def check_relative(origin: str, field_name: str, value: Any) -> str:
    """`value` as a package-relative file name: a string, not absolute, no ``..``, no drive or backslash."""
    _check_str(origin, field_name, value)
    posix, windows = PurePosixPath(value), PureWindowsPath(value)
    if (
        posix.is_absolute()
        or windows.is_absolute()
        or windows.drive
        or "\\" in value
        or "\x00" in value
        or ".." in posix.parts
    ):
        raise _fail(
            origin,
            field_name,
            f"is {_short(value)}: it must be a relative path inside the package (no leading /, no .., no \\)",
        )
    return str(value)


def _check_tensor(origin: str, where: str, spec: Any) -> None:
    if not isinstance(spec, TensorSpec):
        raise _fail(origin, where, "must be an object with name, dtype and shape")
    _check_str(origin, f"{where}.name", spec.name)
    _check_str(origin, f"{where}.dtype", spec.dtype)
    if not all((isinstance(d, str) and d) or _is_int(d) for d in spec.shape):
        raise _fail(origin, f"{where}.shape", f"must hold sizes or dim names, got {_short(spec.shape)}")
    if spec.value_range is not None:
        low_high = spec.value_range
        if len(low_high) != 2 or not all(_is_int(v) for v in low_high) or low_high[0] > low_high[1]:
            raise _fail(
                origin, f"{where}.value_range", f"must be [low, high] integers, got {_short(low_high)}"
            )


def _check_size(origin: str, where: str, size: Any, *, optional: bool = False) -> None:
    if size is None and optional:
        return
    if not isinstance(size, tuple) or len(size) != 2 or not all(_is_int(v) and v >= 1 for v in size):
        raise _fail(origin, where, f"must be [height, width] of positive integers, got {_short(size)}")


def _check_preprocessing(origin: str, pre: Any) -> None:
    if isinstance(pre, TextPreprocessing):
        check_relative(origin, "preprocessing.tokenizer", pre.tokenizer)
        if not _is_int(pre.max_length) or pre.max_length < 1:
            raise _fail(
                origin,
                "preprocessing.max_length",
                f"must be a positive integer, got {_short(pre.max_length)}",
            )
        _check_str(origin, "preprocessing.pooling", pre.pooling, optional=True)
        _check_str(origin, "preprocessing.output", pre.output, optional=True)
        _check_str(origin, "preprocessing.activation", pre.activation, optional=True)
        if not isinstance(pre.normalize, bool):
            raise _fail(
                origin, "preprocessing.normalize", f"must be true or false, got {_short(pre.normalize)}"
            )
    elif isinstance(pre, ImagePreprocessing):
        _check_size(origin, "preprocessing.size", pre.size)
        _check_size(origin, "preprocessing.crop_size", pre.crop_size, optional=True)
        channels = len(pre.mean)
        if channels < 1 or len(pre.std) != channels or not all(map(is_finite_number, (*pre.mean, *pre.std))):
            raise _fail(
                origin, "preprocessing.mean/std", "must be equal-length lists of numbers, one per channel"
            )
        if any(s == 0 for s in pre.std) or not is_finite_number(pre.rescale_factor):
            raise _fail(origin, "preprocessing.std/rescale_factor", "must be non-zero finite numbers")
        _check_str(origin, "preprocessing.resize", pre.resize)
        _check_str(origin, "preprocessing.resample", pre.resample)
    elif isinstance(pre, AudioPreprocessing):
        if not _is_int(pre.sampling_rate) or pre.sampling_rate < 1:
            raise _fail(
                origin, "preprocessing.sampling_rate", f"must be a positive integer, got {pre.sampling_rate}"
            )
    elif pre is not None:
        raise _fail(origin, "preprocessing", "must be an object with a known kind (text, image, audio)")


def check_manifest(manifest: Manifest, origin: str) -> None:
    """A BadModelError naming the first field of `manifest` that is not what its type says (or leaves the package)."""
    for field_name in ("name", "task"):
        _check_str(origin, field_name, getattr(manifest, field_name))
    for field_name in ("kind", "ref", "sha256"):
        if not isinstance(getattr(manifest.source, field_name), str):
            raise _fail(origin, f"source.{field_name}", "must be a string")
    for kind in ("inputs", "outputs"):
        specs = getattr(manifest, kind)
        if not specs:
            raise _fail(origin, kind, "must be a non-empty list of tensors")
        for position, spec in enumerate(specs):
            _check_tensor(origin, f"{kind}[{position}]", spec)
    if not isinstance(manifest.variants, Mapping) or not manifest.variants:
        raise _fail(origin, "variants", "must name at least one variant (fp32: model.onnx)")
    for key, variant in manifest.variants.items():
        where = f"variants.{_member(key)}"
        if variant.name != key:
            raise _fail(origin, f"{where}.name", f"is {_short(variant.name)}, not the key {key!r}")
        check_relative(origin, f"{where}.file", variant.file)
        if not isinstance(variant.subgraphs, Mapping):
            raise _fail(origin, f"{where}.subgraphs", "must be an object of file names")
        for part, file in variant.subgraphs.items():
            check_relative(origin, f"{where}.subgraphs.{_member(part)}", file)
        _check_str(origin, f"{where}.precision", variant.precision)
        _check_str(origin, f"{where}.method", variant.method)
        if variant.size_bytes < 0:
            raise _fail(origin, f"{where}.size_bytes", f"must be 0 or more, got {variant.size_bytes}")
        for mapping in ("settings", "tool_versions"):
            if not isinstance(getattr(variant, mapping), Mapping):
                raise _fail(origin, f"{where}.{mapping}", "must be an object")
        for position, result in enumerate((variant.validation, *variant.verifications)):
            host = result.host if result is not None else None
            if host is not None and not all(isinstance(v, str) for v in dataclasses.astuple(host)):
                place = "validation" if position == 0 else f"verifications[{position - 1}]"
                raise _fail(origin, f"{where}.{place}.host", "must hold strings (cpu, arch, int8_path, ...)")
    _check_preprocessing(origin, manifest.preprocessing)
    if manifest.labels is not None and not all(isinstance(label, str) for label in manifest.labels):
        raise _fail(origin, "labels", "must be a list of strings")
    if not isinstance(manifest.exporter, Mapping):
        raise _fail(origin, "exporter", "must be an object")
    _check_generation(origin, manifest.generation)
    _check_seq2seq(origin, manifest.seq2seq)
    text = section_of(manifest.preprocessing, TextPreprocessing)
    if (
        manifest.generation is not None
        and text is not None
        and manifest.generation.max_positions > text.max_length
    ):
        raise _fail(
            origin,
            "generation.max_positions",
            f"is {manifest.generation.max_positions}, beyond the model's {text.max_length} positions "
            "(preprocessing.max_length)",
        )


def _check_seq2seq(origin: str, spec: Seq2SeqSpec | None) -> None:
    """The seq2seq section's fields."""
    if spec is None:
        return
    for name in ("layers", "max_target_positions", "chunk_length"):
        value = getattr(spec, name)
        if not _is_int(value) or value < 1:
            raise _fail(origin, f"seq2seq.{name}", f"must be a positive integer, got {_short(value)}")
    if not _is_int(spec.n_mels) or spec.n_mels < 0:
        raise _fail(origin, "seq2seq.n_mels", f"must be 0 or a positive integer, got {_short(spec.n_mels)}")
    for name in _SEQ2SEQ_LISTS:
        ids = getattr(spec, name)
        if not all(_is_int(i) and i >= 0 for i in ids) or (name in _SEQ2SEQ_LISTS[:2] and not ids):
            raise _fail(origin, f"seq2seq.{name}", f"must be a list of token ids, got {_short(ids)}")
    for name, optional in (
        ("pad_token_id", False),
        ("forced_bos_token_id", True),
        ("forced_eos_token_id", True),
        ("no_timestamps_token_id", True),
    ):
        value = getattr(spec, name)
        if not (value is None and optional) and not (_is_int(value) and value >= 0):
            raise _fail(origin, f"seq2seq.{name}", f"must be a token id, got {_short(value)}")
    initial = spec.max_initial_timestamp_index
    if initial is not None and not (_is_int(initial) and initial >= 0):
        raise _fail(
            origin,
            "seq2seq.max_initial_timestamp_index",
            f"must be null or an index >= 0, got {_short(initial)}",
        )
    for name in ("defaults", "languages", "tasks"):
        if not isinstance(getattr(spec, name), Mapping):
            raise _fail(origin, f"seq2seq.{name}", "must be an object")
    for name in ("languages", "tasks"):
        mapping = getattr(spec, name)
        if not all(isinstance(k, str) and k and _is_int(v) and v >= 0 for k, v in mapping.items()):
            raise _fail(origin, f"seq2seq.{name}", "must map names to token ids")


def _check_generation(origin: str, spec: GenerationSpec | None) -> None:
    """The generation section's fields: sizes positive, ids integers, names with their placeholders."""
    if spec is None:
        return
    for name in ("layers", "kv_heads", "head_dim", "max_positions"):
        value = getattr(spec, name)
        if not _is_int(value) or value < 1:
            raise _fail(origin, f"generation.{name}", f"must be a positive integer, got {_short(value)}")
    _check_str(origin, "generation.cache_dtype", spec.cache_dtype)
    if not spec.eos_token_ids or not all(_is_int(i) and i >= 0 for i in spec.eos_token_ids):
        raise _fail(
            origin,
            "generation.eos_token_ids",
            f"must be a non-empty list of token ids, got {_short(spec.eos_token_ids)}",
        )
    for name, optional in (("pad_token_id", False), ("bos_token_id", True)):
        value = getattr(spec, name)
        if not (value is None and optional) and not (_is_int(value) and value >= 0):
            raise _fail(origin, f"generation.{name}", f"must be a token id, got {_short(value)}")
    _check_str(origin, "generation.chat_template", spec.chat_template, optional=True)
    if not isinstance(spec.defaults, Mapping):
        raise _fail(origin, "generation.defaults", f"must be an object, got {_short(spec.defaults)}")
    for name in ("past_input", "present_output"):
        value = getattr(spec, name)
        _check_str(origin, f"generation.{name}", value)
        if "{layer}" not in value or "{kind}" not in value:
            raise _fail(
                origin, f"generation.{name}", f"must hold {{layer}} and {{kind}}, got {_short(value)}"
            )
    if not isinstance(spec.position_ids, bool):
        raise _fail(
            origin, "generation.position_ids", f"must be true or false, got {_short(spec.position_ids)}"
        )
    if not all(isinstance(f, int | float) and not isinstance(f, bool) for f in spec.rotary_inv_freq):
        raise _fail(origin, "generation.rotary_inv_freq", "must be a list of numbers")
    if spec.graph not in DECODER_GRAPHS:
        raise _fail(
            origin,
            "generation.graph",
            f"must be one of {', '.join(DECODER_GRAPHS)}, got {_short(spec.graph)}",
        )


def resolve_inside(package_dir: Path, relative: str, what: str = "file") -> Path:
    """`package_dir / relative`, refused (BadModelError) when it is absolute, climbs with ``..`` or resolves
    (through symlinks) to somewhere outside `package_dir`."""
    name = check_relative(f"package '{package_dir}'", what, relative)
    root = package_dir.resolve()
    joined = package_dir / name
    try:
        target = joined.resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise BadModelError(f"package '{package_dir}': {what} '{name}' cannot be resolved ({exc})") from None
    if not target.is_relative_to(root):
        raise BadModelError(
            f"package '{package_dir}': {what} '{name}' is a link to a path outside the package; "
            "copy the file into the package instead of linking it"
        )
    return joined


def variant_file_name(variant: str) -> str:
    """``model.onnx`` for fp32, ``model.<variant>.onnx`` for the others."""
    return "model.onnx" if variant == FP32_VARIANT else f"model.{variant}.onnx"


_VERSIONED_DISTRIBUTIONS = (
    "edge-toolkit",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "numpy",
    "torch",
    "transformers",
    "optimum",
    "optimum-onnx",
)


def tool_versions() -> dict[str, str]:
    """Versions of the installed tools that shape an artifact, read from package metadata (nothing imported)."""
    versions = {}
    for dist in _VERSIONED_DISTRIBUTIONS:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


@dataclass(frozen=True)
class ModelPackage:
    """A model package directory and its parsed manifest."""

    path: Path
    manifest: Manifest

    @classmethod
    def open(cls, path: str | Path) -> ModelPackage:
        """Read the package at `path`; errors say what is missing and how to make it."""
        root = Path(path)
        if not root.exists():
            raise BadInputError(
                f"model package '{root}' does not exist; create it with `edge convert SOURCE -o {root}`"
            )
        if not root.is_dir():
            raise BadInputError(
                f"'{root}' is a file, not a model package directory; pass the directory `edge convert` wrote"
            )
        manifest_path = root / MANIFEST_NAME
        if not manifest_path.is_file():
            raise BadModelError(
                f"'{root}' is not a model package (no {MANIFEST_NAME}); create one with `edge convert SOURCE -o {root}`"
            )
        try:
            text = manifest_path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadModelError(
                f"{manifest_path} is not UTF-8 text (byte {exc.start}); re-create the package with `edge convert`"
            ) from None
        except OSError as exc:
            raise BadModelError(
                f"{manifest_path} cannot be read ({exc.strerror}); check its permissions"
            ) from None
        return cls(root, Manifest.from_json(text, str(manifest_path)))

    def asset(self, relative: str, what: str = "file") -> Path:
        """The package file `relative` names, refused when it would lie outside the package (see `resolve_inside`)."""
        return resolve_inside(self.path, relative, what)

    def seq2seq_spec(self) -> Seq2SeqSpec:
        """The encoder-decoder contract (the manifest's seq2seq section); a BadModelError when it has none."""
        spec = self.manifest.seq2seq
        if spec is None:
            raise BadModelError(
                f"package '{self.path}' has no seq2seq section; re-create it with `edge convert`"
            )
        return spec

    def model_path(self, variant: str = FP32_VARIANT) -> Path:
        """The ONNX file of `variant`, checked to exist and to lie inside the package."""
        file = self.asset(self.manifest.variant(variant).file, f"variant '{variant}' file")
        if not file.is_file():
            raise BadModelError(
                f"package '{self.path}' lists variant '{variant}' but {file.name} is missing; "
                "re-create it with `edge convert` (or `edge quantize` for a variant)"
            )
        return file

    def save(self, manifest: Manifest) -> ModelPackage:
        """Atomically write `manifest` as this package's ``edge.json``; returns the updated package."""
        atomic_write_text(self.path / MANIFEST_NAME, manifest.to_json())
        return ModelPackage(self.path, manifest)
