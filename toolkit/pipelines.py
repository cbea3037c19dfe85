"""Task pipelines over a `Runner`: preprocessing in, task-shaped results out.

`load(path)` reads the package's task from ``edge.json`` and builds the pipeline registered for it in
`PIPELINES`; a task with no pipeline of its own gets `ModelPipeline`, which passes feeds straight through.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.errors import BadInputError, BadModelError
from toolkit.manifest import FP32_VARIANT, ModelPackage, TextPreprocessing
from toolkit.providers import ProviderConfig
from toolkit.runner import Runner

__all__ = [
    "PIPELINES",
    "Classification",
    "ModelPipeline",
    "TextClassifier",
    "TextEmbedding",
    "TextTokenizer",
    "load",
    "pool",
]


class ModelPipeline:
    """A package and its runner; feeds in, named outputs out. The base of every task pipeline."""

    task = "features"

    def __init__(self, package: ModelPackage, runner: Runner) -> None:
        self.package = package
        self.runner = runner

    def __call__(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Run the raw model."""
        return self.runner.run(feeds)


class TextTokenizer:
    """A `tokenizers` tokenizer set up as the package says: truncation to the model's max length, no fixed padding."""

    def __init__(self, path: Path, max_length: int) -> None:
        from tokenizers import Tokenizer  # a few hundred ms; only text packages pay it

        if not path.is_file():
            raise BadModelError(
                f"tokenizer file '{path}' is missing from the package; re-create it with `edge convert`"
            )
        self.tokenizer = Tokenizer.from_file(str(path))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=max_length)
        self.max_length = max_length
        self.pad_id = _pad_token_id(self.tokenizer, path.parent)

    def encode(self, texts: Sequence[str]) -> list[tuple[list[int], list[int]]]:
        """Token ids and type ids for each text, unpadded."""
        if isinstance(texts, str):
            raise BadInputError("texts must be a list of strings, got a single string; wrap it as [text]")
        bad = [type(t).__name__ for t in texts if not isinstance(t, str)]
        if bad:
            raise BadInputError(f"texts must all be strings, got {bad[0]}; convert them with str() first")
        return [(e.ids, e.type_ids) for e in self.tokenizer.encode_batch(list(texts))]

    def pad(self, encodings: Sequence[tuple[list[int], list[int]]]) -> dict[str, np.ndarray]:
        """Pad a batch to its longest member: input_ids, attention_mask, token_type_ids as int64."""
        length = max(len(ids) for ids, _ in encodings)
        batch = len(encodings)
        input_ids = np.full((batch, length), self.pad_id, dtype=np.int64)
        attention_mask = np.zeros((batch, length), dtype=np.int64)
        token_type_ids = np.zeros((batch, length), dtype=np.int64)
        for row, (ids, type_ids) in enumerate(encodings):
            input_ids[row, : len(ids)] = ids
            attention_mask[row, : len(ids)] = 1
            token_type_ids[row, : len(ids)] = type_ids
        return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}

    def __call__(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Tokenize and pad in one step."""
        return self.pad(self.encode(texts))


def _pad_token_id(tokenizer: Any, folder: Path) -> int:
    padding = tokenizer.padding
    if padding and "pad_id" in padding:
        return int(padding["pad_id"])
    config = folder / "tokenizer_config.json"
    if config.is_file():
        token = json.loads(config.read_text(encoding="utf-8")).get("pad_token")
        if isinstance(token, dict):
            token = token.get("content")
        if isinstance(token, str) and tokenizer.token_to_id(token) is not None:
            return int(tokenizer.token_to_id(token))
    return 0


def pool(hidden: np.ndarray, mask: np.ndarray, mode: str | None) -> np.ndarray:
    """Sentence-transformers pooling of token embeddings [batch, seq, dim] under an attention mask."""
    if mode is None:
        return hidden
    if mode == "cls":
        return hidden[:, 0]
    weights = mask[..., None].astype(hidden.dtype)
    if mode == "mean":
        return (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
    if mode == "max":
        return np.where(weights > 0, hidden, np.finfo(hidden.dtype).min).max(axis=1)
    if mode == "mean_sqrt_len":
        return (hidden * weights).sum(axis=1) / np.sqrt(np.clip(weights.sum(axis=1), 1e-9, None))
    raise BadModelError(f"pooling mode '{mode}' is not supported; use mean, cls, max or mean_sqrt_len")


def _text_preprocessing(package: ModelPackage) -> TextPreprocessing:
    pre = package.manifest.preprocessing
    if not isinstance(pre, TextPreprocessing):
        raise BadModelError(
            f"package '{package.path}' has task '{package.manifest.task}' but no text preprocessing in its manifest; "
            "re-create it with `edge convert`"
        )
    return pre


class _TextPipeline(ModelPipeline):
    """Shared tokenization and length-sorted batching for text tasks."""

    def __init__(self, package: ModelPackage, runner: Runner) -> None:
        super().__init__(package, runner)
        self.preprocessing = _text_preprocessing(package)
        self.tokenizer = TextTokenizer(
            package.path / self.preprocessing.tokenizer, self.preprocessing.max_length
        )
        self._input_names = {spec.name for spec in runner.inputs}

    def _batches(
        self, texts: Sequence[str], batch_size: int
    ) -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """Tokenize, sort by length so padding stays small, and yield (original indices, feeds) per batch."""
        if batch_size < 1:
            raise BadInputError(f"batch_size must be at least 1, got {batch_size}")
        encodings = self.tokenizer.encode(texts)
        order = np.argsort([-len(ids) for ids, _ in encodings], kind="stable")
        batches = []
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            padded = self.tokenizer.pad([encodings[i] for i in rows])
            batches.append((rows, {k: v for k, v in padded.items() if k in self._input_names}))
        return batches


class TextEmbedding(_TextPipeline):
    """Sentence embeddings: tokenize, run, pool and normalise as the source sentence-transformers model did."""

    task = "embed"

    @property
    def dimension(self) -> int:
        """Embedding width."""
        dim = self.runner.outputs[0].shape[-1]
        return dim if isinstance(dim, int) else -1

    def embed(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Embeddings as float32 [len(texts), dim], in the order of `texts`."""
        output = self.preprocessing.output or self.runner.outputs[0].name
        pieces: list[np.ndarray] = []
        rows_in_order: list[np.ndarray] = []
        for rows, feeds in self._batches(texts, batch_size):
            hidden = self.runner.run(feeds, [output])[output]
            pooled = pool(hidden, feeds["attention_mask"], self.preprocessing.pooling)
            if self.preprocessing.normalize:
                pooled = pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
            pieces.append(pooled.astype(np.float32, copy=False))
            rows_in_order.append(rows)
        if not pieces:
            return np.zeros((0, max(self.dimension, 0)), dtype=np.float32)
        result = np.empty((len(texts), pieces[0].shape[1]), dtype=np.float32)
        result[np.concatenate(rows_in_order)] = np.concatenate(pieces)
        return result

    __call__ = embed  # type: ignore[assignment]


@dataclass(frozen=True)
class Classification:
    """The top label of one input and every label's probability."""

    label: str
    score: float
    scores: Mapping[str, float]


class TextClassifier(_TextPipeline):
    """Sequence classification: softmax over the logits, labels from the manifest."""

    task = "classify"

    def classify(self, texts: Sequence[str], batch_size: int = 32) -> list[Classification]:
        """One `Classification` per text, in order."""
        labels = self.package.manifest.labels
        results: list[Classification | None] = [None] * len(texts)
        for rows, feeds in self._batches(texts, batch_size):
            logits = self.runner.run(feeds, ["logits"])["logits"].astype(np.float64)
            exp = np.exp(logits - logits.max(axis=1, keepdims=True))
            probs = exp / exp.sum(axis=1, keepdims=True)
            names = labels or tuple(f"LABEL_{i}" for i in range(probs.shape[1]))
            for row, p in zip(rows, probs, strict=True):
                best = int(p.argmax())
                results[int(row)] = Classification(
                    names[best], float(p[best]), dict(zip(names, map(float, p), strict=True))
                )
        return [r for r in results if r is not None]

    __call__ = classify  # type: ignore[assignment]


PipelineFactory = Callable[[ModelPackage, Runner], ModelPipeline]

PIPELINES: dict[str, PipelineFactory] = {
    "embed": TextEmbedding,
    "classify": TextClassifier,
}


def load(
    path: str | Path,
    providers: str | Sequence[str] | None = None,
    *,
    variant: str = FP32_VARIANT,
    threads: int | None = None,
    strict: bool = False,
    config: ProviderConfig | None = None,
) -> ModelPipeline:
    """The pipeline for the package's task, on a `Runner` over `variant` (GPU options in `config`)."""
    package = ModelPackage.open(path)
    runner = Runner(package.model_path(variant), providers, threads=threads, strict=strict, config=config)
    factory = PIPELINES.get(package.manifest.task, ModelPipeline)
    return factory(package, runner)
