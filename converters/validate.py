"""Validation of an export: the ONNX model against the original on the same inputs.

The inputs cover several batch sizes and sequence lengths, padded and unpadded, real text where the
package has a tokenizer; every output is judged over all cases by the rules of `toolkit.agreement`: numpy's
``allclose`` with `Tolerance`, plus the checks of what it means that its task names (`Task.meaning`).
`OutputTally` and `validation_of` are shared by every exporter's validation (plain, causal LM, seq2seq).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from toolkit.agreement import MeaningRule, Tolerance, allclose_check
from toolkit.host import current_host
from toolkit.inputs import InputLimits, has_sequence_axis, random_feeds
from toolkit.manifest import Host, OutputCheck, RuleCheck, TensorSpec, Validation
from toolkit.preprocess import TextTokenizer
from toolkit.runner import Runner

__all__ = [
    "SAMPLE_SENTENCES",
    "InputLimits",
    "OutputTally",
    "ValidationCase",
    "compare_with_reference",
    "validation_cases",
    "validation_of",
]

SAMPLE_SENTENCES = (
    "Edge inference keeps latency low.",
    "The quick brown fox jumps over the lazy dog while the farmer watches from the porch.",
    "ONNX",
    "A model package holds the exported graph, its manifest and the tokenizer files needed to run it anywhere.",
    "Quantization trades a little accuracy for smaller files and faster integer arithmetic on CPUs.",
)


@dataclass(frozen=True)
class ValidationCase:
    """A named set of feeds."""

    name: str
    feeds: Mapping[str, np.ndarray]

    @property
    def rows(self) -> int:
        """Batch size of the case."""
        return int(next(iter(self.feeds.values())).shape[0])


def validation_cases(
    inputs: Sequence[TensorSpec],
    limits: InputLimits,
    tokenizer: TextTokenizer | None = None,
    seed: int = 0,
) -> list[ValidationCase]:
    """Cases over batch sizes 1 and 3, short and long sequences, padded and unpadded, real text when possible.

    Synthetic values honour each spec's `value_range`; a dim named like the batch follows the batch, one named
    like a sequence the sequence length, and any other free dim takes its size from `limits` (`dim_sizes`).
    """
    rng = np.random.default_rng(seed)
    names = {spec.name for spec in inputs}
    has_sequence = has_sequence_axis(inputs)
    cases: list[ValidationCase] = []
    if tokenizer is not None:
        for label, texts in (
            ("batch 1, real text, unpadded", SAMPLE_SENTENCES[1:2]),
            ("batch 3, real text, padded", SAMPLE_SENTENCES[:3]),
        ):
            feeds = tokenizer(texts)
            cases.append(ValidationCase(label, {k: v for k, v in feeds.items() if k in names}))
    if has_sequence:
        long = min(128, limits.max_length)
        shapes: tuple[tuple[int, int | None, bool], ...] = (
            (1, 8, False),
            (3, 16, True),
            (2, long, False),
            (3, long, True),
        )
    else:
        shapes = ((1, None, False), (3, None, False))
    for batch, seq, padded in shapes:
        feeds = random_feeds(inputs, batch, seq, limits, rng, padded)
        label = f"batch {batch}" + (
            f", seq {seq}, {'padded' if padded else 'unpadded'}" if has_sequence else ""
        )
        cases.append(ValidationCase(label, feeds))
    return cases


@dataclass
class OutputTally:
    """One output's comparison, case by case: the worst and mean absolute difference, and per rule its worst
    verdict over the cases."""

    name: str
    tolerance: Tolerance
    meaning: Sequence[MeaningRule] = ()
    worst_diff: float = 0.0
    mean_diffs: list[float] = field(default_factory=list)
    worst_rules: dict[str, RuleCheck] = field(default_factory=dict)

    def add(self, actual: np.ndarray, expected: np.ndarray) -> None:
        """Compare one case's `actual` (ONNX) output with `expected` (the reference)."""
        if actual.shape != expected.shape:
            self.worst_diff = float("inf")
        elif actual.size:
            diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
            self.worst_diff = max(self.worst_diff, float(diff.max()))
            self.mean_diffs.append(float(diff.mean()))
        for rule in (allclose_check(actual, expected, self.tolerance), *self._meaning(actual, expected)):
            kept = self.worst_rules.get(rule.rule)
            if kept is None or rule.ratio > kept.ratio:
                self.worst_rules[rule.rule] = rule

    def _meaning(self, actual: np.ndarray, expected: np.ndarray) -> list[RuleCheck]:
        return [rule.check(actual, expected, self.tolerance) for rule in self.meaning]

    def check(self) -> OutputCheck:
        """The output's verdict: every rule passes; the one with the largest ratio decided."""
        rules = tuple(self.worst_rules.values())
        deciding = max(rules, key=lambda rule: rule.ratio)
        return OutputCheck(
            self.name,
            self.worst_diff,
            float(np.mean(self.mean_diffs)) if self.mean_diffs else 0.0,
            all(rule.passed for rule in rules),
            rules,
            deciding.rule,
        )


def validation_of(
    checks: Sequence[OutputCheck],
    tolerance: Tolerance,
    samples: int,
    cases: Sequence[str],
    reference: str = "pytorch",
    host: Host | None = None,
) -> Validation:
    """The ``allclose`` validation record: its value is the largest deciding ratio over the outputs (limit 1)."""
    return Validation(
        metric="allclose",
        value=max((max(r.ratio for r in c.rules) for c in checks if c.rules), default=0.0),
        threshold=1.0,
        reference=reference,
        samples=samples,
        passed=all(c.passed for c in checks),
        outputs=tuple(checks),
        cases=tuple(cases),
        host=host,
        atol=tolerance.atol,
        rtol=tolerance.rtol,
    )


def compare_with_reference(
    runner: Runner,
    reference: Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]],
    cases: Sequence[ValidationCase],
    tolerance: Tolerance,
    reference_name: str = "pytorch",
    meaning: Mapping[str, Sequence[MeaningRule]] | None = None,
    subgraphs: Mapping[str, Runner] | None = None,
) -> Validation:
    """Run every case through the ONNX runner and `reference`; judge each output by ``allclose`` and the
    `meaning` rules its task names for it. Each of `subgraphs` (graphs cut from the runner's) runs on its own
    inputs of every case, its outputs judged against the same reference as ``OUTPUT (NAME)``."""
    tallies: dict[str, OutputTally] = {}

    def judge(label: str, name: str, actual: np.ndarray, expected: np.ndarray) -> None:
        if label not in tallies:
            tallies[label] = OutputTally(label, tolerance, (meaning or {}).get(name, ()))
        tallies[label].add(actual, expected)

    for case in cases:
        got = runner.run(case.feeds)
        want = reference(case.feeds)
        for name, expected in want.items():
            judge(name, name, got[name], expected)
        for part, sub in (subgraphs or {}).items():
            inputs = {spec.name for spec in sub.inputs}
            for name, actual in sub.run({k: v for k, v in case.feeds.items() if k in inputs}).items():
                judge(f"{name} ({part})", name, actual, want[name])
    return validation_of(
        [tally.check() for tally in tallies.values()],
        tolerance,
        sum(case.rows for case in cases),
        [case.name for case in cases],
        reference_name,
        current_host(runner.providers[0]),
    )
