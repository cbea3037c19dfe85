"""`edge bench` on a generator: time to first token and decode tokens/s over prompt lengths x batch sizes x
new-token counts, for each variant (and the PyTorch model as a baseline, through a timer `converters` gives).

Every backend is timed the same way, interleaved cell by cell, greedy with eos ignored so every row makes exactly
N tokens: each N-token generation times itself, its first token (prefill included) apart from the N - 1 decode
steps after it, so decode tokens/s = batch x (N - 1) / median decode seconds, a measured time, never the
difference of two runs (which prefill noise can make zero or negative on a small model).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from toolkit.errors import BadInputError
from toolkit.tasks.generate.generator import TextGenerator, TokenPrompt

__all__ = [
    "GenerationCell",
    "GenerationTimer",
    "GenerationTiming",
    "bench_generation",
    "generator_timer",
    "prompt_ids",
]


@dataclass(frozen=True)
class GenerationTiming:
    """One generation as its backend timed it: seconds to the first new token, then seconds decoding the rest."""

    first_token_s: float
    decode_s: float


GenerationTimer = Callable[[np.ndarray, int], GenerationTiming]
"""Runs one greedy generation of `n` new tokens (eos ignored) for left-aligned prompt ids [batch, length]."""


@dataclass(frozen=True)
class GenerationCell:
    """One backend at one prompt length, batch size and new-token count."""

    backend: str
    prompt_tokens: int
    batch: int
    new_tokens: int
    ttft_ms: float
    decode_ms: float
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

    def run(ids: np.ndarray, n: int) -> GenerationTiming:
        prompts = [TokenPrompt(tuple(int(i) for i in row)) for row in ids]
        rows = generator.generate(prompts, max_new_tokens=n, ignore_eos=True, do_sample=False)
        last = max((row.timings for row in rows), key=lambda timings: timings.decode_ms)
        return GenerationTiming(last.first_token_ms / 1e3, last.decode_ms / 1e3)

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
                timed: dict[str, list[GenerationTiming]] = {name: [] for name in timers}
                for _ in range(runs):
                    for name, timer in timers.items():
                        timed[name].append(timer(rows, n))
                for name, timings in timed.items():
                    ttft = statistics.median(t.first_token_s for t in timings)
                    decode = statistics.median(t.decode_s for t in timings)
                    if decode <= 0:  # a timer's bug, not the user's: say so instead of an infinite rate
                        raise RuntimeError(f"{name} reported {decode} s for {n - 1} decode steps")
                    cells.append(
                        GenerationCell(
                            name, length, batch, n, ttft * 1e3, decode * 1e3, batch * (n - 1) / decode, runs
                        )
                    )
    return cells
