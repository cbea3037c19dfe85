"""`edge bench` on a generator: time to first token and decode tokens/s over prompt lengths x batch sizes x
new-token counts, for each variant (and the PyTorch model as a baseline, through a timer `converters` gives).

Every backend is timed the same way, interleaved cell by cell: time to first token = median wall time of a
1-token generation; decode tokens/s = batch x (N - 1) / (median N-token time - median 1-token time), greedy with
eos ignored, so every row makes exactly N tokens.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from toolkit.errors import BadInputError
from toolkit.tasks.generate.generator import TextGenerator, TokenPrompt

__all__ = ["GenerationCell", "GenerationTimer", "bench_generation", "generator_timer", "prompt_ids"]

GenerationTimer = Callable[[np.ndarray, int], None]
"""Runs one greedy generation of `n` new tokens (eos ignored) for left-aligned prompt ids [batch, length]."""


@dataclass(frozen=True)
class GenerationCell:
    """One backend at one prompt length, batch size and new-token count."""

    backend: str
    prompt_tokens: int
    batch: int
    new_tokens: int
    ttft_ms: float
    decode_tokens_per_s: float
    runs: int


def prompt_ids(generator: TextGenerator, length: int, text: str) -> list[int]:
    """`length` token ids from `text` (repeated as needed), for prompts of an exact size."""
    ids: list[int] = generator.tokenizer.encode(text, add_special_tokens=False).ids
    if not ids:
        raise BadInputError("the benchmark text encodes to no tokens")
    return (ids * (length // len(ids) + 1))[:length]


def generator_timer(generator: TextGenerator) -> GenerationTimer:
    """A `GenerationTimer` over a `TextGenerator`."""

    def run(ids: np.ndarray, n: int) -> None:
        prompts = [TokenPrompt(tuple(int(i) for i in row)) for row in ids]
        generator.generate(prompts, max_new_tokens=n, ignore_eos=True, do_sample=False)

    return run


def bench_generation(
    timers: Mapping[str, GenerationTimer],
    ids: Mapping[int, Sequence[int]],
    batches: Sequence[int],
    new_tokens: Sequence[int],
    runs: int = 3,
) -> list[GenerationCell]:
    """Time every backend of `timers` on the prompts `ids` (by length) at each batch size and new-token count."""
    if runs < 1:
        raise BadInputError(f"runs must be at least 1, got {runs}")
    if any(n < 2 for n in new_tokens):
        raise BadInputError("--new-tokens values must be at least 2 (one for the first token, one to decode)")
    cells = []
    for length, prompt in ids.items():
        for batch in batches:
            rows = np.asarray([list(prompt)] * batch, dtype=np.int64)
            for timer in timers.values():
                timer(rows, 2)  # warm-up at this shape
            for n in new_tokens:
                first: dict[str, list[float]] = {name: [] for name in timers}
                full: dict[str, list[float]] = {name: [] for name in timers}
                for _ in range(runs):
                    for name, timer in timers.items():
                        started = time.perf_counter()
                        timer(rows, 1)
                        first[name].append(time.perf_counter() - started)
                        started = time.perf_counter()
                        timer(rows, n)
                        full[name].append(time.perf_counter() - started)
                for name in timers:
                    ttft = statistics.median(first[name])
                    decode = max(statistics.median(full[name]) - ttft, 1e-9)
                    cells.append(
                        GenerationCell(name, length, batch, n, ttft * 1e3, batch * (n - 1) / decode, runs)
                    )
    return cells
