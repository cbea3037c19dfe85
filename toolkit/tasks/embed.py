"""``embed``: sentence embeddings, pooled and normalised as the source sentence-transformers model did."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from toolkit.agreement import COSINE, Meaning
from toolkit.manifest import TensorSpec
from toolkit.preprocess import l2_normalize, pool
from toolkit.tasks.accuracy import AccuracyReport, HeldOut, Runs, cosine_report
from toolkit.tasks.base import Outputs, ServedTensor, Task, TextPipeline
from toolkit.tasks.modality import TextModality

__all__ = ["PIPELINE", "TASK", "EmbedTask", "TextEmbedding"]


def _mask(feeds: Mapping[str, np.ndarray], hidden: np.ndarray) -> np.ndarray:
    return feeds.get("attention_mask", np.ones(hidden.shape[:2], dtype=np.int64))


class EmbedTask(Task[TextModality]):
    """Tokenize, run, pool under the attention mask, normalise when the model does."""

    name = "embed"
    modality = TextModality
    metric = "cosine"
    run_input = "text"
    meaning: ClassVar[Meaning] = {
        name: (COSINE,) for name in ("last_hidden_state", "token_embeddings", "sentence_embedding")
    }

    def output_name(self, outputs: Sequence[TensorSpec]) -> str:
        """The manifest's embedding output (sentence-transformers' token embeddings), else the first."""
        return self.data.pre.output or outputs[0].name

    def pooled(self, hidden: np.ndarray, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        """Token states [N, seq, dim] pooled as the package says (not normalised)."""
        return pool(hidden, _mask(feeds, hidden), self.data.pre.pooling)

    def finish(self, outputs: Mapping[str, np.ndarray], feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        """Embeddings float32 [N, dim] from one batch's outputs."""
        pooled = self.pooled(outputs[self.metric_output()], feeds)
        if self.data.pre.normalize:
            pooled = l2_normalize(pooled)
        return pooled.astype(np.float32, copy=False)

    def metric_values(self, outputs: Mapping[str, np.ndarray], feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        """Pooled embeddings (cosine is scale-free, so normalising would not change it)."""
        return self.pooled(outputs[self.metric_output()].astype(np.float32), feeds)

    def run_lines(self, items: Sequence[str], results: Sequence[Any]) -> list[str]:
        """``'text': dim 384, norm 1.0000, [+0.0123 ...]`` per text."""
        lines = []
        for text, vector in zip(items, results, strict=True):
            head = " ".join(f"{v:+.4f}" for v in vector[:6])
            lines.append(
                f"{text[:50]!r}: dim {vector.shape[0]}, norm {np.linalg.norm(vector):.4f}, [{head} ...]"
            )
        return lines

    def run_json(self, results: Sequence[Any]) -> dict[str, Any]:
        """``embeddings``: one vector per text."""
        return {"embeddings": np.asarray(results)}

    def served_outputs(self, outputs: Sequence[TensorSpec]) -> tuple[ServedTensor, ...]:
        """``embedding`` FP32 [N, dim]."""
        name = self.output_name(outputs)
        dim = next(s for s in outputs if s.name == name).shape[-1]
        return (ServedTensor("embedding", "FP32", (-1, dim if isinstance(dim, int) else -1)),)

    def serve(self, outputs: Mapping[str, np.ndarray], feeds: Mapping[str, np.ndarray]) -> Outputs:
        """The request's embeddings, pooled under its own mask."""
        return {"embedding": self.finish(outputs, feeds)}

    def accuracy_report(self, runs: Runs, feeds: HeldOut) -> AccuracyReport:
        """Cosine of the variant's pooled sentence embeddings against fp32's (mean, worst)."""
        return cosine_report(self, runs, feeds)

    def embeddings(self, outputs: Mapping[str, np.ndarray], feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        """Embeddings float32 [N, dim] of one run, for ``/v1/embeddings`` (`ServesEmbeddings`)."""
        return self.finish(outputs, feeds)


class TextEmbedding(TextPipeline):
    """Sentence embeddings: `TextEmbedding.load(path).embed(texts)`."""

    task_class = EmbedTask
    task: EmbedTask

    @property
    def dimension(self) -> int:
        """Embedding width (-1 when the model leaves it symbolic)."""
        dim = self.runner.outputs[0].shape[-1]
        return dim if isinstance(dim, int) else -1

    def embed(self, texts: Iterable[str], batch_size: int = 32) -> np.ndarray:
        """Embeddings as float32 [len(texts), dim], in the order of `texts` (any iterable of strings)."""
        rows = self._texts(texts, batch_size, lambda out, feeds: list(self.task.finish(out, feeds)))
        if not rows:
            return np.zeros((0, max(self.dimension, 0)), dtype=np.float32)
        return np.stack(rows)

    def run_items(self, items: Sequence[Any]) -> list[Any]:
        """`embed(items)`, one vector per text."""
        return list(self.embed(items))


TASK = EmbedTask
PIPELINE = TextEmbedding
