"""int4's block size and accuracy level, chosen by measurement on this host.

Each candidate (block 32, 64, 128 at the host's preferred accuracy level, then the best block at the other
level) is built, scored on the held-out inputs (the package's built-in samples, or the user's own text given
with `--held-out`) with the task's metric (next-token agreement for a generator) and timed on the task's timing
feeds (one decode step), interleaved with fp32 in one process. The fastest candidate within the budget wins;
within `LATENCY_TIE` of it, the smaller block (finer scales, more accurate). When none meets the budget, the most
accurate one wins. Accuracy level 4 quantizes activations to int8 per block and uses the integer dot-product
kernels (VNNI, AMX, ARM dotprod); level 1 computes in fp32.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from converters.accuracy import (
    compare_variant,
    latency_feeds,
    measure_latency,
    reference_outputs,
)
from toolkit.host import current_host
from toolkit.manifest import FP32_VARIANT, ModelPackage
from toolkit.runner import Runner

__all__ = ["INT4_BLOCK_SIZES", "Int4Choice", "search_int4"]

INT4_BLOCK_SIZES = (32, 64, 128)
LATENCY_TIE = 0.03
# int8 paths with an integer dot-product instruction: int8 activations (level 4) pay there
DOT_PRODUCT_PATHS = frozenset({"amx", "avx512-vnni", "avx-vnni", "arm-dotprod", "arm-i8mm"})

Build = Callable[[int, int, Path], None]


@dataclass(frozen=True)
class Int4Choice:
    """The picked block size and accuracy level, and every candidate's figures (for the variant's settings)."""

    block_size: int
    accuracy_level: int
    file: Path
    candidates: tuple[dict[str, Any], ...]


def search_int4(
    package: ModelPackage,
    source: Path,
    folder: Path,
    build: Build,
    held_out: Sequence[Mapping[str, np.ndarray]],
    budget: float,
    threads: int,
    runs: int,
) -> Int4Choice:
    """Build the int4 candidates with `build(block, level, out)`, score them on `held_out` and time them;
    returns the pick."""
    preferred, other = (4, 1) if current_host("cpu").int8_path in DOT_PRODUCT_PATHS else (1, 4)
    wanted = reference_outputs(Runner(source, "cpu", threads=threads), held_out)
    scores: dict[tuple[int, int], float] = {}
    files: dict[tuple[int, int], Path] = {}

    def attempt(block: int, level: int) -> None:
        out = folder / f"int4-block{block}-level{level}.onnx"
        build(block, level, out)
        files[(block, level)] = out
        scores[(block, level)] = compare_variant(
            package, Runner(out, "cpu", threads=threads), held_out, wanted
        ).score

    for block in INT4_BLOCK_SIZES:
        attempt(block, preferred)
    best_block = max(INT4_BLOCK_SIZES, key=lambda b: (scores[(b, preferred)], -b))
    attempt(best_block, other)
    names = {key: f"block {key[0]} level {key[1]}" for key in files}
    latency = measure_latency(
        {FP32_VARIANT: source, **{names[key]: path for key, path in files.items()}},
        latency_feeds(package),
        runs=runs,
        threads=threads,
    )
    timings = {key: latency.median_ms[names[key]] for key in files}
    fitting = [key for key in files if scores[key] >= budget]
    if fitting:
        fastest = min(timings[key] for key in fitting)
        tied = [key for key in fitting if timings[key] <= fastest * (1 + LATENCY_TIE)]
        pick = min(tied, key=lambda key: (key[0], timings[key]))
    else:
        pick = max(files, key=lambda key: (scores[key], -timings[key]))
    rows = tuple(
        {
            "block_size": key[0],
            "accuracy_level": key[1],
            "score": round(scores[key], 6),
            "latency_ms": round(timings[key], 3),
            "meets_budget": scores[key] >= budget,
        }
        for key in files
    )
    return Int4Choice(pick[0], pick[1], files[pick], rows)
