"""The rules an output must keep against its reference output (PyTorch for an export).

Every output is held to numpy's ``allclose`` rule, elementwise ``|onnx - ref| <= atol + rtol * |ref|`` (the rule
of Polygraphy's comparator): the tolerance grows with the value, so logits in the tens, log-probabilities down
to -40 and boxes in pixels are judged at their own scale, not by one absolute number. A task adds, per output it
knows (`Task.meaning`), checks of what the output means: top-1 and top-5 agreement over a vocabulary or classes,
cosine of embeddings, IoU of boxes. Each rule gives a `RuleCheck` whose ratio is the error over the error the
rule allows: at most 1 passes, and the largest ratio decides the output.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial

import numpy as np

from toolkit.manifest import RuleCheck

__all__ = [
    "COSINE",
    "DEFAULT_ATOL",
    "DEFAULT_RTOL",
    "TOP1",
    "TOP5",
    "Meaning",
    "MeaningRule",
    "Tolerance",
    "allclose_check",
    "top_k_rules",
]

# float32 reordering noise of an exported real checkpoint stays within these: about 1e-4 where values are near
# zero, and about a thousandth of the value for logits in the tens; a wrong attention scale, layer norm epsilon
# or position offset moves outputs by far more (tests/test_validation.py)
DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-3


@dataclass(frozen=True)
class Tolerance:
    """numpy's ``allclose`` tolerances: an element passes when ``|got - want| <= atol + rtol * |want|``."""

    atol: float = DEFAULT_ATOL
    rtol: float = DEFAULT_RTOL

    def allowed(self, reference: np.ndarray) -> np.ndarray:
        """The largest difference each element of `reference` allows."""
        return np.asarray(self.atol + self.rtol * np.abs(reference))


def allclose_check(actual: np.ndarray, expected: np.ndarray, tolerance: Tolerance) -> RuleCheck:
    """The ``allclose`` rule: value is the difference at the element nearest its allowance, limit that allowance."""
    want = expected.astype(np.float64)
    if actual.shape != want.shape:
        return RuleCheck("allclose", float("inf"), 0.0, float("inf"))
    if want.size == 0:
        return RuleCheck("allclose", 0.0, tolerance.atol, 0.0)
    diff = np.abs(actual.astype(np.float64) - want)
    allowed = tolerance.allowed(want)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(diff == 0, 0.0, diff / allowed)
    worst = int(np.argmax(ratios))
    return RuleCheck(
        "allclose", float(diff.flat[worst]), float(allowed.flat[worst]), float(ratios.flat[worst])
    )


Measure = Callable[[np.ndarray, np.ndarray, Tolerance], float]


@dataclass(frozen=True)
class MeaningRule:
    """A check of what an output means: `measure` gives a score in [0, 1] (1: the same meaning), `limit` the
    lowest score that passes (below 1, so the ratio ``(1 - score) / (1 - limit)`` is finite)."""

    name: str
    limit: float
    measure: Measure

    def check(self, actual: np.ndarray, expected: np.ndarray, tolerance: Tolerance) -> RuleCheck:
        """This rule's verdict on `actual` against `expected`."""
        if actual.shape != expected.shape:
            return RuleCheck(self.name, 0.0, self.limit, float("inf"))
        score = self.measure(actual.astype(np.float64), expected.astype(np.float64), tolerance)
        return RuleCheck(self.name, round(score, 8), self.limit, round((1.0 - score) / (1.0 - self.limit), 8))


def _rows(values: np.ndarray, axis: int) -> np.ndarray:
    """`values` with `axis` last, flattened to [rows, size of axis]."""
    moved = np.moveaxis(values, axis, -1)
    return moved.reshape(-1, moved.shape[-1])


def _top_k_agreement(
    k: int, axis: int, actual: np.ndarray, expected: np.ndarray, tolerance: Tolerance
) -> float:
    """Share of ONNX's top-k entries (per row along `axis`) that are in the reference's top k; an entry outside
    counts as agreeing when the reference holds it within the tolerance of its k-th best (a near-tie)."""
    got, want = _rows(actual, axis), _rows(expected, axis)
    if got.size == 0:
        return 1.0
    k = min(k, want.shape[-1])
    got_top = np.argpartition(-got, k - 1, axis=-1)[:, :k]
    kth_best = -np.partition(-want, k - 1, axis=-1)[:, k - 1 : k]
    values = np.take_along_axis(want, got_top, axis=-1)
    agree = values >= kth_best - 2 * tolerance.allowed(kth_best)
    return float(agree.mean())


def top_k_rules(axis: int = -1) -> tuple[MeaningRule, MeaningRule]:
    """Top-1 and top-5 agreement of scores over `axis` (logits, log-probabilities)."""
    return (
        MeaningRule("top1_agreement", 0.99, partial(_top_k_agreement, 1, axis)),
        MeaningRule("top5_agreement", 0.99, partial(_top_k_agreement, 5, axis)),
    )


def _worst_cosine(actual: np.ndarray, expected: np.ndarray, tolerance: Tolerance) -> float:
    """The lowest cosine between matching vectors (the last axis); two zero vectors agree."""
    got, want = _rows(actual, -1), _rows(expected, -1)
    if got.size == 0:
        return 1.0
    dot = (got * want).sum(-1)
    norms = np.linalg.norm(got, axis=-1) * np.linalg.norm(want, axis=-1)
    both_zero = (norms == 0) & (np.abs(got).sum(-1) == np.abs(want).sum(-1))
    cosine = np.where(norms > 0, dot / np.where(norms > 0, norms, 1.0), np.where(both_zero, 1.0, 0.0))
    return float(np.clip(cosine, -1.0, 1.0).min())


TOP1, TOP5 = top_k_rules()
COSINE = MeaningRule("cosine", 0.9999, _worst_cosine)
# a task's meaning checks: per output name, the rules validation adds to ``allclose``
Meaning = Mapping[str, tuple[MeaningRule, ...]]
