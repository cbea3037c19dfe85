"""Step-level (continuous) batching: requests join a running batch between decode steps and leave it when
they finish, each with its own settings, stop strings and limit.

A joining prompt runs its prefill alone (batch 1), then its cache is merged into the running batch with every
row right-aligned at the longest row's length (shorter rows padded on the left and masked); a finished row is
dropped the same way. Regrouping copies each row's cache once per join or leave; every other step is one
decoder run over the whole batch, as in `decode`. Used by `edge serve`'s generation workers.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

import numpy as np

from toolkit.decoding.decoder import PREFILL_CHUNK, DecoderStepper
from toolkit.decoding.detokenizer import IncrementalDetokenizer
from toolkit.decoding.loop import (
    Generation,
    GenerationEvent,
    GenerationTimings,
    RowPlan,
    TokenLogprob,
    choose_token,
    settle_token,
)
from toolkit.decoding.sampling import GenerationOptions
from toolkit.manifest import GenerationSpec
from toolkit.runner import Runner

__all__ = ["BatchedGenerator", "ContinuousBatch"]

_P = TypeVar("_P")
_P_contra = TypeVar("_P_contra", contravariant=True)


class BatchedGenerator(Protocol[_P_contra]):
    """What step-level batching asks of a decoder-only generator (the generate task's `TextGenerator`): its
    decoder session and contract, how it encodes a prompt of type `_P_contra`, and each row's rules."""

    spec: GenerationSpec
    runner: Runner
    device: str
    device_id: int

    def encode(self, prompt: _P_contra) -> tuple[str, list[int]]:
        """The prompt's text and token ids."""
        ...

    def check_length(self, ids: Sequence[int]) -> None:
        """Raise when a prompt of `ids` leaves no room for a new token."""
        ...

    def row_plan(self, options: GenerationOptions, room: int) -> RowPlan:
        """A row's rules under `options`, capped at `room` new tokens."""
        ...

    def detokenizer(self, options: GenerationOptions) -> IncrementalDetokenizer:
        """A row's incremental detokenizer watching `options.stop`."""
        ...


@dataclass
class _Row:
    key: int
    text: str
    prompt_tokens: int
    plan: RowPlan
    watcher: IncrementalDetokenizer
    history: list[int]
    prefill_ms: float
    started: float
    new: int  # positions this row still needs in the cache
    tokens: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    first_ms: float = 0.0
    first_at: float = 0.0


class ContinuousBatch(Generic[_P]):
    """The rows decoding together on one generator; `add` between steps, `step` to advance every row. Prompts
    longer than `prefill_chunk` (row-length graphs) wait beside the batch, one piece of their prefill run per
    step, and join it when it is done."""

    def __init__(self, generator: BatchedGenerator[_P], prefill_chunk: int | None = PREFILL_CHUNK) -> None:
        self.generator = generator
        self.prefill_chunk = prefill_chunk
        self.rows: list[_Row] = []
        self.prefilling: list[tuple[list[_Row], DecoderStepper]] = []  # rows of one prompt, its prefill
        self._stepper: DecoderStepper | None = None
        self._logits: np.ndarray | None = None  # [rows, vocab]: each row's next-token logits
        self.regroups = 0

    @property
    def size(self) -> int:
        """Rows decoding now or still prefilling."""
        return len(self.rows) + sum(len(rows) for rows, _ in self.prefilling)

    def add(self, key: int, prompt: _P, options: GenerationOptions) -> None:
        """Prefill `prompt` alone and merge it into the batch (a long one: piece by piece over the next steps);
        its events will carry `key` as their row."""
        self.add_rows({key: options}, prompt)

    def add_rows(self, rows: dict[int, GenerationOptions], prompt: _P) -> None:
        """Prefill `prompt` once and merge one row per key of `rows` into the batch, each with its options
        (OpenAI's ``n``: several completions of one prompt share its prefill)."""
        generator = self.generator
        spec = generator.spec
        started = time.perf_counter()
        text, ids = generator.encode(prompt)
        generator.check_length(ids)
        plans = {
            key: generator.row_plan(options, spec.max_positions - len(ids)) for key, options in rows.items()
        }
        prompt_ids = np.asarray([ids], dtype=np.int64)
        session, device = generator.runner.session, (generator.device, generator.device_id)

        def joining() -> list[_Row]:  # made once the prefill (or its start) is done: rows time it from there
            return [self._row(key, text, ids, plan, rows[key], started) for key, plan in plans.items()]

        chunk = self.prefill_chunk
        if chunk is not None and spec.row_lengths and len(ids) > chunk:
            waiting = DecoderStepper.chunked(session, spec, prompt_ids, len(ids) + 1, *device)
            self.prefilling.append((joining(), waiting))
            return
        alone = DecoderStepper(session, spec, prompt_ids, np.ones_like(prompt_ids), len(ids) + 1, *device)
        self._join(joining(), alone)

    def _row(
        self, key: int, text: str, ids: list[int], plan: RowPlan, options: GenerationOptions, started: float
    ) -> _Row:
        """A row of request `key` (its prefill so far counted from `started`)."""
        return _Row(
            key=key,
            text=text,
            prompt_tokens=len(ids),
            plan=plan,
            watcher=self.generator.detokenizer(options),
            history=list(ids),
            prefill_ms=(time.perf_counter() - started) * 1e3,
            started=started,
            new=plan.max_new_tokens,
        )

    def _join(self, joining: list[_Row], alone: DecoderStepper) -> None:
        """Merge `joining`, rows of the one prompt `alone` has run, into the batch."""
        sources = [(self._stepper, i) for i in range(len(self.rows))] if self._stepper else []
        self._regroup([*self.rows, *joining], [*sources, *[(alone, 0)] * len(joining)])
        logits = np.repeat(alone.logits, len(joining), axis=0)
        self._logits = logits if self._logits is None else np.concatenate([self._logits, logits])

    def _regroup(self, rows: list[_Row], sources: list[tuple[DecoderStepper, int]]) -> None:
        """Rebuild the cache for `rows`, row i taken from `sources[i]` (stepper, row index)."""
        self.rows = rows
        self.regroups += 1
        if not rows:
            self._stepper = None
            return
        session, spec = self.generator.runner.session, self.generator.spec
        self._stepper = DecoderStepper.regroup(session, spec, sources, [r.new for r in rows])

    def drop(self, keys: set[int]) -> None:
        """Take the rows of `keys` out of the batch now (their clients left): their cache columns and logits
        are freed at once, and the other rows decode on as if those had never joined."""
        waiting = [
            ([row for row in rows if row.key not in keys], stepper) for rows, stepper in self.prefilling
        ]
        self.prefilling = [(rows, stepper) for rows, stepper in waiting if rows]
        keep = [i for i, row in enumerate(self.rows) if row.key not in keys]
        if len(keep) == len(self.rows):
            return
        stepper = self._stepper
        assert stepper is not None  # rows decoding have a stepper
        self._regroup([self.rows[i] for i in keep], [(stepper, i) for i in keep])
        self._logits = self._logits[keep] if self._logits is not None and keep else None

    def step(self) -> list[GenerationEvent]:
        """Run a piece of the first waiting prompt (joining the batch when done), choose every row's next token,
        report it, drop finished rows and run the decoder for the rest."""
        if self.prefilling:
            joining, waiting = self.prefilling[0]
            assert self.prefill_chunk is not None  # rows wait only when it is set
            if waiting.prefill(self.prefill_chunk):
                del self.prefilling[0]
                for row in joining:
                    row.prefill_ms = (time.perf_counter() - row.started) * 1e3
                self._join(joining, waiting)
        if not self.rows or self._logits is None or self._stepper is None:
            return []
        events: list[GenerationEvent] = []
        chosen: list[int] = []
        keep: list[int] = []
        now = time.perf_counter()
        for index, row in enumerate(self.rows):
            token, logprob = choose_token(
                row.plan, self._logits[index : index + 1], np.asarray([row.history])
            )
            chosen_logprob = (logprob,) if logprob is not None else ()
            row.logprobs.extend(chosen_logprob)
            if not row.tokens:
                row.first_ms = (now - row.started) * 1e3
                row.first_at = now
            row.tokens.append(token)
            row.history.append(token)
            row.new -= 1
            piece, reason = settle_token(row.plan, row.watcher, token, len(row.tokens) - 1)
            if reason is None:
                keep.append(index)
                chosen.append(token)
                if piece or chosen_logprob:
                    events.append(GenerationEvent(row.key, piece, None, chosen_logprob))
                continue
            decode_s = now - row.first_at
            timings = GenerationTimings(
                prompt_tokens=row.prompt_tokens,
                prefill_ms=row.prefill_ms,
                first_token_ms=row.first_ms,
                new_tokens=len(row.tokens),
                decode_ms=decode_s * 1e3,
                decode_tokens_per_s=(len(row.tokens) - 1) / decode_s if decode_s > 0 else 0.0,
                total_ms=(now - row.started) * 1e3,
            )
            generation = Generation(
                row.watcher.text, tuple(row.tokens), reason, row.text, timings, tuple(row.logprobs)
            )
            events.append(GenerationEvent(row.key, piece + row.watcher.finish(), generation, chosen_logprob))
        if len(keep) != len(self.rows):
            stepper = self._stepper
            self._regroup([self.rows[i] for i in keep], [(stepper, i) for i in keep])
        if self.rows:
            assert self._stepper is not None
            self._logits = self._stepper.step(np.asarray(chosen, dtype=np.int64))
        else:
            self._logits = None
        return events
