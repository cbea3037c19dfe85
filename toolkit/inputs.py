"""Synthetic feeds from a model's input specs: the one generator behind validation, accuracy and benchmarks.

Every dimension is sized by the first rule of `dim_size` that applies (a size named in the limits, the
batch, the sequence, the channels, the image size, a default), and every value is one the model could see:
integer ids inside the spec's ``value_range`` or the vocabulary, attention masks of ones (right-padded
when asked), token type ids of zeros, images as normalised pixels when the limits carry a mean and std.
Runtime side: numpy only, no torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from toolkit.errors import BadInputError
from toolkit.manifest import Dim, TensorSpec

__all__ = [
    "SEQUENCE_TOKENS",
    "InputLimits",
    "dim_size",
    "has_sequence_axis",
    "is_batch_dim",
    "is_sequence_dim",
    "random_feeds",
    "random_tensor",
    "sequence_axis",
    "tensor_shape",
]

SEQUENCE_TOKENS = ("sequence", "seq")


@dataclass(frozen=True)
class InputLimits:
    """What synthetic inputs may be: ids below `vocab_size` (None: unknown, refuse to guess), sequences up to
    `max_length`, images of `image_size` (normalised with `image_mean`/`image_std` when given), sizes for named
    free dims in `dim_sizes`, and `default_dim` for any other free dim (None: refuse to guess)."""

    vocab_size: int | None = 1000
    max_length: int = 128
    image_size: tuple[int, int] | None = (224, 224)
    channels: int = 3
    dim_sizes: Mapping[str, int] = field(default_factory=dict)
    default_dim: int | None = 16
    image_mean: tuple[float, ...] | None = None
    image_std: tuple[float, ...] | None = None


def is_sequence_dim(dim: Dim) -> bool:
    """Whether `dim` is a symbolic dim named like a sequence (``seq``, ``sequence_length``, ...)."""
    return isinstance(dim, str) and any(token in dim.lower() for token in SEQUENCE_TOKENS)


def is_batch_dim(dim: Dim) -> bool:
    """Whether `dim` is a symbolic dim named like the batch (``batch``, ``batch_size``, ...)."""
    return isinstance(dim, str) and "batch" in dim.lower()


def sequence_axis(spec: TensorSpec) -> int | None:
    """The axis of `spec` that is a sequence: a symbolic dim named like one, else axis 1 of a 2-d integer input."""
    for axis, dim in enumerate(spec.shape):
        if is_sequence_dim(dim) and not is_batch_dim(dim):
            return axis
    # token ids are [batch, tokens] whatever the exporter called the second axis
    if spec.dtype.startswith("int") and len(spec.shape) == 2 and isinstance(spec.shape[1], str):
        return 1
    return None


def has_sequence_axis(specs: Sequence[TensorSpec]) -> bool:
    """Whether any input has a sequence axis that validation or a --seq sweep can vary."""
    return any(sequence_axis(spec) is not None for spec in specs)


def dim_size(spec: TensorSpec, axis: int, batch: int, seq: int | None, limits: InputLimits) -> int:
    """The size of `spec`'s `axis` for a feed of `batch` rows and `seq` tokens; fixed dims keep their size."""
    dim = spec.shape[axis]
    if isinstance(dim, int):
        return dim
    if dim in limits.dim_sizes:
        return int(limits.dim_sizes[dim])
    if is_batch_dim(dim):
        return batch
    if seq is not None and (is_sequence_dim(dim) or axis == sequence_axis(spec)):
        return seq
    if axis == 0:
        return batch
    if "channel" in dim.lower():
        return limits.channels
    if limits.image_size is not None and len(spec.shape) == 4 and axis >= 2:
        return limits.image_size[axis - 2]
    if limits.default_dim is not None:
        return limits.default_dim
    raise BadInputError(
        f"input '{spec.name}' has a free dimension '{dim}' (axis {axis}) that synthetic inputs cannot size; "
        "pass real inputs (edge bench: --npz FILE)"
    )


def tensor_shape(spec: TensorSpec, batch: int, seq: int | None, limits: InputLimits) -> tuple[int, ...]:
    """The concrete shape of a synthetic `spec` feed."""
    return tuple(dim_size(spec, axis, batch, seq, limits) for axis in range(len(spec.shape)))


def _is_mask(name: str) -> bool:
    return name.lower().endswith("mask")


def _is_segment(name: str) -> bool:
    lowered = name.lower()
    return "token_type" in lowered or "segment" in lowered


def _mask(shape: tuple[int, ...], dtype: str, padded: bool) -> np.ndarray:
    mask = np.ones(shape, dtype=dtype)
    if padded and len(shape) == 2:
        # right padding, longer for later rows: row r keeps max(1, seq - 1 - 3r) tokens
        for row in range(shape[0]):
            mask[row, max(1, shape[1] - 1 - row * 3) :] = 0
    return mask


def _integers(
    spec: TensorSpec, shape: tuple[int, ...], limits: InputLimits, rng: np.random.Generator
) -> np.ndarray:
    if spec.value_range is not None:
        low, high = spec.value_range
    elif limits.vocab_size is not None:
        low, high = 0, limits.vocab_size - 1
    else:
        raise BadInputError(
            f"input '{spec.name}' takes integer ids but neither its value range nor the vocabulary size is known "
            "(no tokenizer.json or config.json beside the model); pass real inputs (edge bench: --npz FILE)"
        )
    return rng.integers(low, high + 1, size=shape).astype(spec.dtype)


def _floats(
    spec: TensorSpec, shape: tuple[int, ...], limits: InputLimits, rng: np.random.Generator
) -> np.ndarray:
    if limits.image_mean is not None and limits.image_std is not None and len(shape) == 4:
        # pixels in [0, 1], normalised the way the package's preprocessing does it
        pixels = rng.random(shape, dtype=np.float32)
        mean = np.asarray(limits.image_mean, dtype=np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(limits.image_std, dtype=np.float32).reshape(1, -1, 1, 1)
        return ((pixels - mean) / std).astype(spec.dtype)
    return rng.standard_normal(shape).astype(spec.dtype)


def random_tensor(
    spec: TensorSpec,
    batch: int,
    seq: int | None,
    limits: InputLimits,
    rng: np.random.Generator,
    padded: bool = False,
) -> np.ndarray:
    """One synthetic feed for `spec`, with values the model could see."""
    shape = tensor_shape(spec, batch, seq, limits)
    if _is_mask(spec.name):
        return _mask(shape, spec.dtype, padded)
    if _is_segment(spec.name):
        return np.zeros(shape, dtype=spec.dtype)
    if spec.dtype.startswith(("int", "uint")):
        return _integers(spec, shape, limits, rng)
    if spec.dtype == "bool":
        return rng.random(shape) > 0.5
    if spec.dtype.startswith("float"):
        return _floats(spec, shape, limits, rng)
    raise BadInputError(
        f"input '{spec.name}' has dtype {spec.dtype}, which synthetic inputs cannot make; pass real inputs"
    )


def random_feeds(
    specs: Sequence[TensorSpec],
    batch: int,
    seq: int | None,
    limits: InputLimits,
    rng: np.random.Generator | int = 0,
    padded: bool = False,
) -> dict[str, np.ndarray]:
    """Synthetic feeds for every spec, `batch` rows and `seq` tokens; `rng` is a generator or a seed."""
    generator = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    return {spec.name: random_tensor(spec, batch, seq, limits, generator, padded) for spec in specs}
