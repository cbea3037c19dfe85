"""How much a variant costs: its task metric against the fp32 model on held-out inputs, and its latency.

The metric follows the package's task (one entry per kind in `_METRICS`):

- embeddings (``embed``): cosine between the pooled, normalised sentence embeddings of the variant and fp32;
  the value is the mean, the worst sentence is reported too.
- classifiers (``classify``, ``image-classify``, ``token-classify``): top-1 agreement with fp32 and the largest
  logit difference.
- anything else: max and mean absolute difference of every output; the budget is checked against the
  per-sample cosine of the raw outputs, so one budget in (0, 1] works for every task.

Held-out inputs never overlap calibration inputs: text comes from `converters.corpus.HELD_OUT_SENTENCES`,
images and other tensors from a seeded generator whose seeds differ from the calibration ones.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from converters.corpus import HELD_OUT_SENTENCES
from converters.generation_accuracy import (
    generator_held_out_feeds,
    generator_latency_feeds,
    next_token_report_values,
)
from converters.samples import synthetic_waveform
from toolkit.errors import BadInputError
from toolkit.inputs import InputLimits, random_feeds
from toolkit.manifest import (
    AudioPreprocessing,
    ImagePreprocessing,
    ModelPackage,
    OutputCheck,
    TensorSpec,
    TextPreprocessing,
    Validation,
)
from toolkit.pipelines import TextTokenizer, pool, preprocess_audio
from toolkit.runner import Runner

__all__ = [
    "HELD_OUT_SEED",
    "AccuracyReport",
    "Latency",
    "budget_floor",
    "compare_variant",
    "held_out_feeds",
    "latency_feeds",
    "measure_latency",
    "reference_outputs",
    "synthetic_clips",
    "synthetic_images",
]

log = logging.getLogger(__name__)

HELD_OUT_SEED = 1_000_003
CLASSIFIER_TASKS = frozenset({"classify", "image-classify", "token-classify"})
Feeds = Mapping[str, np.ndarray]


def budget_floor(budget: float) -> float:
    """The worst single sample a budget allows: it may lose at most twice the mean's allowance (0.99 -> 0.98)."""
    return 1.0 - 2.0 * (1.0 - budget)


@dataclass(frozen=True)
class AccuracyReport:
    """A variant against fp32 on held-out inputs.

    `score` is the similarity checked against a budget (mean cosine or top-1 agreement), `worst` the worst
    sample's similarity (min cosine; for classifiers the agreement itself); `details` holds the rest
    (min cosine, max logit diff, ...).
    """

    metric: str
    value: float
    score: float
    worst: float
    samples: int
    outputs: tuple[OutputCheck, ...] = ()
    details: Mapping[str, float] = field(default_factory=dict)

    def meets(self, budget: float) -> bool:
        """Whether the mean reaches `budget` and the worst sample reaches `budget_floor(budget)`."""
        return self.score >= budget and self.worst >= budget_floor(budget)

    def to_validation(self, budget: float) -> Validation:
        """As the manifest's `Validation` (reference fp32, threshold = budget)."""
        return Validation(
            metric=self.metric,
            value=round(self.value, 6),
            threshold=budget,
            reference="fp32",
            samples=self.samples,
            passed=self.meets(budget),
            outputs=self.outputs,
            cases=tuple(f"{k} {v:.6g}" for k, v in self.details.items()),
        )

    def summary(self) -> str:
        """One line: ``cosine mean 0.9951, min 0.9862 (68 held-out)``."""
        if self.metric == "cosine":
            return f"cosine mean {self.score:.4f}, min {self.worst:.4f} ({self.samples} held-out)"
        if self.metric == "next_token_agreement":
            return (
                f"next-token agreement {self.score:.1%}, perplexity ratio "
                f"{self.details.get('perplexity_ratio', 0.0):.4f} ({self.samples} held-out)"
            )
        if self.metric == "top1_agreement":
            return (
                f"top-1 agreement {self.score:.1%}, max logit diff {self.details.get('max_logit_diff', 0.0):.3g} "
                f"({self.samples} held-out)"
            )
        return (
            f"max abs diff {self.value:.3g}, output cosine mean {self.score:.4f}, min {self.worst:.4f} "
            f"({self.samples} held-out)"
        )


def _text_feeds(package: ModelPackage, texts: Sequence[str], names: set[str]) -> list[dict[str, np.ndarray]]:
    pre = package.manifest.preprocessing
    assert isinstance(pre, TextPreprocessing)
    tokenizer = TextTokenizer(package.path / pre.tokenizer, pre.max_length)
    return [{k: v for k, v in tokenizer([text]).items() if k in names} for text in texts]


def synthetic_images(pre: ImagePreprocessing, count: int, seed: int, channels: int = 3) -> list[np.ndarray]:
    """Smooth random images (low-frequency colour fields plus texture), normalised as the package says: [1, C, H, W]."""
    rng = np.random.default_rng(seed)
    height, width = pre.crop_size or pre.size
    images = []
    for _ in range(count):
        coarse = rng.uniform(0, 255, size=(channels, 4, 4))
        up = np.kron(coarse, np.ones((int(np.ceil(height / 4)), int(np.ceil(width / 4)))))[:, :height, :width]
        pixels = np.clip(up + rng.normal(0, 20, size=up.shape), 0, 255)
        images.append(normalise_image(pixels, pre))
    return images


def synthetic_clips(pre: AudioPreprocessing, count: int, seed: int) -> list[np.ndarray]:
    """Speech-like waveforms of 0.5, 1 and 1.5 s in turn, preprocessed as the package says: [1, samples] each.

    Long enough for any wav2vec 2.0 front end (its convolutions need 400 samples), unlike generic
    sequences of 16 to 64 steps."""
    rng = np.random.default_rng(seed)
    rate = pre.sampling_rate
    return [
        preprocess_audio(synthetic_waveform(rate * (1 + i % 3) // 2, rate, rng), pre)[None]
        for i in range(count)
    ]


def normalise_image(pixels: np.ndarray, pre: ImagePreprocessing) -> np.ndarray:
    """[C, H, W] pixel values in 0..255 -> [1, C, H, W] float32 rescaled and normalised."""
    mean = np.asarray(pre.mean, dtype=np.float64)[:, None, None]
    std = np.asarray(pre.std, dtype=np.float64)[:, None, None]
    return ((pixels * pre.rescale_factor - mean) / std)[None].astype(np.float32)


def _generic_feeds(inputs: Sequence[TensorSpec], count: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    limits = InputLimits()
    return [random_feeds(inputs, 1, 16 + (i % 4) * 16, limits, rng) for i in range(count)]


def held_out_feeds(
    package: ModelPackage, count: int | None = None, exclude_texts: Sequence[str] = ()
) -> list[dict[str, np.ndarray]]:
    """Validation inputs, batch 1 each, disjoint from any calibration input (and from `exclude_texts`)."""
    manifest = package.manifest
    names = {spec.name for spec in manifest.inputs}
    pre = manifest.preprocessing
    if manifest.generation is not None:  # issue 15: generators read whole sentences, cache empty
        excluded = set(exclude_texts)
        return generator_held_out_feeds(package, [t for t in HELD_OUT_SENTENCES if t not in excluded][:count])
    if isinstance(pre, TextPreprocessing):
        excluded = set(exclude_texts)
        texts = [t for t in HELD_OUT_SENTENCES if t not in excluded][:count]
        return _text_feeds(package, texts, names)
    if isinstance(pre, ImagePreprocessing):
        name = next(iter(names))
        channels = next((d for d in manifest.inputs[0].shape[1:2] if isinstance(d, int)), 3)
        return [{name: image} for image in synthetic_images(pre, count or 64, HELD_OUT_SEED, channels)]
    if isinstance(pre, AudioPreprocessing):
        return [{manifest.inputs[0].name: clip} for clip in synthetic_clips(pre, count or 64, HELD_OUT_SEED)]
    return _generic_feeds(manifest.inputs, count or 64, HELD_OUT_SEED)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(a.shape[0], -1).astype(np.float64)
    b = b.reshape(b.shape[0], -1).astype(np.float64)
    norms = np.clip(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12, None)
    return (a * b).sum(axis=1) / norms


def _output_checks(pairs: Mapping[str, list[tuple[np.ndarray, np.ndarray]]]) -> tuple[OutputCheck, ...]:
    checks = []
    for name, items in pairs.items():
        diffs = [np.abs(got.astype(np.float64) - want.astype(np.float64)) for got, want in items]
        worst = max(float(d.max()) for d in diffs)
        mean = float(np.mean([d.mean() for d in diffs]))
        checks.append(OutputCheck(name, round(worst, 6), round(mean, 6), True))
    return tuple(checks)


Reference = Runner | Sequence[Mapping[str, np.ndarray]]


def reference_outputs(runner: Runner, feeds: Sequence[Feeds]) -> list[dict[str, np.ndarray]]:
    """The fp32 outputs for `feeds`, computed once and reused for every candidate."""
    return [runner.run(f) for f in feeds]


def _run_both(
    reference: Reference, candidate: Runner, feeds: Sequence[Feeds]
) -> list[tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray]]]:
    wanted = reference_outputs(reference, feeds) if isinstance(reference, Runner) else reference
    return [(candidate.run(f), w) for f, w in zip(feeds, wanted, strict=True)]


def _embedding_report(
    package: ModelPackage, reference: Reference, candidate: Runner, feeds: Sequence[Feeds]
) -> AccuracyReport:
    pre = package.manifest.preprocessing
    assert isinstance(pre, TextPreprocessing)
    output = pre.output or package.manifest.outputs[0].name
    sims: list[float] = []
    pairs: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {output: []}
    for got, want in _run_both(reference, candidate, feeds):
        pairs[output].append((got[output], want[output]))
    for (hidden, expected), f in zip(pairs[output], feeds, strict=True):
        mask = f.get("attention_mask", np.ones(hidden.shape[:2], dtype=np.int64))
        a = pool(hidden.astype(np.float32), mask, pre.pooling)
        b = pool(expected.astype(np.float32), mask, pre.pooling)
        sims.extend(_cosines(a, b))  # cosine is scale-free, so normalisation does not change it
    values = np.asarray(sims)
    return AccuracyReport(
        metric="cosine",
        value=float(values.mean()),
        score=float(values.mean()),
        worst=float(values.min()),
        samples=len(feeds),
        outputs=_output_checks(pairs),
        details={"mean_cosine": round(float(values.mean()), 6), "min_cosine": round(float(values.min()), 6)},
    )


def _classifier_report(
    package: ModelPackage, reference: Reference, candidate: Runner, feeds: Sequence[Feeds]
) -> AccuracyReport:
    names = [o.name for o in package.manifest.outputs]
    output = "logits" if "logits" in names else names[0]
    agree = total = 0
    max_logit = 0.0
    pairs: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {output: []}
    for got, want in _run_both(reference, candidate, feeds):
        g, w = got[output], want[output]
        pairs[output].append((g, w))
        agree += int((g.argmax(axis=-1) == w.argmax(axis=-1)).sum())
        total += int(np.prod(g.shape[:-1]))
        max_logit = max(max_logit, float(np.abs(g.astype(np.float64) - w).max()))
    agreement = agree / max(total, 1)
    return AccuracyReport(
        metric="top1_agreement",
        value=agreement,
        score=agreement,
        worst=agreement,
        samples=len(feeds),
        outputs=_output_checks(pairs),
        details={"top1_agreement": round(agreement, 6), "max_logit_diff": round(max_logit, 6)},
    )


def _generic_report(
    package: ModelPackage, reference: Reference, candidate: Runner, feeds: Sequence[Feeds]
) -> AccuracyReport:
    pairs: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    sims: list[float] = []
    for got, want in _run_both(reference, candidate, feeds):
        for name, w in want.items():
            pairs.setdefault(name, []).append((got[name], w))
            if np.issubdtype(w.dtype, np.floating):
                sims.extend(_cosines(got[name], w))
    checks = _output_checks(pairs)
    values = np.asarray(sims or [1.0])
    worst_abs = max((c.max_abs_diff for c in checks), default=0.0)
    return AccuracyReport(
        metric="max_abs_diff",
        value=worst_abs,
        score=float(values.mean()),
        worst=float(values.min()),
        samples=len(feeds),
        outputs=checks,
        details={
            "max_abs_diff": worst_abs,
            "mean_abs_diff": round(float(np.mean([c.mean_abs_diff for c in checks])), 6),
            "mean_output_cosine": round(float(values.mean()), 6),
            "min_output_cosine": round(float(values.min()), 6),
        },
    )


def _generator_report(
    package: ModelPackage, reference: Reference, candidate: Runner, feeds: Sequence[Feeds]
) -> AccuracyReport:
    """Next-token top-1 agreement with fp32 over every held-out position, and the perplexity ratio (issue 15)."""
    wanted = (
        [reference.run(f, ["logits"]) for f in feeds] if isinstance(reference, Runner) else list(reference)
    )
    agreement, worst, details, check = next_token_report_values(wanted, candidate, feeds)
    return AccuracyReport(
        metric="next_token_agreement",
        value=agreement,
        score=agreement,
        worst=worst,
        samples=len(feeds),
        outputs=(check,),
        details=details,
    )


ReportFn = Callable[[ModelPackage, Reference, Runner, Sequence[Feeds]], AccuracyReport]


def _report_for(package: ModelPackage) -> ReportFn:
    task = package.manifest.task
    if package.manifest.generation is not None:
        return _generator_report
    if task == "embed" and isinstance(package.manifest.preprocessing, TextPreprocessing):
        return _embedding_report
    if task in CLASSIFIER_TASKS:
        return _classifier_report
    return _generic_report


def compare_variant(
    package: ModelPackage,
    candidate: Path | Runner,
    feeds: Sequence[Feeds] | None = None,
    reference: Reference | None = None,
) -> AccuracyReport:
    """The task metric of the ONNX file `candidate` against the package's fp32 model on held-out inputs."""
    feeds = list(feeds) if feeds is not None else held_out_feeds(package)
    if not feeds:
        raise BadInputError("no held-out inputs to validate on; pass at least one sample")
    reference = reference or Runner(package.model_path(), "cpu")
    runner = candidate if isinstance(candidate, Runner) else Runner(candidate, "cpu")
    return _report_for(package)(package, reference, runner, feeds)


@dataclass(frozen=True)
class Latency:
    """Median latency in milliseconds per model, measured interleaved in one process."""

    median_ms: Mapping[str, float]
    runs: int
    threads: int
    shape: str

    def speedup(self, name: str, baseline: str = "fp32") -> float:
        """How many times faster `name` is than `baseline`."""
        return self.median_ms[baseline] / self.median_ms[name]


def latency_feeds(package: ModelPackage, batch: int = 1, seq: int = 128) -> dict[str, np.ndarray]:
    """Fixed-shape feeds for timing: real tokens for text (`seq` long, capped at the model's max length), the
    preprocessing size for images, one second of waveform for audio, synthetic tensors otherwise; `batch` rows."""
    pre = package.manifest.preprocessing
    names = {spec.name for spec in package.manifest.inputs}
    if package.manifest.generation is not None:  # issue 15: time one decode step over a full cache
        return generator_latency_feeds(package, batch, seq)
    if isinstance(pre, TextPreprocessing):
        tokenizer = TextTokenizer(package.path / pre.tokenizer, min(seq, pre.max_length))
        row = tokenizer([" ".join(HELD_OUT_SENTENCES)])
        return {k: np.repeat(v, batch, axis=0) for k, v in row.items() if k in names}
    if isinstance(pre, AudioPreprocessing):
        one_second = synthetic_clips(pre, 2, seed=7)[1]  # the clips run 0.5 s, 1 s, 1.5 s, ...
        return {package.manifest.inputs[0].name: np.repeat(one_second, batch, axis=0)}
    rng = np.random.default_rng(7)
    size = (pre.crop_size or pre.size) if isinstance(pre, ImagePreprocessing) else (224, 224)
    limits = InputLimits(max_length=seq, image_size=size)
    return random_feeds(package.manifest.inputs, batch, seq, limits, rng)


def measure_latency(
    models: Mapping[str, Path | Runner],
    feeds: Feeds,
    runs: int = 30,
    warmup: int = 3,
    threads: int = 2,
) -> Latency:
    """Median latency of each model on the same feeds, one run of each in turn per round (so drift hits all alike)."""
    runners = {
        name: m if isinstance(m, Runner) else Runner(m, "cpu", threads=threads) for name, m in models.items()
    }
    for runner in runners.values():
        for _ in range(warmup):
            runner.run(feeds)
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(runs):
        for name, runner in runners.items():
            start = time.perf_counter()
            runner.run(feeds)
            times[name].append(time.perf_counter() - start)
    shape = ", ".join(f"{k} {list(v.shape)}" for k, v in feeds.items())
    return Latency(
        {name: round(1000 * float(np.median(t)), 3) for name, t in times.items()}, runs, threads, shape
    )
