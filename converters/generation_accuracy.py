"""The accuracy of a generator variant against fp32 (issue 15): next-token top-1 agreement and the perplexity
ratio on held-out text, and decode-step feeds for timing.

One prompt pass with an empty cache gives the next-token distribution at every position, so each held-out
sentence yields as many predictions as it has tokens: agreement counts positions where the variant's most
likely next token is fp32's; perplexity is exp of the mean negative log-likelihood of the sentence's actual next
tokens, for each model, and the ratio is variant over fp32 (1.0 = no loss).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from toolkit.manifest import GenerationSpec, ModelPackage, OutputCheck
from toolkit.runner import Runner

__all__ = ["generator_held_out_feeds", "generator_latency_feeds", "next_token_report_values"]

Feeds = Mapping[str, np.ndarray]


def _spec(package: ModelPackage) -> GenerationSpec:
    spec = package.manifest.generation
    if spec is None:
        raise ValueError(f"package '{package.path}' has no generation contract")
    return spec


def _past(spec: GenerationSpec, batch: int, length: int) -> dict[str, np.ndarray]:
    shape = (batch, spec.kv_heads, length, spec.head_dim)
    return {
        spec.past_input.format(layer=layer, kind=kind): np.zeros(shape, dtype=spec.cache_dtype)
        for layer in range(spec.layers)
        for kind in ("key", "value")
    }


def _prompt_feeds(spec: GenerationSpec, ids: Sequence[int]) -> dict[str, np.ndarray]:
    length = len(ids)
    feeds = {
        "input_ids": np.asarray([ids], dtype=np.int64),
        "attention_mask": np.ones((1, length), dtype=np.int64),
        **_past(spec, 1, 0),
    }
    if spec.position_ids:
        feeds["position_ids"] = np.arange(length, dtype=np.int64)[None]
    return feeds


def generator_held_out_feeds(package: ModelPackage, texts: Sequence[str]) -> list[dict[str, np.ndarray]]:
    """One prompt pass (empty cache) per text, capped at the model's positions."""
    from tokenizers import Tokenizer

    spec = _spec(package)
    tokenizer = Tokenizer.from_file(str(package.path / "tokenizer.json"))
    feeds = []
    for text in texts:
        ids = tokenizer.encode(text).ids[: spec.max_positions]
        if len(ids) >= 2:
            feeds.append(_prompt_feeds(spec, ids))
    return feeds


def generator_latency_feeds(package: ModelPackage, batch: int = 1, seq: int = 128) -> dict[str, np.ndarray]:
    """One decode step: a token per row on top of a cache of `seq` - 1 positions (what generation repeats)."""
    spec = _spec(package)
    past = min(seq, spec.max_positions) - 1
    feeds = {
        "input_ids": np.full((batch, 1), spec.bos_token_id or 0, dtype=np.int64),
        "attention_mask": np.ones((batch, past + 1), dtype=np.int64),
        **_past(spec, batch, past),
    }
    if spec.position_ids:
        feeds["position_ids"] = np.full((batch, 1), past, dtype=np.int64)
    return feeds


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def next_token_report_values(
    wanted: Sequence[Feeds], candidate: Runner, feeds: Sequence[Feeds]
) -> tuple[float, float, dict[str, float], OutputCheck]:
    """(agreement, worst sentence's agreement, details, logits check) of `candidate` against the fp32 outputs
    `wanted` on the prompt `feeds`."""
    agree = total = 0
    worst = 1.0
    nll_ref: list[float] = []
    nll_var: list[float] = []
    max_diff = 0.0
    mean_diffs = []
    for feed, want in zip(feeds, wanted, strict=True):
        got = candidate.run(feed, ["logits"])["logits"][0]
        ref = np.asarray(want["logits"])[0]
        same = got.argmax(-1) == ref.argmax(-1)
        agree += int(same.sum())
        total += same.size
        worst = min(worst, float(same.mean()))
        targets = feed["input_ids"][0, 1:]
        positions = np.arange(targets.size)
        nll_ref.extend(-_log_softmax(ref[:-1])[positions, targets])
        nll_var.extend(-_log_softmax(got[:-1])[positions, targets])
        diff = np.abs(got.astype(np.float64) - ref)
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
