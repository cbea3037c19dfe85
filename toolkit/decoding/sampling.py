"""Generation settings and the next-token choice: greedy, or sampling with temperature, top-k, top-p and a
repetition penalty, in the order transformers applies them, so greedy decoding matches ``generate``; OpenAI's
presence and frequency penalties are subtracted from the logits before all of them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from toolkit.checks import check_finite_number
from toolkit.decoding.grammar import OutputConstraint
from toolkit.errors import BadInputError

__all__ = [
    "GREEDY_BELOW",
    "MAX_STOP_CHARS",
    "MAX_STOP_STRINGS",
    "MAX_TEMPERATURE",
    "MAX_TOP_LOGPROBS",
    "REPETITION_PENALTY_RANGE",
    "GenerationOptions",
    "LogitsChooser",
    "options_from",
]

# A temperature below this decodes greedily, as vLLM's does: dividing float32 logits by 1e-300 gives
# infinities and NaN probabilities, while the limit of sampling as the temperature goes to 0 is argmax.
GREEDY_BELOW = 1e-5
# transformers and vLLM ask only for a positive temperature and repetition penalty, but both scale the float32
# scores: a penalty of 5e-324 is 0 in float32 (a division by zero, infinite scores), and a penalty or temperature
# of 1e300 overflows float32 on the way in. These bounds keep every score finite (a seen token's logit grows at
# most 100-fold) and hold every value in use (temperatures of 0.1-2, penalties of 1-1.5).
MAX_TEMPERATURE = 100.0
REPETITION_PENALTY_RANGE = (0.01, 100.0)
# Every row checks its stop strings at every step: bounded, so one request cannot slow its batch-mates.
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256
MAX_TOP_LOGPROBS = 20  # OpenAI's limit


@dataclass(frozen=True)
class GenerationOptions:
    """How to generate: length, greedy or sampled, the sampling filters and penalties, stop strings and the
    seed; `ignore_eos` runs to `max_new_tokens` whatever the model says (benchmarks); `constraint` holds the
    text to a grammar; `top_logprobs` asks for each token's log-probability and that many alternatives (None:
    no log-probabilities)."""

    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    constraint: OutputConstraint | None = None
    top_logprobs: int | None = None

    def __post_init__(self) -> None:
        stop = self.stop
        if isinstance(stop, str):
            stop = (stop,)
        if not isinstance(stop, Sequence) or any(not isinstance(s, str) or not s for s in stop):
            raise BadInputError(
                f"stop must be a non-empty string or a list of non-empty strings, got {self.stop!r}; "
                'pass e.g. stop=["\\n\\n"]'
            )
        object.__setattr__(self, "stop", tuple(stop))
        if len(self.stop) > MAX_STOP_STRINGS or any(len(s) > MAX_STOP_CHARS for s in self.stop):
            raise BadInputError(
                f"stop takes at most {MAX_STOP_STRINGS} strings of at most {MAX_STOP_CHARS} characters, got "
                f"{len(self.stop)} (longest {max(len(s) for s in self.stop)}); send fewer, shorter ones"
            )
        for name in ("temperature", "top_p", "repetition_penalty", "presence_penalty", "frequency_penalty"):
            check_finite_number(name, getattr(self, name))
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**64
        ):
            raise BadInputError(f"seed must be an integer in [0, 2**64), got {self.seed!r}")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise BadInputError(
                f"max_new_tokens must be an integer of at least 1, got {self.max_new_tokens!r}; pass e.g. 32"
            )
        if not 0 < self.temperature <= MAX_TEMPERATURE:
            raise BadInputError(
                f"temperature must be in (0, {MAX_TEMPERATURE:g}], got {self.temperature}; "
                "use do_sample=False for greedy decoding"
            )
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise BadInputError(f"top_k must be an integer of 0 (off) or more, got {self.top_k!r}")
        if not 0 < self.top_p <= 1:
            raise BadInputError(f"top_p must be in (0, 1], got {self.top_p}; 1 turns it off")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2 <= getattr(self, name) <= 2:
                raise BadInputError(f"{name} must be in [-2, 2] (OpenAI's range), got {getattr(self, name)}")
        if self.top_logprobs is not None and (
            isinstance(self.top_logprobs, bool)
            or not isinstance(self.top_logprobs, int)
            or not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS
        ):
            raise BadInputError(
                f"top_logprobs must be an integer in [0, {MAX_TOP_LOGPROBS}], got {self.top_logprobs!r}"
            )
        low, high = REPETITION_PENALTY_RANGE
        if not low <= self.repetition_penalty <= high:
            raise BadInputError(
                f"repetition_penalty must be in [{low:g}, {high:g}], got {self.repetition_penalty}; 1 turns it off"
            )


_NAMES = {f.name for f in fields(GenerationOptions)}


def options_from(defaults: Mapping[str, Any], overrides: Mapping[str, Any]) -> GenerationOptions:
    """Options from the model's `defaults` (generation_config.json) with the caller's non-None `overrides`."""
    unknown = sorted(set(overrides) - _NAMES)
    if unknown:
        raise BadInputError(f"unknown generation option '{unknown[0]}'; use: {', '.join(sorted(_NAMES))}")
    base = GenerationOptions(**{k: v for k, v in defaults.items() if k in _NAMES and v is not None})
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})


class LogitsChooser:
    """Picks each row's next token from its last-position logits under `options` (seeded for sampling); it
    counts the tokens it picked for the presence and frequency penalties."""

    def __init__(self, options: GenerationOptions) -> None:
        self.options = options
        self.rng = np.random.default_rng(options.seed)
        self._counts: np.ndarray | None = None  # [batch, vocab]: how often each row picked each token

    def __call__(self, logits: np.ndarray, history: np.ndarray) -> np.ndarray:
        """`logits` [batch, vocab], `history` [batch, seen] token ids (prompt and generated) -> [batch] ids."""
        o = self.options
        if not (o.presence_penalty or o.frequency_penalty):
            return self._choose(logits, history)
        if self._counts is None:
            self._counts = np.zeros(logits.shape, dtype=np.float32)
        # OpenAI: mu[j] - c[j] * frequency_penalty - (c[j] > 0) * presence_penalty, c[j] counting the tokens
        # generated so far (not the prompt's)
        penalty = self._counts * o.frequency_penalty + (self._counts > 0) * np.float32(o.presence_penalty)
        chosen = self._choose(logits.astype(np.float32) - penalty, history)
        self._counts[np.arange(len(chosen)), chosen] += 1
        return chosen

    def _choose(self, logits: np.ndarray, history: np.ndarray) -> np.ndarray:
        scores = logits.astype(np.float32, copy=True)
        o = self.options
        if o.repetition_penalty != 1.0:
            scores = _repetition_penalty(scores, history, o.repetition_penalty)
        if not o.do_sample or o.temperature < GREEDY_BELOW:
            return np.asarray(np.argmax(scores, axis=-1), dtype=np.int64)
        if o.temperature != 1.0:
            scores = scores / o.temperature
        if o.top_k:
            scores = _top_k(scores, o.top_k)
        if o.top_p < 1.0:
            scores = _top_p(scores, o.top_p)
        probs = np.exp(scores - scores.max(axis=-1, keepdims=True))
        probs /= probs.sum(axis=-1, keepdims=True)
        # inverse-CDF draw per row: one uniform each, reproducible for a seed
        draws = self.rng.random(probs.shape[0])
        cdf = np.cumsum(probs, axis=-1)
        picks = (cdf < draws[:, None] * cdf[:, -1:]).sum(axis=-1)
        return np.asarray(np.minimum(picks, probs.shape[-1] - 1), dtype=np.int64)


def _repetition_penalty(scores: np.ndarray, history: np.ndarray, penalty: float) -> np.ndarray:
    """transformers' RepetitionPenaltyLogitsProcessor: seen tokens' scores divided (or, when negative,
    multiplied) by `penalty`."""
    rows = np.arange(scores.shape[0])[:, None]
    seen = scores[rows, history]
    scores[rows, history] = np.where(seen < 0, seen * penalty, seen / penalty)
    return scores


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    k = min(k, scores.shape[-1])
    kth = np.partition(scores, -k, axis=-1)[:, -k][:, None]
    return np.where(scores < kth, -np.inf, scores)


def _top_p(scores: np.ndarray, top_p: float) -> np.ndarray:
    """transformers' TopPLogitsWarper: drop the low tail whose mass is at most 1 - top_p (keep at least one)."""
    order = np.argsort(scores, axis=-1, kind="stable")  # ascending
    ordered = np.take_along_axis(scores, order, axis=-1)
    probs = np.exp(ordered - ordered.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    remove = np.cumsum(probs, axis=-1) <= (1 - top_p)
    remove[:, -1] = False
    removed = np.zeros_like(remove)
    np.put_along_axis(removed, order, remove, axis=-1)
    return np.where(removed, -np.inf, scores)
