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
from typing import Any, TypeVar

from toolkit.atomic import atomic_write_text
from toolkit.errors import BadInputError, BadModelError

__all__ = [
    "FORMAT_VERSION",
    "FP32_VARIANT",
    "MANIFEST_NAME",
    "AudioPreprocessing",
    "Host",
    "ImagePreprocessing",
    "Manifest",
    "ModelPackage",
    "OutputCheck",
    "SourceInfo",
    "TensorSpec",
    "TextPreprocessing",
    "Validation",
    "Variant",
    "section_of",
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


@dataclass(frozen=True)
class Variant:
    """One ONNX file of the package with how it was made and how accurate it is.

    `validation` is the measurement made with the file; `verifications` are re-measurements on other hosts
    (`edge verify --update`), one per host int8 path and provider, the newest kept.
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

    def with_verification(self, result: Validation) -> Variant:
        """A copy with `result` recorded, replacing an earlier one from a host of the same int8 path and provider."""

        def key(v: Validation) -> tuple[str, str] | None:
            return (v.host.int8_path, v.host.provider) if v.host else None

        kept = tuple(v for v in self.verifications if key(v) != key(result))
        return dataclasses.replace(self, verifications=(*kept, result))


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
_Section = TypeVar("_Section", TextPreprocessing, ImagePreprocessing, AudioPreprocessing)


def section_of(preprocessing: Preprocessing | None, kind: type[_Section]) -> _Section | None:
    """`preprocessing` when it is a section of `kind`, else None: the one place that tells sections apart."""
    return preprocessing if isinstance(preprocessing, kind) else None


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
        host=Host(**d["host"]) if d.get("host") is not None else None,
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
            verifications=tuple(
                result for r in v.get("verifications", ()) if (result := _validation(r)) is not None
            ),
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
