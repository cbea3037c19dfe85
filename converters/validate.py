"""Validation of an export: the ONNX model against the original on the same inputs.

The inputs cover several batch sizes and sequence lengths, padded and unpadded, real text where the
package has a tokenizer; every output is compared by its worst absolute difference over all cases.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from toolkit.host import current_host
from toolkit.inputs import InputLimits, has_sequence_axis, random_feeds
from toolkit.manifest import OutputCheck, TensorSpec, Validation
from toolkit.preprocess import TextTokenizer
from toolkit.runner import Runner

__all__ = ["SAMPLE_SENTENCES", "InputLimits", "ValidationCase", "compare_with_reference", "validation_cases"]

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


def compare_with_reference(
    runner: Runner,
    reference: Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]],
    cases: Sequence[ValidationCase],
    atol: float,
    reference_name: str = "pytorch",
) -> Validation:
    """Run every case through the ONNX runner and `reference`; per output, the worst max-abs-diff against `atol`."""
    worst: dict[str, float] = {}
    means: dict[str, list[float]] = {}
    for case in cases:
        got = runner.run(case.feeds)
        want = reference(case.feeds)
        for name, expected in want.items():
            actual = got[name].astype(np.float64)
            diff = np.abs(actual - expected.astype(np.float64))
            if actual.shape != expected.shape:
                diff = np.array([np.inf])
            worst[name] = max(worst.get(name, 0.0), float(diff.max()))
            means.setdefault(name, []).append(float(diff.mean()))
    checks = tuple(
        OutputCheck(name, worst[name], float(np.mean(means[name])), bool(worst[name] <= atol))
        for name in worst
    )
    value = max((c.max_abs_diff for c in checks), default=0.0)
    return Validation(
        metric="max_abs_diff",
        value=value,
        threshold=atol,
        reference=reference_name,
        samples=sum(case.rows for case in cases),
        passed=all(c.passed for c in checks),
        outputs=checks,
        cases=tuple(case.name for case in cases),
        host=current_host(runner.providers[0]),
    )
