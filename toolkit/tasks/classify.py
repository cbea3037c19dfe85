"""``classify``: text (sequence) classification, softmax over the logits, labels from the manifest."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

import numpy as np

from toolkit.agreement import TOP1, TOP5, Meaning
from toolkit.errors import BadInputError
from toolkit.manifest import TensorSpec
from toolkit.preprocess import Classification, label_names, ranked, softmax
from toolkit.tasks.accuracy import AccuracyReport, HeldOut, Runs, top1_report
from toolkit.tasks.base import Outputs, ServedTensor, Task, TextPipeline
from toolkit.tasks.modality import Modality, TextModality

_M = TypeVar("_M", bound=Modality)

__all__ = ["PIPELINE", "TASK", "ClassifyTask", "RankedTask", "TextClassifier", "check_top_k", "top_k_lines"]


def check_top_k(top_k: int) -> None:
    """A BadInputError unless `top_k` is at least 1."""
    if top_k < 1:
        raise BadInputError(f"top_k must be at least 1, got {top_k}")


def top_k_lines(items: Sequence[str], results: Sequence[Sequence[Classification]]) -> list[str]:
    """`edge run`'s ranked listing: the item, then ``  1. 0.9731  label`` per label."""
    lines = []
    for item, labels in zip(items, results, strict=True):
        lines.append(f"{item}:")
        lines.extend(f"  {place}. {c.score:.4f}  {c.label}" for place, c in enumerate(labels, 1))
    return lines


class RankedTask(Task[_M]):
    """A classifier of any modality: softmax over its logits, the top-k labels of each input; `edge run`
    prints each input's top 5."""

    preferred_output = "logits"
    meaning: ClassVar[Meaning] = {"logits": (TOP1, TOP5)}

    def finish(self, outputs: Mapping[str, np.ndarray], top_k: int) -> list[list[Classification]]:
        """The `top_k` labels of each row, highest first."""
        return ranked(self.manifest, outputs[self.metric_output()], top_k)

    def run_lines(self, items: Sequence[str], results: Sequence[Any]) -> list[str]:
        """Each input, then ``  1. 0.9731  label`` per label."""
        return top_k_lines(items, results)

    def run_json(self, results: Sequence[Any]) -> dict[str, Any]:
        """``top5``: label and score of each input's top labels."""
        return {"top5": [[{"label": c.label, "score": c.score} for c in labels] for labels in results]}


class ClassifyTask(RankedTask[TextModality]):
    """One label per text, every label's probability beside it."""

    name = "classify"
    modality = TextModality
    metric = "top1_agreement"
    run_input = "text"

    def run_lines(self, items: Sequence[str], results: Sequence[Any]) -> list[str]:
        """``'text': LABEL (0.973)`` per text."""
        return [
            f"{text[:50]!r}: {r[0].label} ({r[0].score:.3f})" for text, r in zip(items, results, strict=True)
        ]

    def run_json(self, results: Sequence[Any]) -> dict[str, Any]:
        """``classifications``: the top label of each text, with every label's score."""
        return {"classifications": [r[0] for r in results]}

    def served_outputs(self, outputs: Sequence[TensorSpec]) -> tuple[ServedTensor, ...]:
        """``label`` BYTES [N] and ``probabilities`` FP32 [N, labels]."""
        logits = next(s for s in outputs if s.name == self.output_name(outputs))
        count = logits.shape[-1] if isinstance(logits.shape[-1], int) else -1
        return (ServedTensor("label", "BYTES", (-1,)), ServedTensor("probabilities", "FP32", (-1, count)))

    def serve(self, outputs: Mapping[str, np.ndarray], feeds: Mapping[str, np.ndarray]) -> Outputs:
        """The top label of each text and every label's probability."""
        probs = softmax(outputs[self.metric_output()])
        names = label_names(self.manifest, probs.shape[-1])
        labels = np.empty(len(probs), dtype=object)
        labels[:] = [names[int(i)].encode("utf-8") for i in probs.argmax(axis=-1)]
        return {"label": labels, "probabilities": probs.astype(np.float32)}

    def accuracy_report(self, runs: Runs, feeds: HeldOut) -> AccuracyReport:
        """Top-1 agreement of the variant's labels with fp32's, and the largest logit difference."""
        return top1_report(self, runs, feeds)


class TextClassifier(TextPipeline):
    """Sequence classification: `TextClassifier.load(path).classify(texts)`."""

    task_class = ClassifyTask
    task: ClassifyTask

    def classify(
        self, texts: Iterable[str], top_k: int = 1, batch_size: int = 32
    ) -> list[list[Classification]]:
        """For each text, its `top_k` labels by probability (highest first); `scores` holds every label's."""
        check_top_k(top_k)
        return self._texts(texts, batch_size, lambda outputs, feeds: self.task.finish(outputs, top_k))

    def run_items(self, items: Sequence[Any]) -> list[Any]:
        """`classify(items)`: the top label of each text."""
        return list(self.classify(items))


TASK = ClassifyTask
PIPELINE = TextClassifier
