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

import numpy as np

from toolkit.errors import BadInputError, BadModelError
from toolkit.manifest import ImagePreprocessing, Manifest, TensorSpec, TextPreprocessing

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
_SEQUENCE_TOKENS = ("sequence", "seq")


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
    for axis, dim in enumerate(spec.shape):
        if axis > 0 and isinstance(dim, str) and any(t in dim.lower() for t in _SEQUENCE_TOKENS):
            return axis
    if spec.dtype.startswith("int") and len(spec.shape) == 2 and isinstance(spec.shape[1], str):
        return 1
    return None


def has_sequence_axis(specs: Sequence[TensorSpec]) -> bool:
    """Whether any input has a sequence axis that a --seq sweep can vary."""
    return any(sequence_dim(spec) is not None for spec in specs)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except json.JSONDecodeError as exc:
        raise BadModelError(
            f"'{path}' is not valid JSON ({exc}); re-create the package with `edge convert`"
        ) from None


def vocab_size_of(folder: Path, manifest: Manifest | None) -> int | None:
    """The vocabulary size from the package's tokenizer (``tokenizer.json``) or ``config.json``; None if neither says."""
    tokenizer_file = folder / "tokenizer.json"
    if manifest is not None and isinstance(manifest.preprocessing, TextPreprocessing):
        tokenizer_file = folder / manifest.preprocessing.tokenizer
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


def _image_hw(manifest: Manifest | None) -> tuple[int, int] | None:
    if manifest is not None and isinstance(manifest.preprocessing, ImagePreprocessing):
        pre = manifest.preprocessing
        return pre.crop_size or pre.size
    return None


def _shape(spec: TensorSpec, batch: int, seq: int | None, source: InputSource) -> tuple[int, ...]:
    seq_axis = sequence_dim(spec)
    image = _image_hw(source.manifest)
    shape = []
    for axis, dim in enumerate(spec.shape):
        if isinstance(dim, int):
            shape.append(dim)
        elif axis == 0:
            shape.append(batch)
        elif axis == seq_axis and seq is not None:
            shape.append(seq)
        elif "channel" in dim.lower():
            shape.append(3)
        elif image is not None and len(spec.shape) == 4 and axis >= 2:
            shape.append(image[axis - 2])
        else:
            raise BadInputError(
                f"input '{spec.name}' has a free dimension '{dim}' (axis {axis}) that edge bench cannot size; "
                "pass real inputs with --npz FILE"
            )
    return tuple(shape)


def synthetic_feeds(source: InputSource, batch: int, seq: int | None, seed: int = 0) -> BenchInput:
    """Random feeds with valid values for every input, shaped [batch, seq, ...] as the specs say."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    manifest = source.manifest
    for spec in source.specs:
        shape = _shape(spec, batch, seq, source)
        name = spec.name.lower()
        if "attention_mask" in name or name.endswith("mask"):
            feeds[spec.name] = np.ones(shape, dtype=spec.dtype)
        elif "token_type" in name or "segment" in name:
            feeds[spec.name] = np.zeros(shape, dtype=spec.dtype)
        elif spec.dtype.startswith(("int", "uint")):
            if spec.value_range is not None:
                low, high = spec.value_range
            elif source.vocab_size is not None:
                low, high = 0, source.vocab_size - 1
            else:
                raise BadInputError(
                    f"input '{spec.name}' takes integer ids but the model's vocabulary size is unknown "
                    "(no tokenizer.json or config.json beside it); pass real inputs with --npz FILE"
                )
            feeds[spec.name] = rng.integers(low, high + 1, size=shape).astype(spec.dtype)
        elif spec.dtype == "bool":
            feeds[spec.name] = np.ones(shape, dtype=bool)
        elif spec.dtype.startswith(("float", "bfloat")):
            pre = manifest.preprocessing if manifest is not None else None
            if isinstance(pre, ImagePreprocessing) and len(shape) == 4:
                pixels = rng.random(shape, dtype=np.float32)
                mean = np.asarray(pre.mean, dtype=np.float32).reshape(1, -1, 1, 1)
                std = np.asarray(pre.std, dtype=np.float32).reshape(1, -1, 1, 1)
                feeds[spec.name] = ((pixels - mean) / std).astype(spec.dtype)
            else:
                feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        else:
            raise BadInputError(
                f"input '{spec.name}' has dtype {spec.dtype}, which edge bench cannot synthesise; pass --npz FILE"
            )
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
    manifest = source.manifest
    if manifest is None or not isinstance(manifest.preprocessing, TextPreprocessing):
        raise BadInputError(
            "--text needs a model package with a tokenizer (text preprocessing in edge.json); "
            "use synthetic inputs or --npz FILE"
        )
    from toolkit.pipelines import TextTokenizer

    limit = seq if seq is not None else manifest.preprocessing.max_length
    tokenizer = TextTokenizer(source.folder / manifest.preprocessing.tokenizer, limit)
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
