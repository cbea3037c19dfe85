"""Encoder-decoder decoding: the encoder once, then the decoder with its self-attention cache growing a token at
a time and its cross-attention cache computed once (optimum-onnx's ``decoder_model.onnx`` for the start tokens,
``decoder_with_past_model.onnx`` for every step after).

Greedy decoding runs through the loop every generator shares (`toolkit.generation.decode`, with
`Seq2SeqStepper` as its `Stepper`); beam search (`beam_search`) is transformers' ``_beam_search`` in numpy:
``max(2, 1 + eos ids) x beams`` candidates a step, finished hypotheses scored by ``sum log p / length **
length_penalty``, and its early-stop heuristic. `DecodingRules` are the logits processors the models'
generation configs ask for (no-repeat n-grams, minimum length, forced first/last token, suppressed tokens), in
transformers' order, then Whisper's timestamp rule when asked for (`toolkit.seq2seq.timestamps`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from toolkit.manifest import Seq2SeqSpec
from toolkit.seq2seq.timestamps import TimestampRule

__all__ = ["BeamSettings", "DecodingRules", "Seq2SeqStepper", "beam_search", "log_softmax"]

_NEG = np.float32(-np.inf)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Log-probabilities over the last axis, float32."""
    x = logits.astype(np.float32)
    shifted = x - x.max(axis=-1, keepdims=True)
    return np.asarray(shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True)), dtype=np.float32)


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
    timestamps: TimestampRule | None = None  # Whisper with timestamps: applied last, as transformers does

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
        if self.timestamps is not None:
            scores = self.timestamps(ids, scores)
        return scores


def _kv(layer: int, part: str, kind: str) -> tuple[str, str]:
    return f"past_key_values.{layer}.{part}.{kind}", f"present.{layer}.{part}.{kind}"


class Seq2SeqStepper:
    """The decoder over one batch's encoder states: `start` runs the decoder prompt, `step` one token per row.

    Scores come back as log-probabilities with `rules` applied (transformers' beam search applies its
    processors after the log-softmax; greedy choice is the same either way). `reorder` regroups the rows (beam search)."""

    def __init__(
        self,
        first: ort.InferenceSession,
        with_past: ort.InferenceSession,
        spec: Seq2SeqSpec,
        encoder_states: np.ndarray,
        encoder_mask: np.ndarray | None,
        prompt: np.ndarray,
        rules: DecodingRules,
    ) -> None:
        self.with_past = with_past
        self.spec = spec
        self.rules = rules
        self.mask = encoder_mask
        self.ids = np.asarray(prompt, dtype=np.int64)
        feeds: dict[str, np.ndarray] = {"input_ids": self.ids, "encoder_hidden_states": encoder_states}
        first_names = {i.name for i in first.get_inputs()}
        if encoder_mask is not None and "encoder_attention_mask" in first_names:
            feeds["encoder_attention_mask"] = encoder_mask
        self._past_names = {i.name for i in with_past.get_inputs()}
        outputs = [o.name for o in first.get_outputs()]
        values = dict(zip(outputs, first.run(outputs, feeds), strict=True))
        self.past = {
            _kv(layer, part, kind)[0]: values[_kv(layer, part, kind)[1]]
            for layer in range(spec.layers)
            for part in ("decoder", "encoder")
            for kind in ("key", "value")
        }
        self.logits = self.rules(self.ids, log_softmax(values["logits"][:, -1, :]))

    def step(self, tokens: np.ndarray) -> np.ndarray:
        """Feed one token per row; the next logits [rows, vocab] with the rules applied."""
        tokens = np.asarray(tokens, dtype=np.int64)
        self.ids = np.concatenate([self.ids, tokens[:, None]], axis=1)
        feeds = {"input_ids": tokens[:, None], **self.past}
        if self.mask is not None and "encoder_attention_mask" in self._past_names:
            feeds["encoder_attention_mask"] = self.mask
        names = ["logits"] + [
            _kv(layer, "decoder", kind)[1] for layer in range(self.spec.layers) for kind in ("key", "value")
        ]
        values = dict(zip(names, self.with_past.run(names, feeds), strict=True))
        for layer in range(self.spec.layers):
            for kind in ("key", "value"):
                past, present = _kv(layer, "decoder", kind)
                self.past[past] = values[present]
        return self.rules(self.ids, log_softmax(values["logits"][:, -1, :]))

    def reorder(self, rows: np.ndarray) -> None:
        """Keep rows `rows` (in that order) of the cache, the ids and the encoder mask."""
        self.past = {name: value[rows] for name, value in self.past.items()}
        self.ids = self.ids[rows]
        if self.mask is not None:
            self.mask = self.mask[rows]


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
