"""``rerank``: a cross-encoder scoring (query, document) pairs, as sentence-transformers' ``CrossEncoder`` does.

The model is a sequence classifier with one logit; each pair is tokenized as one sequence pair (``[CLS] query
[SEP] document [SEP]``, cut longest-first to the max length) and its score is that logit through the
package's ``activation`` (`ACTIVATIONS`, read from the model's sentence-transformers config at conversion:
``CrossEncoder.predict``'s default). `Reranker.rank` returns (index, score) pairs, best first.

Accuracy (``ranking_agreement``): held-out lists of one query and `LIST_SIZE` documents built from the
held-out sentences, each list one batch; a variant is compared with fp32 by the top-1 agreement of the lists
(the budgeted score) and the Kendall tau of their orders.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from toolkit.checks import text_list
from toolkit.corpus import CALIBRATION_SENTENCES, HELD_OUT_SENTENCES
from toolkit.errors import BadInputError, BadModelError
from toolkit.manifest import ModelPackage, TensorSpec
from toolkit.runner import Runner
from toolkit.tasks.accuracy import AccuracyReport, HeldOut, Runs, ranking_report
from toolkit.tasks.base import OWN_HELD_OUT_LIMIT, Feeds, Task, TextPipeline, own_lines
from toolkit.tasks.modality import DEFAULT_SAMPLES, TextModality

__all__ = [
    "ACTIVATIONS",
    "LIST_SIZE",
    "PIPELINE",
    "TASK",
    "RankedDocument",
    "RerankTask",
    "Reranker",
    "check_top_n",
]

# The activation name in the manifest -> the function (float64 in, float64 out).
ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
    "identity": lambda x: x,
    "tanh": np.tanh,
}
# Documents in each held-out list the accuracy metric ranks.
LIST_SIZE = 8


@dataclass(frozen=True)
class RankedDocument:
    """One document of a ranking: its index in the documents given, and its score; unpacks as a pair
    (``for index, score in ranking``)."""

    index: int
    score: float

    def __iter__(self) -> Iterator[Any]:
        return iter((self.index, self.score))


def check_top_n(top_n: int | None) -> None:
    """A BadInputError unless `top_n` is None (every document) or at least 1."""
    if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1):
        raise BadInputError(f"top_n must be a positive integer (or None for every document), got {top_n!r}")


def _query_of(sentence: str) -> str:
    """A query a sentence answers: its first half (at least two words)."""
    words = sentence.split()
    return " ".join(words[: max(2, len(words) // 2)])


class RerankTask(Task[TextModality]):
    """Score (query, document) pairs; the score is the one logit through the package's activation."""

    name = "rerank"
    modality = TextModality
    metric = "ranking_agreement"
    preferred_output = "logits"
    run_input = "query"

    def __init__(self, package: ModelPackage, specs: Sequence[TensorSpec] | None = None) -> None:
        super().__init__(package, specs)
        activation = self.data.pre.activation or "identity"
        if activation not in ACTIVATIONS:
            raise BadModelError(
                f"package '{package.path}' names score activation '{activation}'; this edge-toolkit knows "
                f"{', '.join(ACTIVATIONS)}: re-create it with `edge convert`"
            )
        self.activation = activation

    def pair_rows(self, query: str, documents: Sequence[str]) -> list[tuple[list[int], list[int]]]:
        """Token ids and type ids of each (query, document) pair, unpadded."""
        return [(e.ids, e.type_ids) for e in self.data.tokenizer.pair_encodings(query, documents)]

    def pair_feeds(self, query: str, documents: Sequence[str]) -> Feeds:
        """(query, document) pairs tokenized and padded to their longest."""
        padded = self.data.tokenizer.pad(self.pair_rows(query, documents))
        return {k: v for k, v in padded.items() if k in self.data.input_names}

    def finish(self, outputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Scores float32 [N]: each pair's logit through the activation."""
        logits = outputs[self.metric_output()].astype(np.float64)
        return ACTIVATIONS[self.activation](logits.reshape(len(logits), -1)[:, 0]).astype(np.float32)

    def relevance_scores(self, outputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Scores float32 [N] of one run, for the rerank routes (`ServesRerank`)."""
        return self.finish(outputs)

    # -- samples and the metric -------------------------------------------------------------------------

    def held_out_lists(
        self,
        count: int | None,
        exclude_texts: Sequence[str] = (),
        sentences: Sequence[str] = HELD_OUT_SENTENCES,
    ) -> list[tuple[str, list[str]]]:
        """`count` lists of a query and `LIST_SIZE` held-out `sentences`, one of which the query was cut from."""
        excluded = set(exclude_texts)
        pool = [t for t in sentences if t not in excluded]
        if len(pool) < LIST_SIZE:
            raise BadInputError(
                f"the held-out set keeps {len(pool)} sentences; a list needs {LIST_SIZE}: give more lines"
            )
        lists = []
        for i in range(count or DEFAULT_SAMPLES // 2):
            documents = [pool[(i * 5 + k * 7) % len(pool)] for k in range(LIST_SIZE)]
            lists.append((_query_of(documents[i % LIST_SIZE]), documents))
        return lists

    def samples(self, purpose: str, count: int | None, exclude_texts: Sequence[str] = ()) -> list[Feeds]:
        """held-out: one feed per query/document list (`LIST_SIZE` rows); calibration: batch-1 pairs padded alike."""
        if purpose == "calibration":
            sentences = CALIBRATION_SENTENCES
            pairs = [
                (_query_of(sentences[i % len(sentences)]), sentences[(i * 3 + i % 2) % len(sentences)])
                for i in range(count or len(sentences))
            ]
            rows = [row for q, d in pairs for row in self.pair_rows(q, [d])]
            batch = {k: v for k, v in self.data.tokenizer.pad(rows).items() if k in self.data.input_names}
            return [{k: v[i : i + 1] for k, v in batch.items()} for i in range(len(rows))]
        if purpose == "held-out":
            return [self.pair_feeds(q, docs) for q, docs in self.held_out_lists(count, exclude_texts)]
        return super().samples(purpose, count, exclude_texts)

    def own_held_out(self, text: str, exclude_texts: Sequence[str] = ()) -> list[Feeds]:
        """Query/document lists (as the built-in held-out ones) over the non-blank lines of the user's text."""
        lines = own_lines(text, exclude_texts)
        count = min(len(lines), OWN_HELD_OUT_LIMIT)
        return [self.pair_feeds(q, docs) for q, docs in self.held_out_lists(count, (), lines)]

    def metric_values(self, outputs: Mapping[str, np.ndarray], feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        """The list's raw scores [N] (the activation is monotonic: it changes no order)."""
        logits = outputs[self.metric_output()].astype(np.float64)
        return logits.reshape(len(logits), -1)[:, 0]

    # -- `edge run --query Q --doc D --doc D` -------------------------------------------------------------

    def run_lines(self, items: Sequence[str], results: Sequence[Any]) -> list[str]:
        """The query, then ``  1. 0.9731  [2] 'document'`` per document, best first."""
        documents = items[1:]
        lines = [f"query {items[0][:60]!r}:"]
        lines.extend(
            f"  {place}. {r.score:.4f}  [{r.index}] {documents[r.index][:60]!r}"
            for place, r in enumerate(results, 1)
        )
        return lines

    def run_json(self, results: Sequence[Any]) -> dict[str, Any]:
        """``ranking``: index and score of each document, best first."""
        return {"ranking": [{"index": r.index, "score": r.score} for r in results]}

    def accuracy_report(self, runs: Runs, feeds: HeldOut) -> AccuracyReport:
        """Per held-out query: fp32's best document first too, and the Kendall tau of the two orders."""
        return ranking_report(self, runs, feeds)


class Reranker(TextPipeline):
    """Cross-encoder reranking: `Reranker.load(path).rank(query, documents)`."""

    task_class = RerankTask
    task: RerankTask

    def __init__(self, package: ModelPackage, runner: Runner, task: RerankTask | None = None) -> None:
        super().__init__(package, runner, task)
        output = next(s for s in runner.outputs if s.name == self.task.output_name(runner.outputs))
        width = output.shape[-1] if output.shape else None
        if len(output.shape) != 2 or (isinstance(width, int) and width != 1):
            raise BadModelError(
                f"package '{package.path}' gives {list(output.shape)} scores per pair; a reranker gives one "
                "(a sequence classifier with num_labels=1): convert a multi-label model with --task classify"
            )

    def scores(self, query: str, documents: Iterable[str], batch_size: int = 32) -> np.ndarray:
        """The score of each (query, document) pair, float32 [N] in the documents' order (CrossEncoder.predict)."""
        if not isinstance(query, str):
            raise BadInputError(f"query must be a string, got {type(query).__name__}")
        docs = text_list(documents, "documents")
        if not docs:
            return np.zeros((0,), dtype=np.float32)
        rows = self._encoded(
            self.task.pair_rows(query, docs),
            batch_size,
            lambda outputs, feeds: list(self.task.finish(outputs)),
        )
        return np.asarray(rows, dtype=np.float32)

    def rank(
        self, query: str, documents: Iterable[str], top_n: int | None = None, batch_size: int = 32
    ) -> list[RankedDocument]:
        """(index, score) of the `top_n` best documents for `query` (None: all), best first; ties keep their order."""
        check_top_n(top_n)
        scores = self.scores(query, documents, batch_size)
        order = np.argsort(-scores, kind="stable")[:top_n]
        return [RankedDocument(int(i), float(scores[i])) for i in order]

    def run_items(self, items: Sequence[Any]) -> list[Any]:
        """`rank(items[0], items[1:])`: the query, then its documents."""
        if len(items) < 2:
            raise BadInputError("reranking needs a query and at least one document: --query Q --doc D")
        return self.rank(items[0], items[1:])


TASK = RerankTask
PIPELINE = Reranker
