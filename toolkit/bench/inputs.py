"""Benchmark inputs: synthetic feeds with valid values from a model's input specs, or real text / .npz feeds.

Synthetic token ids stay inside the package's vocabulary (read from ``tokenizer.json`` or ``config.json``,
never guessed), attention masks are all ones, token type ids zeros, and images are drawn in [0, 1] and
normalised with the package's mean and std, so every benchmark runs the model on inputs it could see.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.errors import BadInputError, BadModelError
from toolkit.inputs import InputLimits, has_sequence_axis, random_feeds, sequence_axis
from toolkit.manifest import ImagePreprocessing, Manifest, TensorSpec, TextPreprocessing, resolve_inside

__all__ = [
    "DEFAULT_SEQUENCE",
    "BenchInput",
    "InputSource",
    "has_sequence_axis",
    "load_npz",
    "load_texts",
    "max_sequence_length",
    "npz_feeds",
    "sequence_dim",
    "synthetic_feeds",
    "text_feeds",
    "vocab_size_of",
]

log = logging.getLogger(__name__)

DEFAULT_SEQUENCE = 128


@dataclass(frozen=True)
class InputSource:
    """Where a model's facts for inputs come from: specs, and the package folder and manifest when there is one."""

    specs: tuple[TensorSpec, ...]
    folder: Path
    manifest: Manifest | None = None
    vocab_size: int | None = None
    max_length: int | None = None


@dataclass(frozen=True)
class BenchInput:
    """One set of feeds for a benchmark cell: batch size, sequence length (None when the model has none)."""

    batch: int
    seq: int | None
    kind: str
    feeds: Mapping[str, np.ndarray] = field(repr=False, compare=False)


def sequence_dim(spec: TensorSpec) -> int | None:
    """The axis of `spec` that is a sequence (a symbolic dim named like ``sequence_length``), if any."""
    return sequence_axis(spec)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except json.JSONDecodeError as exc:
        raise BadModelError(
            f"'{path}' is not valid JSON ({exc}); re-create the package with `edge convert`"
        ) from None


def vocab_size_of(folder: Path, manifest: Manifest | None) -> int | None:
    """The vocabulary size from the package's tokenizer (``tokenizer.json``) or ``config.json``; None if neither says."""
    text = manifest.section(TextPreprocessing) if manifest is not None else None
    tokenizer_file = (
        resolve_inside(folder, text.tokenizer, "tokenizer") if text is not None else folder / "tokenizer.json"
    )
    if tokenizer_file.is_file():
        from tokenizers import Tokenizer

        return int(Tokenizer.from_file(str(tokenizer_file)).get_vocab_size(with_added_tokens=True))
    vocab = _read_json(folder / "config.json").get("vocab_size")
    return int(vocab) if isinstance(vocab, int) else None


def max_sequence_length(source: InputSource) -> int | None:
    """The longest sequence the model takes: the fixed dim, else the package's max length, else config.json's."""
    for spec in source.specs:
        axis = sequence_dim(spec)
        if axis is not None and isinstance(spec.shape[axis], int):
            return int(spec.shape[axis])
    if source.max_length is not None:
        return source.max_length
    positions = _read_json(source.folder / "config.json").get("max_position_embeddings")
    return int(positions) if isinstance(positions, int) else None


def _limits(source: InputSource) -> InputLimits:
    """Bench never guesses: an unknown vocabulary or a free dimension is an error that points at --npz."""
    image = source.manifest.section(ImagePreprocessing) if source.manifest is not None else None
    return InputLimits(
        vocab_size=source.vocab_size,
        max_length=source.max_length or DEFAULT_SEQUENCE,
        image_size=(image.crop_size or image.size) if image is not None else None,
        default_dim=None,
        image_mean=image.mean if image is not None else None,
        image_std=image.std if image is not None else None,
    )


def synthetic_feeds(source: InputSource, batch: int, seq: int | None, seed: int = 0) -> BenchInput:
    """Random feeds with valid values for every input, shaped [batch, seq, ...] as the specs say."""
    feeds = random_feeds(source.specs, batch, seq, _limits(source), seed)
    return BenchInput(batch, seq, "synthetic", feeds)


def load_texts(path: Path) -> list[str]:
    """Non-empty lines of a text file."""
    if not path.is_file():
        raise BadInputError(f"--text file '{path}' does not exist; pass a UTF-8 file with one text per line")
    texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        raise BadInputError(f"--text file '{path}' has no non-empty lines; put one text per line")
    return texts


def text_feeds(source: InputSource, texts: Sequence[str], batch: int, seq: int | None) -> BenchInput:
    """Real text, cycled to `batch` rows, truncated and padded to exactly `seq` tokens (or the longest row)."""
    text = source.manifest.section(TextPreprocessing) if source.manifest is not None else None
    if text is None:
        raise BadInputError(
            "--text needs a model package with a tokenizer (text preprocessing in edge.json); "
            "use synthetic inputs or --npz FILE"
        )
    from toolkit.preprocess import TextTokenizer

    limit = seq if seq is not None else text.max_length
    tokenizer = TextTokenizer(resolve_inside(source.folder, text.tokenizer, "tokenizer"), limit)
    rows = [texts[i % len(texts)] for i in range(batch)]
    encodings = tokenizer.encode(rows)
    padded = tokenizer.pad(encodings)
    if seq is not None and padded["input_ids"].shape[1] < seq:
        extra = seq - padded["input_ids"].shape[1]
        padded["input_ids"] = np.pad(
            padded["input_ids"], ((0, 0), (0, extra)), constant_values=tokenizer.pad_id
        )
        padded["attention_mask"] = np.pad(padded["attention_mask"], ((0, 0), (0, extra)))
        padded["token_type_ids"] = np.pad(padded["token_type_ids"], ((0, 0), (0, extra)))
    names = {spec.name for spec in source.specs}
    feeds = {k: v for k, v in padded.items() if k in names}
    return BenchInput(batch, int(padded["input_ids"].shape[1]), "text", feeds)


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an .npz file by name."""
    if not path.is_file():
        raise BadInputError(
            f"--npz file '{path}' does not exist; save inputs with numpy.savez(path, name=array)"
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (ValueError, OSError) as exc:
        raise BadInputError(f"--npz file '{path}' is not a numpy .npz archive ({exc})") from None


def npz_feeds(source: InputSource, arrays: Mapping[str, np.ndarray], batch: int | None) -> BenchInput:
    """Real feeds from an .npz; rows are cycled along axis 0 to `batch` when a batch size is given."""
    names = [spec.name for spec in source.specs]
    missing = [n for n in names if n not in arrays]
    if missing:
        raise BadInputError(
            f"--npz file has no array {missing[0]!r}; it needs {', '.join(repr(n) for n in names)}"
        )
    feeds = {n: np.asarray(arrays[n]) for n in names}
    rows = int(next(iter(feeds.values())).shape[0])
    if batch is not None and batch != rows:
        index = np.arange(batch) % rows
        feeds = {n: np.ascontiguousarray(a[index]) for n, a in feeds.items()}
    seq = None
    for spec in source.specs:
        axis = sequence_dim(spec)
        if axis is not None and feeds[spec.name].ndim > axis:
            seq = int(feeds[spec.name].shape[axis])
            break
    return BenchInput(batch if batch is not None else rows, seq, "npz", feeds)
