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
from pathlib import Path
from typing import Any

from toolkit.atomic import atomic_write_text
from toolkit.errors import BadInputError, BadModelError

__all__ = [
    "FORMAT_VERSION",
    "FP32_VARIANT",
    "MANIFEST_NAME",
    "AudioPreprocessing",
    "GenerationSpec",
    "ImagePreprocessing",
    "Manifest",
    "ModelPackage",
    "OutputCheck",
    "SourceInfo",
    "TensorSpec",
    "TextPreprocessing",
    "Validation",
    "Variant",
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
class OutputCheck:
    """One output's comparison against the reference: worst absolute difference over all cases."""

    name: str
    max_abs_diff: float
    mean_abs_diff: float
    passed: bool


@dataclass(frozen=True)
class Validation:
    """How a variant compares with its reference (PyTorch for the export, fp32 for variants)."""

    metric: str
    value: float
    threshold: float
    reference: str
    samples: int
    passed: bool
    outputs: tuple[OutputCheck, ...] = ()
    cases: tuple[str, ...] = ()


@dataclass(frozen=True)
class Variant:
    """One ONNX file of the package with how it was made and how accurate it is."""

    name: str
    file: str
    precision: str
    method: str
    size_bytes: int
    settings: Mapping[str, Any] = field(default_factory=dict)
    validation: Validation | None = None
    tool_versions: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TextPreprocessing:
    """Tokenizer file and the sentence-transformers style pooling applied after the model."""

    tokenizer: str
    max_length: int
    pooling: str | None = None
    normalize: bool = False
    output: str | None = None
    kind: str = "text"


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


# --- generation contract (issue 15) ---------------------------------------------------------------------
@dataclass(frozen=True)
class GenerationSpec:
    """What a generator needs beyond the graph: the KV cache layout, the positions, special ids, chat template.

    The decoder takes ``past_key_values.{i}.key`` / ``.value`` and returns ``present.{i}.key`` / ``.value``,
    each ``[batch, kv_heads, positions, head_dim]`` of `cache_dtype`, for ``i < layers``. `defaults` are the
    model's ``generation_config.json`` settings (do_sample, temperature, top_k, top_p, repetition_penalty,
    max_new_tokens) that a caller's arguments override.
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


def _generation(d: Mapping[str, Any] | None) -> GenerationSpec | None:
    if d is None:
        return None
    return GenerationSpec(
        **{**d, "eos_token_ids": tuple(int(i) for i in d["eos_token_ids"]), "defaults": d.get("defaults", {})}
    )


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
    generation: GenerationSpec | None = None  # generators only (issue 15)

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
        if data["generation"] is None:
            del data["generation"]  # only generators carry one (issue 15)
        ordered = {"format": data.pop("format"), **data}
        return json.dumps(ordered, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, origin: str) -> Manifest:
        """Parse; `origin` names the file in error messages."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BadModelError(
                f"{origin} is not valid JSON ({exc}); re-create the package with `edge convert`"
            ) from None
        if not isinstance(data, dict):
            raise BadModelError(f"{origin} is not an edge-toolkit manifest; re-create it with `edge convert`")
        version = data.get("format")
        if version != FORMAT_VERSION:
            raise BadModelError(
                f"{origin} has manifest format {version!r}, this edge-toolkit reads format {FORMAT_VERSION}; "
                "re-create the package with this version's `edge convert`"
            )
        try:
            return _manifest_from_dict(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise BadModelError(
                f"{origin} is missing or has a malformed field ({exc!r}); re-create it with `edge convert`"
            ) from None


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
        outputs=tuple(OutputCheck(**o) for o in d.get("outputs", ())),
        cases=tuple(d.get("cases", ())),
    )


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
        generation=_generation(data.get("generation")),  # issue 15
    )


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
        return cls(root, Manifest.from_json(manifest_path.read_text(encoding="utf-8"), str(manifest_path)))

    def model_path(self, variant: str = FP32_VARIANT) -> Path:
        """The ONNX file of `variant`, checked to exist."""
        file = self.path / self.manifest.variant(variant).file
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
