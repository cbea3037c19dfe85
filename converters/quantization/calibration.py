"""Calibration inputs for static quantization: recipe or built-in sentences, a text file, images, or .npz files.

Every source yields batch-1 feeds keyed by the model's input names. None of them overlaps the held-out
inputs `converters.accuracy` validates on (different sentences, different image seeds). Image files go
through the runtime's own `preprocess_image` (WAV files through `preprocess_audio`), so the ranges
calibrated are the ranges served.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from toolkit.corpus import CALIBRATION_SENTENCES
from toolkit.errors import BadInputError
from toolkit.manifest import ModelPackage
from toolkit.tasks import task_for
from toolkit.tasks.modality import CALIBRATION_SEED, TextModality

__all__ = [
    "CALIBRATION_METHODS",
    "CALIBRATION_SEED",
    "CalibrationData",
    "CalibrationOptions",
    "FeedReader",
    "load_calibration",
]

log = logging.getLogger(__name__)

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
# Folders of media files: (what they are, suffixes, the modality that reads them, what a package without
# it is); the modality's own preprocessing (the runtime's) prepares each file.
_MEDIA_FOLDERS: tuple[tuple[str, tuple[str, ...], str, str], ...] = (
    ("images", IMAGE_SUFFIXES, "image", "is not an image model"),
    ("WAV files", (".wav",), "audio", "takes no waveform"),
)
# Built-in samples by modality: what the source is called, and a warning that they are synthetic.
_SYNTHETIC = {
    "image": (
        "synthetic images",
        "no calibration images given; calibrating on %d synthetic images (pass a folder for real ones)",
    ),
    "audio": (
        "synthetic waveforms",
        "no calibration audio given; calibrating on %d synthetic waveforms (pass a folder of WAV files)",
    ),
    "tensor": ("synthetic inputs", None),
}


@dataclass(frozen=True)
class CalibrationOptions:
    """Where calibration inputs come from (`data`: a .txt file, a folder of images or .npz files, or one .npz;
    None for the recipe's or the built-in samples), how many to use, and the range estimator."""

    method: str = "minmax"
    data: Path | None = None
    samples: int = 32


@dataclass(frozen=True)
class CalibrationData:
    """The feeds to calibrate on, where they came from, and the texts among them (kept out of validation)."""

    feeds: tuple[dict[str, np.ndarray], ...]
    source: str
    texts: tuple[str, ...] = ()


class FeedReader:
    """An onnxruntime `CalibrationDataReader` over a list of feeds (duck-typed: ORT only calls get_next/rewind)."""

    def __init__(self, feeds: Sequence[dict[str, np.ndarray]]) -> None:
        self.feeds = list(feeds)
        self._iter: Iterator[dict[str, np.ndarray]] = iter(self.feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next feed, or None at the end."""
        return next(self._iter, None)

    def rewind(self) -> None:
        """Start again from the first feed."""
        self._iter = iter(self.feeds)

    def __len__(self) -> int:
        return len(self.feeds)


def _recipe_sentences(package: ModelPackage) -> tuple[str, ...] | None:
    recipe_name = package.manifest.source.recipe
    if not recipe_name:
        return None
    from converters.recipes import load_recipe

    try:
        recipe = load_recipe(recipe_name)
    except BadInputError:
        return None
    sentences = recipe.extra.get("calibration", {}).get("sentences")
    return tuple(str(s) for s in sentences) if sentences else None


def _split_npz(path: Path, names: set[str]) -> list[dict[str, np.ndarray]]:
    try:
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise BadInputError(
            f"calibration file '{path}' is not a readable .npz ({exc}); save it with np.savez"
        ) from None
    missing = names - set(arrays)
    if missing:
        raise BadInputError(
            f"calibration file '{path}' lacks input {', '.join(sorted(missing))}; "
            f"save one array per model input ({', '.join(sorted(names))}) with np.savez"
        )
    rows = {int(arrays[n].shape[0]) for n in names}
    if len(rows) != 1:
        raise BadInputError(
            f"calibration file '{path}' has inputs with different batch sizes {sorted(rows)}; make them equal"
        )
    return [{n: arrays[n][i : i + 1] for n in names} for i in range(rows.pop())]


def load_calibration(package: ModelPackage, options: CalibrationOptions) -> CalibrationData:
    """The calibration feeds `options` asks for, at most `options.samples` of them."""
    if options.method not in CALIBRATION_METHODS:
        raise BadInputError(
            f"unknown calibration method '{options.method}'; use one of {', '.join(CALIBRATION_METHODS)}"
        )
    if options.samples < 1:
        raise BadInputError(f"--samples must be at least 1, got {options.samples}")
    manifest = package.manifest
    names = {spec.name for spec in manifest.inputs}
    task = task_for(package)
    text = task.data if isinstance(task.data, TextModality) else None
    limit = options.samples
    data = options.data
    if data is None:
        if text is not None:
            recipe = _recipe_sentences(package)
            texts = (recipe or CALIBRATION_SENTENCES)[:limit]
            source = (
                f"recipe '{manifest.source.recipe}' samples" if recipe else "built-in calibration sentences"
            )
            return CalibrationData(tuple(task.text_samples(texts)), source, texts)
        source, warning = _SYNTHETIC[task.data.kind]
        if warning is not None:
            log.warning(warning, limit)
        return CalibrationData(tuple(task.samples("calibration", limit)), source)
    path = Path(data)
    if not path.exists():
        raise BadInputError(
            f"calibration data '{path}' does not exist; pass a .txt file, a folder of images, WAV clips or .npz files"
        )
    if path.is_file() and path.suffix == ".txt":
        if text is None:
            raise BadInputError(
                f"calibration text '{path}' needs a text model, but package '{package.path}' takes {manifest.inputs[0].describe()}"
            )
        texts = tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())[
            :limit
        ]
        if not texts:
            raise BadInputError(f"calibration text '{path}' is empty; put one sentence on each line")
        return CalibrationData(tuple(task.text_samples(texts)), f"text file {path.name}", texts)
    if path.is_file() and path.suffix == ".npz":
        return CalibrationData(tuple(_split_npz(path, names)[:limit]), f"npz file {path.name}")
    if path.is_file():
        raise BadInputError(
            f"calibration data '{path}' is neither a .txt nor an .npz file nor a folder; pass one of those"
        )
    files = sorted(p for p in path.iterdir() if p.is_file())
    npz = [p for p in files if p.suffix == ".npz"]
    if npz:
        feeds: list[dict[str, np.ndarray]] = []
        for file in npz:
            feeds.extend(_split_npz(file, names))
            if len(feeds) >= limit:
                break
        return CalibrationData(tuple(feeds[:limit]), f"{len(npz)} .npz files in {path.name}")
    for noun, suffixes, kind, mismatch in _MEDIA_FOLDERS:
        media = [p for p in files if p.suffix.lower() in suffixes]
        if not media:
            continue
        if task.data.kind != kind:
            raise BadInputError(
                f"calibration folder '{path}' holds {noun}, but package '{package.path}' {mismatch}"
            )
        name = manifest.inputs[0].name
        return CalibrationData(
            tuple({name: task.data.prepare_file(p)[None]} for p in media[:limit]),
            f"{min(len(media), limit)} {noun} in {path.name}",
        )
    raise BadInputError(
        f"calibration folder '{path}' has no images ({', '.join(IMAGE_SUFFIXES[:3])}, ...), WAV or .npz files; "
        "add some, or leave out --calibration-data to use the built-in samples"
    )
