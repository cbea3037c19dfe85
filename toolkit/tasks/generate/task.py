"""``generate``: text generation with a causal LM and its KV cache.

The task owns the manifest's ``generation`` section, its samples (one prompt pass per sentence with an empty
cache, for held-out accuracy and calibration; one decode step over a full cache for timing), its accuracy
metric and how ``edge run --prompt`` prints. The pipeline, `toolkit.tasks.generate.TextGenerator` (beside it
in this package), runs the decoding engine's loop (`toolkit.decoding.decode`).

The metric (``next_token_agreement``): one prompt pass gives the next-token distribution at every position,
so each held-out sentence yields as many predictions as it has tokens; agreement counts positions where the
variant's most likely next token is fp32's, and the perplexity ratio is exp of the mean negative
log-likelihood of the sentences' actual next tokens, variant over fp32 (1.0 = no loss).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from toolkit.agreement import TOP1, TOP5, Meaning
from toolkit.corpus import CALIBRATION_SENTENCES, HELD_OUT_SENTENCES
from toolkit.decoding.decoder import LOGITS_TO_KEEP, cache_layout, graph_cache_dtype, row_length_feeds
from toolkit.errors import BadModelError
from toolkit.manifest import GenerationSpec, ModelPackage, OutputCheck, TensorSpec
from toolkit.preprocess import read_decoder_tokenizer
from toolkit.tasks.accuracy import AccuracyReport, HeldOut, Runs
from toolkit.tasks.base import OWN_HELD_OUT_LIMIT, Family, Feeds, Task, spread
from toolkit.tasks.modality import CALIBRATION_SEED, PURPOSE_SEEDS, TextModality

if TYPE_CHECKING:
    from tokenizers import Tokenizer

__all__ = ["HELD_OUT_WINDOW", "GenerateTask"]

# tokens per held-out window cut from a user's text (`own_held_out`): the context of a typical prompt
HELD_OUT_WINDOW = 128


class GenerateTask(Task[TextModality]):
    """A decoder with past/present KV cache inputs and outputs, and the package's tokenizer."""

    name = "generate"
    modality = TextModality
    family = Family.GENERATOR
    metric = "next_token_agreement"
    preferred_output = "logits"
    meaning: ClassVar[Meaning] = {"logits": (TOP1, TOP5)}
    source_hint = " from a causal LM directory (a *ForCausalLM model) with its tokenizer.json"
    run_input = "prompt"
    # per-tensor dynamic int8 of a decoder's activations costs next-token agreement (0.956 against fp32 on the
    # benchmark's trained Llama); 8-bit blocks of 64 with int8 activations per block keep 0.986
    int8_blockwise = ("MatMul",)
    int8_dynamic_op_types = ("Gather",)

    @classmethod
    def accepts(cls, package: ModelPackage) -> bool:
        """A text section and a generation section."""
        return super().accepts(package) and package.manifest.generation is not None

    @property
    def spec(self) -> GenerationSpec:
        """The manifest's generation section (a BadModelError when it has none)."""
        spec = self.manifest.generation
        if spec is None:
            raise BadModelError(
                f"package '{self.package.path}' has no generation section; re-create it{self.source_hint} "
                "with `edge convert`"
            )
        return spec

    def check_graph(self, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> None:
        """A BadModelError naming the first field of the generation section that the graph's `inputs` and `outputs`
        contradict: a past input or present output per layer and kind, each [batch, kv_heads, positions, head_dim]
        of cache_dtype (or float16, an fp16 variant's), no past input beyond `layers`, and special token ids inside the vocabulary (the logits'
        last dim, else the tokenizer's). Run at load, so a bad package fails there and not at its first request."""
        spec = self.spec
        given = {t.name: t for t in inputs}
        produced = {t.name for t in outputs}
        where = f"package '{self.package.path}': generation"
        fix = "re-create the package with `edge convert`"
        for layer in range(spec.layers + 1):
            for kind in ("key", "value"):
                name = spec.past_input.format(layer=layer, kind=kind)
                past = given.get(name)
                if layer == spec.layers:
                    if past is not None:
                        raise BadModelError(
                            f"{where}.layers is {spec.layers} but the graph takes '{name}' too; {fix}"
                        )
                    continue
                if past is None:
                    raise BadModelError(
                        f"{where}.layers is {spec.layers} but the graph has no input '{name}'; {fix}"
                    )
                present = spec.present_output.format(layer=layer, kind=kind)
                if present not in produced:
                    raise BadModelError(f"{where}.present_output: the graph has no output '{present}'; {fix}")
                if past.dtype not in (spec.cache_dtype, "float16"):  # float16: an fp16 variant's cache
                    raise BadModelError(
                        f"{where}.cache_dtype is {spec.cache_dtype} but the graph's '{name}' is {past.dtype}; {fix}"
                    )
                dims = {"kv_heads": 1, "head_dim": 3}
                for field_name, axis in dims.items():
                    size = past.shape[axis] if len(past.shape) == 4 else None
                    if isinstance(size, int) and size != getattr(spec, field_name):
                        raise BadModelError(
                            f"{where}.{field_name} is {getattr(spec, field_name)} but the graph's '{name}' is "
                            f"{list(past.shape)}; {fix}"
                        )
        logits = next((t for t in outputs if t.name == "logits"), None)
        last = logits.shape[-1] if logits is not None and logits.shape else None
        vocab = last if isinstance(last, int) else int(self.tokenizer.get_vocab_size(with_added_tokens=True))
        ids = {"pad_token_id": (spec.pad_token_id,), "bos_token_id": (spec.bos_token_id,)}
        for field_name, values in {**ids, "eos_token_ids": spec.eos_token_ids}.items():
            bad = next((v for v in values if v is not None and v >= vocab), None)
            if bad is not None:
                raise BadModelError(
                    f"{where}.{field_name} holds {bad}, outside the model's vocabulary of {vocab}; {fix}"
                )

    @property
    def cache_dtype(self) -> str:
        """The KV cache's element type in the graph this task is bound to: the contract's, or float16 in an fp16
        variant (`float16_state`)."""
        return graph_cache_dtype(self.spec, {t.name: t.dtype for t in self.inputs})

    def float16_state(self) -> frozenset[str]:
        """The in-place graph's cache inputs and outputs: its GroupQueryAttention reads and writes the buffer as it
        is, so an fp16 variant holds it in float16 (half the memory, no casts around it). Optimum's graph keeps
        its fp32 cache."""
        if not self.spec.in_place:
            return frozenset()
        return frozenset(name for entry in cache_layout(self.spec).entries() for name in entry)

    @cached_property
    def tokenizer(self) -> Tokenizer:
        """The package's tokenizer (``tokenizers``), without padding or truncation."""
        tokenizer: Tokenizer = read_decoder_tokenizer(
            self.package.asset(self.data.pre.tokenizer, "tokenizer")
        )
        return tokenizer

    # -- samples ---------------------------------------------------------------------------------------

    def empty_past(self, batch: int, length: int) -> Feeds:
        """Zero past key/value feeds of `length` positions for `batch` rows."""
        spec = self.spec
        shape = (batch, spec.kv_heads, length, spec.head_dim)
        return {
            spec.past_input.format(layer=layer, kind=kind): np.zeros(shape, dtype=self.cache_dtype)
            for layer in range(spec.layers)
            for kind in ("key", "value")
        }

    def _lengths_or_mask(self, batch: int, length: int) -> Feeds:
        """How the graph learns that `batch` rows hold `length` positions (new ones included): their lengths
        (the ``gqa-seqlens`` graph) or an all-ones attention mask."""
        if self.spec.row_lengths:
            return row_length_feeds([length] * batch)
        return {"attention_mask": np.ones((batch, length), dtype=np.int64)}

    def prompt_feeds(self, ids: Sequence[int]) -> Feeds:
        """One prompt pass over `ids` with an empty cache, batch 1."""
        length = len(ids)
        feeds = {
            "input_ids": np.asarray([ids], dtype=np.int64),
            **self._lengths_or_mask(1, length),
            **self.empty_past(1, 0),
        }
        if self.spec.position_ids:
            feeds["position_ids"] = np.arange(length, dtype=np.int64)[None]
        if self.spec.in_place:  # logits at every position: the accuracy metric scores each one
            feeds[LOGITS_TO_KEEP] = np.asarray(length, dtype=np.int64)
        return feeds

    def text_samples(self, texts: Sequence[str]) -> list[Feeds]:
        """One prompt pass per text (at least 2 tokens, capped at the model's positions)."""
        feeds = []
        for text in texts:
            ids = self.tokenizer.encode(text).ids[: self.spec.max_positions]
            if len(ids) >= 2:
                feeds.append(self.prompt_feeds(ids))
        return feeds

    def samples(self, purpose: str, count: int | None, exclude_texts: Sequence[str] = ()) -> list[Feeds]:
        """Prompt passes over the held-out sentences (minus `exclude_texts`) or the calibration ones."""
        if PURPOSE_SEEDS.get(purpose) == CALIBRATION_SEED:
            return self.text_samples(CALIBRATION_SENTENCES[:count])
        excluded = set(exclude_texts)
        return self.text_samples([t for t in HELD_OUT_SENTENCES if t not in excluded][:count])

    def own_held_out(self, text: str, exclude_texts: Sequence[str] = ()) -> list[Feeds]:
        """Prompt passes over the user's text (minus lines in `exclude_texts`) cut into windows of
        `HELD_OUT_WINDOW` tokens (a partial last one kept when it has 2), at most `OWN_HELD_OUT_LIMIT` spread
        over it: each scores every position, as the built-in sentences do, at the context lengths a long prompt
        reaches."""
        excluded = set(exclude_texts)
        kept = "\n".join(line for line in text.splitlines() if line.strip() not in excluded)
        ids = self.tokenizer.encode(kept).ids
        window = min(HELD_OUT_WINDOW, self.spec.max_positions)
        windows = [ids[start : start + window] for start in range(0, len(ids), window)]
        return [self.prompt_feeds(w) for w in spread([w for w in windows if len(w) >= 2], OWN_HELD_OUT_LIMIT)]

    def timing_feeds(self, batch: int = 1, seq: int = 128) -> Feeds:
        """One decode step: a token per row on top of a cache of `seq` - 1 positions (what generation repeats)."""
        spec = self.spec
        past = min(seq, spec.max_positions) - 1
        feeds = {
            "input_ids": np.full((batch, 1), spec.bos_token_id or 0, dtype=np.int64),
            **self._lengths_or_mask(batch, past + 1),
            **self.empty_past(batch, past),
        }
        if spec.position_ids:
            feeds["position_ids"] = np.full((batch, 1), past, dtype=np.int64)
        if spec.in_place:
            feeds[LOGITS_TO_KEEP] = np.ones((), dtype=np.int64)
        return feeds

    # -- accuracy --------------------------------------------------------------------------------------

    def next_token_agreement(
        self,
        got: Sequence[Mapping[str, np.ndarray]],
        wanted: Sequence[Mapping[str, np.ndarray]],
        feeds: Sequence[Mapping[str, np.ndarray]],
    ) -> tuple[float, float, dict[str, float], OutputCheck]:
        """(agreement, worst sentence's agreement, details, logits check) of the variant's prompt-pass outputs
        `got` against fp32's `wanted` on the prompt `feeds`."""
        agree = total = 0
        worst = 1.0
        nll_ref: list[float] = []
        nll_var: list[float] = []
        max_diff = 0.0
        mean_diffs = []
        for feed, out, want in zip(feeds, got, wanted, strict=True):
            variant = np.asarray(out["logits"])[0]
            ref = np.asarray(want["logits"])[0]
            same = variant.argmax(-1) == ref.argmax(-1)
            agree += int(same.sum())
            total += same.size
            worst = min(worst, float(same.mean()))
            targets = feed["input_ids"][0, 1:]
            positions = np.arange(targets.size)
            nll_ref.extend(-_log_softmax(ref[:-1])[positions, targets])
            nll_var.extend(-_log_softmax(variant[:-1])[positions, targets])
            diff = np.abs(variant.astype(np.float64) - ref)
            max_diff = max(max_diff, float(diff.max()))
            mean_diffs.append(float(diff.mean()))
        agreement = agree / max(total, 1)
        ppl_ref = float(np.exp(np.mean(nll_ref)))
        ppl_var = float(np.exp(np.mean(nll_var)))
        details = {
            "top1_agreement": round(agreement, 6),
            "perplexity_fp32": round(ppl_ref, 4),
            "perplexity_variant": round(ppl_var, 4),
            "perplexity_ratio": round(ppl_var / ppl_ref, 6),
            "max_logit_diff": round(max_diff, 6),
            "positions": float(total),
        }
        check = OutputCheck("logits", round(max_diff, 6), round(float(np.mean(mean_diffs)), 6), True)
        return agreement, worst, details, check

    # -- `edge run --prompt` -------------------------------------------------------------------------

    def run_lines(self, items: Sequence[str], results: Sequence[Any]) -> list[str]:
        """Each generation's text and a timing line (the prompt first when there are several)."""
        lines: list[str] = []
        for generation in results:
            if len(results) > 1:
                lines.append(f"--- {generation.prompt!r}")
            lines.extend((generation.text, self.timing_line(generation)))
        return lines

    def timing_line(self, generation: Any) -> str:
        """``[eos] 7 prompt tokens, prefill 3.1 ms, first token 3.4 ms, 6 new tokens at 210.0 tok/s``."""
        t = generation.timings
        return (
            f"[{generation.finish_reason}] {t.prompt_tokens} prompt tokens, prefill {t.prefill_ms:.1f} ms, "
            f"first token {t.first_token_ms:.1f} ms, {t.new_tokens} new tokens at {t.decode_tokens_per_s:.1f} tok/s"
        )

    def run_json(self, results: Sequence[Any]) -> dict[str, Any]:
        """``generations``: one result per prompt."""
        return {"generations": list(results)}

    # -- the accuracy report: next-token agreement over the prompt pass's logits -------------------------

    metric_outputs: ClassVar[tuple[str, ...] | None] = ("logits",)

    def accuracy_report(self, runs: Runs, feeds: HeldOut) -> AccuracyReport:
        """Next-token top-1 agreement with fp32 at every held-out position, and the perplexity ratio."""
        got, wanted = [g for g, _ in runs], [w for _, w in runs]
        agreement, worst, details, check = self.next_token_agreement(got, wanted, feeds)
        return AccuracyReport(
            metric="next_token_agreement",
            value=agreement,
            score=agreement,
            worst=worst,
            samples=len(feeds),
            headline=(
                f"next-token agreement {agreement:.1%}, perplexity ratio "
                f"{details['perplexity_ratio']:.4f} ({len(feeds)} held-out)"
            ),
            outputs=(check,),
            details=details,
        )


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    return np.asarray(shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True)))
