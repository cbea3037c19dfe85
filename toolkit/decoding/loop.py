"""The decoding loop every generator shares: choose, append, stop per row, step the model again.

A model plugs in as a `Stepper`: it has already run the prompt (the caller holds those last-position logits)
and turns each step's chosen tokens into the next logits. Decoder-only LMs and encoder-decoders (Whisper's
decoder over its encoder states) differ only there. Rows finish on their own (an eos id, a stop string seen by
a `RowWatcher`, or its own token limit); each row has its own `RowPlan` (sampling, eos ids, limit), so requests
with different settings share one batch; finished rows are fed the pad id until the whole batch is done.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from toolkit.decoding.grammar import RowGrammar
from toolkit.decoding.sampling import LogitsChooser

__all__ = [
    "DecodeStep",
    "FinishReason",
    "Generation",
    "GenerationEvent",
    "GenerationTimings",
    "RowPlan",
    "RowWatcher",
    "Stepper",
    "TokenLogprob",
    "choose_token",
    "decode",
    "settle_token",
    "token_logprob",
]

FinishReason = str  # "eos" | "stop" | "length"


class Stepper(Protocol):
    """A model that has run its prompt and takes one token per row per step."""

    def step(self, tokens: np.ndarray) -> np.ndarray:
        """Feed `tokens` [batch] int64; returns the next logits [batch, vocab]."""
        ...


class RowWatcher(Protocol):
    """Looks at one row's tokens as they come (a detokenizer with stop strings); `stopped` ends the row."""

    stopped: bool

    def add(self, token: int) -> str:
        """Take one token; returns the text it settled."""
        ...


@dataclass(frozen=True)
class TokenLogprob:
    """A chosen token's log-probability under the model (log_softmax of its raw logits, before penalties,
    temperature or a grammar's mask) and the `top` most likely tokens with theirs, most likely first."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class GenerationTimings:
    """Prompt size and speed: prefill (the prompt's forward pass), time to first token, the time spent
    decoding the tokens after the first (timed apart from it) and their rate, (new_tokens - 1) / decode_ms."""

    prompt_tokens: int
    prefill_ms: float
    first_token_ms: float
    new_tokens: int
    decode_ms: float
    decode_tokens_per_s: float
    total_ms: float


@dataclass(frozen=True)
class Generation:
    """One row's result: the text (stop strings cut, special tokens dropped), the new token ids (an eos
    included), why it ended (``eos``, ``stop`` or ``length``), timings shared by its batch and, when asked
    for (``top_logprobs``), each new token's log-probability."""

    text: str
    token_ids: tuple[int, ...]
    finish_reason: FinishReason
    prompt: str
    timings: GenerationTimings
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class GenerationEvent:
    """What one batch row did at a step: `text` it settled (may be empty), the step's token log-probability
    when asked for, and, when it finished, its result."""

    row: int
    text: str
    generation: Generation | None
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class DecodeStep:
    """One step's outcome: each row's token (pad for rows already done), the text each row settled, the
    reasons of rows that finished at this step (None elsewhere) and, for rows that asked, the token's
    log-probability."""

    tokens: np.ndarray
    pieces: tuple[str, ...]
    finished: tuple[FinishReason | None, ...]
    seconds: float
    logprobs: tuple[TokenLogprob | None, ...] = ()


@dataclass(frozen=True)
class RowPlan:
    """One row's rules: how it picks tokens, which ids end it, how many new tokens it may take, the grammar
    its text must follow (None: free) and how many top log-probabilities to report per token (None: none)."""

    chooser: LogitsChooser
    eos_ids: frozenset[int]
    max_new_tokens: int
    grammar: RowGrammar | None = None
    top_logprobs: int | None = None


def token_logprob(logits: np.ndarray, token: int, top: int) -> TokenLogprob:
    """`token`'s log-probability under `logits` [vocab] and the `top` likeliest tokens' (float64 log_softmax)."""
    shifted = logits.astype(np.float64) - float(np.max(logits))
    logprobs = shifted - np.log(np.exp(shifted).sum())
    best: tuple[tuple[int, float], ...] = ()
    if top:
        ids = np.argpartition(-logprobs, top - 1)[:top]
        ids = ids[np.argsort(-logprobs[ids], kind="stable")]
        best = tuple((int(i), float(logprobs[i])) for i in ids)
    return TokenLogprob(token, float(logprobs[token]), best)


def choose_token(plan: RowPlan, logits: np.ndarray, history: np.ndarray) -> tuple[int, TokenLogprob | None]:
    """A row's next token from its `logits` [1, vocab] and `history` [1, seen]: masked by its grammar, chosen
    by its chooser, with its log-probability when the row asked for them."""
    scores = logits if plan.grammar is None else plan.grammar.mask(logits)
    token = int(plan.chooser(scores, history)[0])
    if plan.grammar is not None:
        plan.grammar.advance(token)
    if plan.top_logprobs is None:
        return token, None
    return token, token_logprob(logits[0], token, plan.top_logprobs)


def settle_token(
    plan: RowPlan, watcher: RowWatcher, token: int, index: int
) -> tuple[str, FinishReason | None]:
    """A row's `index`-th new token: the text it settles and why the row ends there (eos, a stop string, its
    limit), if it does."""
    if token in plan.eos_ids:
        return "", "eos"
    piece = watcher.add(token)
    if watcher.stopped:
        return piece, "stop"
    return piece, "length" if index == plan.max_new_tokens - 1 else None


def decode(
    stepper: Stepper,
    logits: np.ndarray,
    history: np.ndarray,
    plans: Sequence[RowPlan],
    watchers: Sequence[RowWatcher],
    pad_id: int,
) -> Iterator[DecodeStep]:
    """Generate from the prompt's last `logits` [batch, vocab] until every row is done; `history`
    [batch, seen] holds the prompt ids (for the repetition penalty). Yields one `DecodeStep` per token."""
    batch = logits.shape[0]
    active = np.ones(batch, dtype=bool)
    longest = max(plan.max_new_tokens for plan in plans)
    started = time.perf_counter()
    for index in range(longest):
        chosen = np.full(batch, pad_id, dtype=np.int64)
        logprobs: list[TokenLogprob | None] = [None] * batch
        for row, plan in enumerate(plans):
            if active[row]:
                chosen[row], logprobs[row] = choose_token(plan, logits[row : row + 1], history[row : row + 1])
        history = np.concatenate([history, chosen[:, None]], axis=1)
        pieces: list[str] = []
        finished: list[FinishReason | None] = []
        for row in range(batch):
            if not active[row]:
                pieces.append("")
                finished.append(None)
                continue
            piece, reason = settle_token(plans[row], watchers[row], int(chosen[row]), index)
            if reason is not None:
                active[row] = False
            pieces.append(piece)
            finished.append(reason)
        now = time.perf_counter()
        yield DecodeStep(chosen, tuple(pieces), tuple(finished), now - started, tuple(logprobs))
        if not active.any():
            return
        started = time.perf_counter()
        logits = stepper.step(chosen)
