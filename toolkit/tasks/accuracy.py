"""The accuracy report a task makes of a variant against fp32 (`Task.accuracy_report`), numpy only.

`converters.accuracy.compare_variant` runs the variant and fp32 on held-out inputs (`Task.samples`) and hands
the task the pairs of outputs; the task answers with an `AccuracyReport` built by one of the shapes here:

- `cosine_report` (embeddings): cosine between the variant's and fp32's `metric_values`; the value is the mean,
  the worst sample is reported too.
- `top1_report` (classifiers, token taggers, segmenters): top-1 agreement with fp32 and the largest logit
  difference.
- `ranking_report` (rerankers): each held-out sample is one query's list of documents; the top-1 agreement of
  the lists with fp32 is the budgeted score, the Kendall tau of the orders (mean, worst) beside it.
- `detection_report` (detectors): the share of fp32's detections the variant matches (the task matches them).
- `max_abs_diff_report` (anything else): max and mean absolute difference of every output; the budget is
  checked against the per-sample cosine of the raw outputs, so one budget in (0, 1] works for every task.

A generator makes its own (next-token agreement and perplexity, `toolkit.tasks.generate`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from toolkit.host import current_host
from toolkit.manifest import Host, OutputCheck, Validation

__all__ = [
    "AccuracyReport",
    "HeldOut",
    "MetricReader",
    "Runs",
    "budget_floor",
    "cosine_report",
    "detection_report",
    "kendall_tau",
    "max_abs_diff_report",
    "output_checks",
    "ranking_report",
    "top1_report",
    "word_error_rate",
]

Feeds = Mapping[str, np.ndarray]
Outputs = Mapping[str, np.ndarray]
Runs = Sequence[tuple[Outputs, Outputs]]
"""Per held-out input: (the variant's outputs, fp32's outputs)."""
HeldOut = Sequence[Feeds]
"""The held-out inputs, batch 1 each."""


def budget_floor(budget: float) -> float:
    """The worst single sample a budget allows: it may lose at most twice the mean's allowance (0.99 -> 0.98)."""
    return 1.0 - 2.0 * (1.0 - budget)


@dataclass(frozen=True)
class AccuracyReport:
    """A variant against fp32 on held-out inputs.

    `score` is the similarity checked against a budget (mean cosine or top-1 agreement), `worst` the worst
    sample's similarity (min cosine; for classifiers the agreement itself); `details` holds the rest
    (min cosine, max logit diff, ...); `headline` is the one line `summary` prints.
    """

    metric: str
    value: float
    score: float
    worst: float
    samples: int
    headline: str
    outputs: tuple[OutputCheck, ...] = ()
    details: Mapping[str, float] = field(default_factory=dict)

    def meets(self, budget: float) -> bool:
        """Whether the mean reaches `budget` and the worst sample reaches `budget_floor(budget)`."""
        return self.score >= budget and self.worst >= budget_floor(budget)

    def to_validation(
        self, budget: float, host: Host | None = None, held_out: str | None = None
    ) -> Validation:
        """As the manifest's `Validation` (reference fp32, threshold = budget), measured on `host` (this one's CPU)
        on the `held_out` inputs (where they came from)."""
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
            held_out=held_out,
        )

    def summary(self) -> str:
        """One line: ``cosine mean 0.9951, min 0.9862 (68 held-out)``."""
        return self.headline


class MetricReader(Protocol):
    """What the report shapes ask of a task: the output its metric reads and the values it compares."""

    def metric_output(self) -> str:
        """The output the accuracy metric reads."""
        ...

    def metric_values(self, outputs: Mapping[str, np.ndarray], feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        """What the metric compares, per sample."""
        ...


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(a.shape[0], -1).astype(np.float64)
    b = b.reshape(b.shape[0], -1).astype(np.float64)
    norms = np.clip(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12, None)
    return np.asarray((a * b).sum(axis=1) / norms)


def output_checks(runs: Runs, names: Sequence[str] | None = None) -> tuple[OutputCheck, ...]:
    """Max and mean absolute difference per output (`names`, default every output fp32 gave)."""
    checks = []
    for name in names if names is not None else list(runs[0][1]) if runs else []:
        diffs = [np.abs(got[name].astype(np.float64) - want[name].astype(np.float64)) for got, want in runs]
        worst = max(float(d.max()) for d in diffs)
        mean = float(np.mean([d.mean() for d in diffs]))
        checks.append(OutputCheck(name, round(worst, 6), round(mean, 6), True))
    return tuple(checks)


def _pairs(task: MetricReader, runs: Runs, feeds: HeldOut) -> list[tuple[np.ndarray, np.ndarray]]:
    """(variant, fp32) `metric_values` per held-out input."""
    return [
        (task.metric_values(got, f), task.metric_values(want, f))
        for (got, want), f in zip(runs, feeds, strict=True)
    ]


def _agreement_report(
    metric: str,
    rate: float,
    samples: int,
    headline: str,
    outputs: tuple[OutputCheck, ...],
    details: Mapping[str, float],
) -> AccuracyReport:
    """A report whose one figure is an agreement rate: value, score and worst alike."""
    return AccuracyReport(metric, rate, rate, rate, samples, headline, outputs, details)


def cosine_report(task: MetricReader, runs: Runs, feeds: HeldOut) -> AccuracyReport:
    """Mean and worst cosine of the variant's `metric_values` against fp32's."""
    sims = [s for got, want in _pairs(task, runs, feeds) for s in _cosines(got, want)]
    values = np.asarray(sims)
    mean, worst = float(values.mean()), float(values.min())
    return AccuracyReport(
        metric="cosine",
        value=mean,
        score=mean,
        worst=worst,
        samples=len(feeds),
        headline=f"cosine mean {mean:.4f}, min {worst:.4f} ({len(feeds)} held-out)",
        outputs=output_checks(runs, [task.metric_output()]),
        details={"mean_cosine": round(mean, 6), "min_cosine": round(worst, 6)},
    )


def top1_report(task: MetricReader, runs: Runs, feeds: HeldOut) -> AccuracyReport:
    """Top-1 agreement of the variant's `metric_values` (logits, last axis) with fp32's, and the largest logit
    difference."""
    agree = total = 0
    max_logit = 0.0
    for g, w in _pairs(task, runs, feeds):
        agree += int((g.argmax(axis=-1) == w.argmax(axis=-1)).sum())
        total += int(np.prod(g.shape[:-1]))
        max_logit = max(max_logit, float(np.abs(g.astype(np.float64) - w).max()))
    agreement = agree / max(total, 1)
    return _agreement_report(
        "top1_agreement",
        agreement,
        len(feeds),
        f"top-1 agreement {agreement:.1%}, max logit diff {round(max_logit, 6):.3g} ({len(feeds)} held-out)",
        output_checks(runs, [task.metric_output()]),
        {"top1_agreement": round(agreement, 6), "max_logit_diff": round(max_logit, 6)},
    )


def kendall_tau(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall's tau-b of two score vectors (1: the same order; ties counted as neither concordant nor discordant)."""
    da = np.sign(a[:, None] - a[None, :])
    db = np.sign(b[:, None] - b[None, :])
    upper = np.triu_indices(len(a), k=1)
    da, db = da[upper], db[upper]
    norm = np.sqrt(float(np.count_nonzero(da)) * float(np.count_nonzero(db)))
    return float((da * db).sum() / norm) if norm else 1.0


def ranking_report(task: MetricReader, runs: Runs, feeds: HeldOut) -> AccuracyReport:
    """Per held-out list of documents: whether the variant ranks fp32's best first, and the Kendall tau of the
    two orders."""
    agree = 0
    taus: list[float] = []
    max_score = 0.0
    for g, w in _pairs(task, runs, feeds):
        agree += int(g.argmax() == w.argmax())
        taus.append(kendall_tau(g, w))
        max_score = max(max_score, float(np.abs(g - w).max()))
    agreement = agree / len(feeds)
    mean_tau, min_tau = float(np.mean(taus)), float(np.min(taus))
    return _agreement_report(
        "ranking_agreement",
        agreement,
        len(feeds),
        f"top-1 agreement {agreement:.1%}, Kendall tau mean {round(mean_tau, 6):.4f}, "
        f"min {round(min_tau, 6):.4f} ({len(feeds)} held-out lists)",
        output_checks(runs, [task.metric_output()]),
        {
            "top1_agreement": round(agreement, 6),
            "mean_kendall_tau": round(mean_tau, 6),
            "min_kendall_tau": round(min_tau, 6),
            "max_score_diff": round(max_score, 6),
        },
    )


def detection_report(
    runs: Runs, feeds: HeldOut, match: Callable[[Outputs, Outputs, Feeds], tuple[int, int]]
) -> AccuracyReport:
    """The share of fp32's detections the variant's match (`match`: (matched, fp32's detections) of one input)."""
    matched = total = 0
    for (got, want), f in zip(runs, feeds, strict=True):
        hit, count = match(got, want, f)
        matched, total = matched + hit, total + count
    rate = matched / total if total else 1.0
    return _agreement_report(
        "detection_agreement",
        rate,
        len(feeds),
        f"detections matched to fp32 {rate:.1%} ({len(feeds)} held-out)",
        output_checks(runs),
        {"detection_agreement": round(rate, 6), "fp32_detections": float(total)},
    )


def max_abs_diff_report(runs: Runs, feeds: HeldOut) -> AccuracyReport:
    """Max and mean absolute difference of every output, and the per-sample cosine of the float ones."""
    sims = [
        s
        for got, want in runs
        for name, w in want.items()
        if np.issubdtype(w.dtype, np.floating)
        for s in _cosines(got[name], w)
    ]
    checks = output_checks(runs)
    values = np.asarray(sims or [1.0])
    worst_abs = max((c.max_abs_diff for c in checks), default=0.0)
    mean, worst = float(values.mean()), float(values.min())
    return AccuracyReport(
        metric="max_abs_diff",
        value=worst_abs,
        score=mean,
        worst=worst,
        samples=len(feeds),
        headline=(
            f"max abs diff {worst_abs:.3g}, output cosine mean {mean:.4f}, min {worst:.4f} "
            f"({len(feeds)} held-out)"
        ),
        outputs=checks,
        details={
            "max_abs_diff": worst_abs,
            "mean_abs_diff": round(float(np.mean([c.mean_abs_diff for c in checks])), 6),
            "mean_output_cosine": round(mean, 6),
            "min_output_cosine": round(worst, 6),
        },
    )


def word_error_rate(hypothesis: str, reference: str) -> float:
    """Word-level Levenshtein distance over the reference's word count (0.0 when both are empty)."""
    hyp, ref = hypothesis.split(), reference.split()
    if not ref:
        return 0.0 if not hyp else 1.0
    row = list(range(len(hyp) + 1))
    for i, word in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, other in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (word != other))
    return row[len(hyp)] / len(ref)
