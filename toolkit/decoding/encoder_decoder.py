"""Encoder-decoder decoding: the encoder once, then the decoder with its self-attention cache growing a token at
a time and its cross-attention cache computed once (optimum-onnx's ``decoder_model.onnx`` for the start tokens,
``decoder_with_past_model.onnx`` for every step after).

Greedy decoding runs through the loop every generator shares (`toolkit.decoding.decode`, with
`Seq2SeqStepper` as its `Stepper`); beam search (`beam_search`) is transformers' ``_beam_search`` in numpy:
``max(2, 1 + eos ids) x beams`` candidates a step, finished hypotheses scored by ``sum log p / length **
length_penalty``, and its early-stop heuristic. `DecodingRules` are the logits processors the models'
generation configs ask for (no-repeat n-grams, minimum length, forced first/last token, suppressed tokens), in
transformers' order, then the task's own rule when it passes one (a `LogitsRule`, such as the transcribe task's
Whisper timestamp rule); the engine knows no task.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import onnxruntime as ort

from toolkit.decoding.kv_cache import CacheLayout, KVCache
from toolkit.errors import BadModelError
from toolkit.manifest import Seq2SeqSpec
from toolkit.runner import numpy_dtype

__all__ = [
    "BeamSettings",
    "DecodingRules",
    "LogitsRule",
    "Seq2SeqStepper",
    "beam_search",
    "checked_steps",
    "log_softmax",
    "self_attention_layout",
]

_NEG = np.float32(-np.inf)

# Called before every decoder step of this thread's decodes (None: no check). A server sets it for the
# request it runs, so an abandoned request stops at its next step, not at the end of its clip or beams.
_STEP_CHECK: ContextVar[Callable[[], None] | None] = ContextVar("seq2seq_step_check", default=None)


@contextmanager
def checked_steps(check: Callable[[], None]) -> Iterator[None]:
    """Within this block, `check()` runs before every decoder step on this thread (it raises to stop)."""
    token = _STEP_CHECK.set(check)
    try:
        yield
    finally:
        _STEP_CHECK.reset(token)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Log-probabilities over the last axis, float32."""
    x = logits.astype(np.float32)
    shifted = x - x.max(axis=-1, keepdims=True)
    return np.asarray(shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True)), dtype=np.float32)


class LogitsRule(Protocol):
    """A task's own logits processor (Whisper's timestamp rule): the scores [rows, vocab] it allows given each
    row's ids so far [rows, length]."""

    def __call__(self, ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """`scores` with the rule applied (a new array)."""
        ...


@dataclass(frozen=True)
class DecodingRules:
    """The logits processors of a model's generation config, applied to scores [rows, vocab] given each row's
    ids so far (decoder prompt included) [rows, length]."""

    prompt_length: int
    max_length: int
    eos_ids: frozenset[int]
    suppress: tuple[int, ...] = ()
    begin_suppress: tuple[int, ...] = ()
    forced_bos: int | None = None
    forced_eos: int | None = None
    min_length: int = 0
    no_repeat_ngram: int = 0
    task_rule: LogitsRule | None = (
        None  # the task's own rule (Whisper's timestamps): last, as transformers does
    )

    def __call__(self, ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """`scores` with the rules applied (a new array)."""
        scores = np.array(scores, dtype=np.float32, copy=True)
        length = ids.shape[1]
        if self.no_repeat_ngram and length + 1 >= self.no_repeat_ngram:
            n = self.no_repeat_ngram
            for row in range(ids.shape[0]):
                seq = ids[row].tolist()
                tail = tuple(seq[length - n + 1 :])
                for start in range(length - n + 1):
                    if tuple(seq[start : start + n - 1]) == tail:
                        scores[row, seq[start + n - 1]] = _NEG
        if length < self.min_length:
            scores[:, list(self.eos_ids)] = _NEG
        if self.forced_bos is not None and length == 1:
            scores[:] = _NEG
            scores[:, self.forced_bos] = 0
        if self.forced_eos is not None and length == self.max_length - 1:
            scores[:] = _NEG
            scores[:, self.forced_eos] = 0
        if self.suppress:
            scores[:, list(self.suppress)] = _NEG
        if self.begin_suppress and length == self.prompt_length:
            scores[:, list(self.begin_suppress)] = _NEG
        if self.task_rule is not None:
            scores = self.task_rule(ids, scores)
        return scores


def _kv(layer: int, part: str, kind: str) -> tuple[str, str]:
    return f"past_key_values.{layer}.{part}.{kind}", f"present.{layer}.{part}.{kind}"


def self_attention_layout(with_past: ort.InferenceSession, layers: int) -> CacheLayout:
    """The decoder self-attention cache of a decoder-with-past graph: heads, head size and dtype read from its
    first past input [batch, heads, past, head_dim]."""
    past = {i.name: i for i in with_past.get_inputs()}.get(_kv(0, "decoder", "key")[0])
    if past is None or not all(isinstance(d, int) for d in (past.shape[1], past.shape[3])):
        raise BadModelError(
            "the decoder-with-past graph has no fixed-size past_key_values.0.decoder.key input; "
            "re-create the package with `edge convert`"
        )
    return CacheLayout(
        layers,
        past.shape[1],
        past.shape[3],
        numpy_dtype(past.type),
        lambda layer, kind: _kv(layer, "decoder", kind)[0],
        lambda layer, kind: _kv(layer, "decoder", kind)[1],
    )


class Seq2SeqStepper:
    """The decoder over one batch's encoder states: the first decoder runs the decoder prompt and computes the
    cross-attention cache once; then the decoder-with-past takes one token per row per step through IO binding,
    its self-attention cache in `KVCache` ping-pong buffers, the cross-attention cache bound once and the logits
    written into one host buffer, so no step allocates or copies a cache (on CUDA they stay on the device).

    `encoder_states` has a row per prompt row, or one row that every prompt row shares (the beams of one input:
    the prompt runs once, its caches are copied to the rows, and regrouping rows never touches the
    cross-attention cache). Scores come back with `rules` applied: log-probabilities when `log_probs` (beam
    search; transformers applies its processors after the log-softmax), raw logits otherwise (greedy: the
    rules only mask or force tokens, so the choice is the same and the softmax is saved)."""

    def __init__(
        self,
        first: ort.InferenceSession,
        with_past: ort.InferenceSession,
        spec: Seq2SeqSpec,
        encoder_states: np.ndarray,
        encoder_mask: np.ndarray | None,
        prompt: np.ndarray,
        rules: DecodingRules,
        *,
        capacity: int,
        log_probs: bool = True,
        device: tuple[str, int] = ("cpu", 0),
    ) -> None:
        self.with_past = with_past
        self.spec = spec
        self.rules = rules
        self.log_probs = log_probs
        self.ids = np.asarray(prompt, dtype=np.int64)
        rows = self.ids.shape[0]
        self._shared = encoder_states.shape[0] == 1 and rows > 1
        if self._shared and not bool((self.ids == self.ids[:1]).all()):
            raise ValueError("prompt rows that share one encoder state must be the same prompt")
        self._device, self._device_id = device

        def expand(value: np.ndarray) -> np.ndarray:
            return np.repeat(value, rows, axis=0) if self._shared else value

        feeds = {
            "input_ids": self.ids[:1] if self._shared else self.ids,
            "encoder_hidden_states": encoder_states,
        }
        first_inputs = {i.name for i in first.get_inputs()}
        if encoder_mask is not None and "encoder_attention_mask" in first_inputs:
            feeds["encoder_attention_mask"] = encoder_mask
        binding = first.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        names = [o.name for o in first.get_outputs()]
        for name in names:
            binding.bind_output(name, self._device, self._device_id)
        first.run_with_iobinding(binding)
        values = dict(zip(names, binding.get_outputs(), strict=True))

        layout = self_attention_layout(with_past, spec.layers)
        self.cache = KVCache(layout, rows, capacity, self._device, self._device_id)
        self.cache.fill([expand(values[present].numpy()) for _, present in layout.entries()])
        self._binding = with_past.io_binding()
        self._cross = {
            _kv(layer, "encoder", kind)[0]: values[_kv(layer, "encoder", kind)[1]]
            for layer in range(spec.layers)
            for kind in ("key", "value")
        }
        if self._shared:
            self._cross = {
                name: self._on_device(expand(value.numpy())) for name, value in self._cross.items()
            }
        for name, value in self._cross.items():
            self._binding.bind_ortvalue_input(name, value)
        self._mask: np.ndarray | None = None
        if encoder_mask is not None and "encoder_attention_mask" in {i.name for i in with_past.get_inputs()}:
            self._mask = np.ascontiguousarray(expand(encoder_mask))
            self._binding.bind_cpu_input("encoder_attention_mask", self._mask)
        logits = values["logits"].numpy()[:, -1, :]
        self._logits = np.empty((rows, 1, logits.shape[-1]), dtype=np.float32)
        self._binding.bind_output(
            "logits", "cpu", 0, np.float32, list(self._logits.shape), self._logits.ctypes.data
        )
        self._tokens = np.empty((rows, 1), dtype=np.int64)
        self.logits = self._scores(expand(logits))

    def _on_device(self, host: np.ndarray) -> ort.OrtValue:
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(host), self._device, self._device_id)

    def _scores(self, logits: np.ndarray) -> np.ndarray:
        return self.rules(self.ids, log_softmax(logits) if self.log_probs else logits)

    def step(self, tokens: np.ndarray) -> np.ndarray:
        """Feed one token per row; the next scores [rows, vocab] with the rules applied."""
        check = _STEP_CHECK.get()
        if check is not None:
            check()
        self._tokens[:, 0] = tokens
        self.ids = np.concatenate([self.ids, self._tokens], axis=1)
        self._binding.bind_cpu_input("input_ids", self._tokens)
        self.cache.bind(self._binding, 1)
        self.with_past.run_with_iobinding(self._binding)
        self.cache.advance(1)
        return self._scores(self._logits[:, -1, :])

    def reorder(self, rows: np.ndarray) -> None:
        """Keep rows `rows` (in that order) of the caches, the ids and the encoder mask."""
        self.cache.reorder(rows)
        self.ids = self.ids[rows]
        if self._shared:
            return  # every row attends to the same encoder states
        for name, value in self._cross.items():
            self._cross[name] = self._on_device(value.numpy()[rows])
            self._binding.bind_ortvalue_input(name, self._cross[name])
        if self._mask is not None:
            self._mask = np.ascontiguousarray(self._mask[rows])
            self._binding.bind_cpu_input("encoder_attention_mask", self._mask)


@dataclass(frozen=True)
class BeamSettings:
    """Beam search: beams, length penalty (score / length ** penalty) and early stopping (True, False, "never")."""

    beams: int = 4
    length_penalty: float = 1.0
    early_stopping: bool | str = False


def beam_search(
    stepper: Seq2SeqStepper, max_new_tokens: int, eos_ids: Sequence[int], pad_id: int, settings: BeamSettings
) -> list[int]:
    """The best hypothesis's new tokens (its eos included) for one input whose stepper holds `settings.beams`
    copies of the decoder prompt; transformers' ``_beam_search`` step for step."""
    beams = settings.beams
    prompt_len = stepper.ids.shape[1]
    max_length = prompt_len + max_new_tokens
    keep = max(2, 1 + len(eos_ids)) * beams
    eos = np.asarray(list(eos_ids), dtype=np.int64)
    running = np.full((beams, max_length), pad_id, dtype=np.int64)
    running[:, :prompt_len] = stepper.ids
    finished_ids = running.copy()
    finished_len = np.zeros(beams, dtype=np.int64)
    running_scores = np.zeros(beams, dtype=np.float32)
    running_scores[1:] = -1e9
    beam_scores = np.full(beams, -1e9, dtype=np.float32)
    finished = np.zeros(beams, dtype=bool)
    improvable = True
    top_mask = np.arange(keep) < beams
    logits = stepper.logits
    cur_len = prompt_len
    while True:
        vocab = logits.shape[-1]
        scores = (logits + running_scores[:, None]).reshape(-1)
        top = np.argsort(-scores, kind="stable")[:keep]
        top_scores = scores[top]
        source, ids = top // vocab, top % vocab
        candidates = running[source].copy()
        candidates[:, cur_len] = ids
        hits = np.isin(ids, eos) | (cur_len + 1 >= max_length)
        kept = top_scores + hits.astype(np.float32) * np.float32(-1e9)
        chosen = np.argsort(-kept, kind="stable")[:beams]
        running, running_scores, rows = candidates[chosen], kept[chosen], source[chosen]
        just = hits & top_mask
        normed = top_scores / np.float32((cur_len + 1 - prompt_len) ** settings.length_penalty)
        full = bool(finished.all()) and settings.early_stopping is True
        normed = normed + np.float32(-1e9) * (full + (not improvable) + (~just).astype(np.float32))
        merged_scores = np.concatenate([beam_scores, normed.astype(np.float32)])
        best = np.argsort(-merged_scores, kind="stable")[:beams]
        finished_ids = np.concatenate([finished_ids, candidates])[best]
        finished_len = np.concatenate([finished_len, np.full(keep, cur_len + 1 - prompt_len)])[best]
        beam_scores = merged_scores[best]
        finished = np.concatenate([finished, just])[best]
        cur_len += 1
        if settings.early_stopping == "never" and settings.length_penalty > 0:
            best_length = max_length - prompt_len
        else:
            best_length = cur_len - prompt_len
        best_running = running_scores[0] / np.float32(best_length**settings.length_penalty)
        worst = np.where(finished, beam_scores.min(), np.float32(-1e9))
        improvable = improvable and bool(np.any(best_running > worst))
        open_beam = not (bool(finished.all()) and settings.early_stopping is True)
        if not (improvable and open_beam and not hits.all()):
            break
        stepper.reorder(rows)
        logits = stepper.step(running[:, cur_len - 1])
    return [int(t) for t in finished_ids[0, prompt_len : prompt_len + finished_len[0]]]
