"""How much a variant costs: its task metric against the fp32 model on held-out inputs, and its latency.

The metric is the package's task's (`Task.metric` over `Task.metric_values`, one report per kind in
`_REPORTS`):

- ``cosine`` (embeddings): cosine between the pooled sentence embeddings of the variant and fp32; the value
  is the mean, the worst sentence is reported too.
- ``top1_agreement`` (classifiers, token taggers, segmenters): top-1 agreement with fp32 and the largest
  logit difference.
- ``next_token_agreement`` (generators): next-token top-1 agreement at every position of the held-out
  sentences, and the perplexity ratio (variant / fp32) on them.
- ``ranking_agreement`` (rerankers): each held-out sample is one query's list of documents; the top-1
  agreement of the lists with fp32 is the budgeted score, the Kendall tau of the orders (mean, worst) beside it.
- ``max_abs_diff`` (anything else): max and mean absolute difference of every output; the budget is checked
  against the per-sample cosine of the raw outputs, so one budget in (0, 1] works for every task.

Held-out inputs are the task's own samples for the ``held-out`` purpose (`Task.samples`), which never
overlap its calibration samples.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np

from toolkit.bench.measure import timed
from toolkit.errors import BadInputError
from toolkit.host import current_host
from toolkit.manifest import Host, ModelPackage, OutputCheck, Validation
from toolkit.runner import Runner
from toolkit.tasks import Task, task_for
from toolkit.tasks.modality import HELD_OUT_SEED

__all__ = [
    "HELD_OUT_SEED",
    "AccuracyReport",
    "Candidate",
    "Latency",
    "RecordedOutputs",
    "budget_floor",
    "compare_variant",
    "held_out_feeds",
    "kendall_tau",
    "latency_feeds",
    "measure_latency",
    "reference_outputs",
]

log = logging.getLogger(__name__)

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

    def to_validation(self, budget: float, host: Host | None = None) -> Validation:
        """As the manifest's `Validation` (reference fp32, threshold = budget), measured on `host` (this one's CPU)."""
        return Validation(
            metric=self.metric,
            value=round(self.value, 6),
            threshold=budget,
            reference="fp32",
            samples=self.samples,
            passed=self.meets(budget),
            outputs=self.outputs,
            cases=tuple(f"{k} {v:.6g}" for k, v in self.details.items()),
            host=host or current_host("cpu"),
        )

    def summary(self) -> str:
        """One line: ``cosine mean 0.9951, min 0.9862 (68 held-out)``."""
        if self.metric == "cosine":
            return f"cosine mean {self.score:.4f}, min {self.worst:.4f} ({self.samples} held-out)"
        if self.metric == "detection_agreement":
            return f"detections matched to fp32 {self.score:.1%} ({self.samples} held-out)"
        if self.metric == "next_token_agreement":
            return (
                f"next-token agreement {self.score:.1%}, perplexity ratio "
                f"{self.details.get('perplexity_ratio', 0.0):.4f} ({self.samples} held-out)"
            )
        if self.metric == "ranking_agreement":
            return (
                f"top-1 agreement {self.score:.1%}, Kendall tau mean {self.details.get('mean_kendall_tau', 0.0):.4f}, "
                f"min {self.details.get('min_kendall_tau', 0.0):.4f} ({self.samples} held-out lists)"
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


def held_out_feeds(
    package: ModelPackage, count: int | None = None, exclude_texts: Sequence[str] = ()
) -> list[dict[str, np.ndarray]]:
    """Validation inputs, batch 1 each, disjoint from any calibration input (and from `exclude_texts`)."""
    return task_for(package).samples("held-out", count, exclude_texts)


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


class Candidate(Protocol):
    """What a report runs on the held-out feeds: a `Runner`, or `RecordedOutputs` computed elsewhere."""

    def run(
        self, feeds: Mapping[str, Any], outputs: str | Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """The outputs for `feeds` (all, or those named)."""
        ...


class RecordedOutputs:
    """A variant's outputs computed elsewhere (an emulated device), handed out as its `Runner` would have."""

    def __init__(self, feeds: Sequence[Feeds], outputs: Sequence[Mapping[str, np.ndarray]]) -> None:
        self._by_feed = {id(f): o for f, o in zip(feeds, outputs, strict=True)}

    def run(
        self, feeds: Mapping[str, Any], outputs: str | Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """The recorded outputs for `feeds` (one of the feeds this was made with)."""
        got = self._by_feed[id(feeds)]
        names = [outputs] if isinstance(outputs, str) else list(outputs or got)
        return {name: got[name] for name in names}


def reference_outputs(runner: Runner, feeds: Sequence[Feeds]) -> list[dict[str, np.ndarray]]:
    """The fp32 outputs for `feeds`, computed once and reused for every candidate."""
    return [runner.run(f) for f in feeds]


def _run_both(
    reference: Reference, candidate: Candidate, feeds: Sequence[Feeds]
) -> list[tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray]]]:
    wanted = reference_outputs(reference, feeds) if isinstance(reference, Runner) else reference
    return [(candidate.run(f), w) for f, w in zip(feeds, wanted, strict=True)]


def _embedding_report(
    task: Task[Any], reference: Reference, candidate: Candidate, feeds: Sequence[Feeds]
) -> AccuracyReport:
    output = task.metric_output()
    sims: list[float] = []
    pairs: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {output: []}
    for (got, want), f in zip(_run_both(reference, candidate, feeds), feeds, strict=True):
        pairs[output].append((got[output], want[output]))
        sims.extend(_cosines(task.metric_values(got, f), task.metric_values(want, f)))
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
    task: Task[Any], reference: Reference, candidate: Candidate, feeds: Sequence[Feeds]
) -> AccuracyReport:
    output = task.metric_output()
    agree = total = 0
    max_logit = 0.0
    pairs: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {output: []}
    for (got, want), f in zip(_run_both(reference, candidate, feeds), feeds, strict=True):
        pairs[output].append((got[output], want[output]))
        g, w = task.metric_values(got, f), task.metric_values(want, f)
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


def kendall_tau(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall's tau-b of two score vectors (1: the same order; ties counted as neither concordant nor discordant)."""
    da = np.sign(a[:, None] - a[None, :])
    db = np.sign(b[:, None] - b[None, :])
    upper = np.triu_indices(len(a), k=1)
    da, db = da[upper], db[upper]
    norm = np.sqrt(float(np.count_nonzero(da)) * float(np.count_nonzero(db)))
    return float((da * db).sum() / norm) if norm else 1.0


def _ranking_report(
    task: Task[Any], reference: Reference, candidate: Candidate, feeds: Sequence[Feeds]
) -> AccuracyReport:
    output = task.metric_output()
    agree = 0
    taus: list[float] = []
    max_score = 0.0
    pairs: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {output: []}
    for (got, want), f in zip(_run_both(reference, candidate, feeds), feeds, strict=True):
        pairs[output].append((got[output], want[output]))
        g, w = task.metric_values(got, f), task.metric_values(want, f)
        agree += int(g.argmax() == w.argmax())
        taus.append(kendall_tau(g, w))
        max_score = max(max_score, float(np.abs(g - w).max()))
    agreement = agree / len(feeds)
    return AccuracyReport(
        metric="ranking_agreement",
        value=agreement,
        score=agreement,
        worst=agreement,
        samples=len(feeds),
        outputs=_output_checks(pairs),
        details={
            "top1_agreement": round(agreement, 6),
            "mean_kendall_tau": round(float(np.mean(taus)), 6),
            "min_kendall_tau": round(float(np.min(taus)), 6),
            "max_score_diff": round(max_score, 6),
        },
    )


def _generic_report(
    task: Task[Any], reference: Reference, candidate: Candidate, feeds: Sequence[Feeds]
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


def _detection_report(
    task: Task[Any], reference: Reference, candidate: Candidate, feeds: Sequence[Feeds]
) -> AccuracyReport:
    """fp32's detections matched by the candidate's (IoU >= 0.5, same label): the detect task's `agreement`."""
    agreement = cast(Any, task).agreement
    matched = total = 0
    pairs: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for (got, want), f in zip(_run_both(reference, candidate, feeds), feeds, strict=True):
        for name, w in want.items():
            pairs.setdefault(name, []).append((got[name], w))
        hit, count = agreement(got, want, f)
        matched, total = matched + hit, total + count
    rate = matched / total if total else 1.0
    return AccuracyReport(
        metric="detection_agreement",
        value=rate,
        score=rate,
        worst=rate,
        samples=len(feeds),
        outputs=_output_checks(pairs),
        details={"detection_agreement": round(rate, 6), "fp32_detections": float(total)},
    )


def _generator_report(
    task: Task[Any], reference: Reference, candidate: Candidate, feeds: Sequence[Feeds]
) -> AccuracyReport:
    """Next-token top-1 agreement with fp32 at every held-out position, and the perplexity ratio (generate)."""
    wanted = (
        [reference.run(f, ["logits"]) for f in feeds] if isinstance(reference, Runner) else list(reference)
    )
    got = [candidate.run(f, ["logits"]) for f in feeds]
    agreement, worst, details, check = cast(Any, task).next_token_agreement(got, wanted, feeds)
    return AccuracyReport(
        metric="next_token_agreement",
        value=agreement,
        score=agreement,
        worst=worst,
        samples=len(feeds),
        outputs=(check,),
        details=details,
    )


ReportFn = Callable[[Task[Any], Reference, Candidate, Sequence[Feeds]], AccuracyReport]

# Task.metric -> how the report is made
_REPORTS: dict[str, ReportFn] = {
    "cosine": _embedding_report,
    "top1_agreement": _classifier_report,
    "ranking_agreement": _ranking_report,
    "max_abs_diff": _generic_report,
    "detection_agreement": _detection_report,
    "next_token_agreement": _generator_report,
}


def compare_variant(
    package: ModelPackage,
    candidate: Path | Candidate,
    feeds: Sequence[Feeds] | None = None,
    reference: Reference | None = None,
) -> AccuracyReport:
    """The task metric of the ONNX file `candidate` against the package's fp32 model on held-out inputs."""
    feeds = list(feeds) if feeds is not None else held_out_feeds(package)
    if not feeds:
        raise BadInputError("no held-out inputs to validate on; pass at least one sample")
    reference = reference or Runner(package.model_path(), "cpu")
    runner = Runner(candidate, "cpu") if isinstance(candidate, Path) else candidate
    task = task_for(package)
    return _REPORTS[task.metric](task, reference, runner, feeds)


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
    """Fixed-shape feeds for timing, `batch` rows: the task's `timing_feeds` (real tokens for text, `seq` long
    and capped at the model's max length; the preprocessing size for images; one second of waveform for audio)."""
    return task_for(package).timing_feeds(batch, seq)


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
            times[name].append(timed(partial(runner.run, feeds)))
    shape = ", ".join(f"{k} {list(v.shape)}" for k, v in feeds.items())
    return Latency({name: round(float(np.median(t)), 3) for name, t in times.items()}, runs, threads, shape)
