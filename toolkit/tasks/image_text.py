"""``image-text``: CLIP and SigLIP, images and texts in one embedding space; zero-shot labels for images.

The package holds both towers in one graph (optimum-onnx's ``zero-shot-image-classification`` export): inputs
``pixel_values`` [images, ...], ``input_ids`` (and for CLIP ``attention_mask``) [texts, seq] with their own
batch sizes; outputs ``image_embeds``, ``text_embeds`` (unit length) and ``logits_per_image``. Its manifest's
image section preprocesses images; the tokenizer is the package's ``tokenizer.json``, truncated at the text
tower's ``max_position_embeddings`` (config.json). A model without an attention mask (SigLIP) reads its texts
padded to that length, as its processor pads them (``padding="max_length"``).

A package converted since the towers were split also holds each tower as its own graph (the fp32 variant's
``subgraphs``: ``text_tower`` computes ``text_embeds`` from the text inputs, ``image_tower`` ``image_embeds``
from the pixels), so `embed_texts` runs no vision tower and `embed_images` no text tower. Older packages and
other variants have the joint graph only; onnxruntime needs every graph input on every run, so there
`embed_images` feeds one one-token text beside the images and `embed_texts` one blank image beside the texts.
`zero_shot` runs images and labels together through the joint graph and turns
``logits_per_image`` into probabilities as transformers' zero-shot pipeline does (softmax over the labels for
CLIP, a sigmoid per label for SigLIP).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar, TypeVar

import numpy as np

from toolkit.agreement import COSINE, TOP1, Meaning
from toolkit.errors import BadInputError
from toolkit.manifest import ModelPackage, TensorSpec, resolve_inside
from toolkit.preprocess import (
    ImageInput,
    TextTokenizer,
    image_list,
    l2_normalize,
    preprocess_image,
    softmax,
)
from toolkit.runner import Runner
from toolkit.tasks.accuracy import AccuracyReport, HeldOut, Runs, cosine_report
from toolkit.tasks.base import Feeds, ImagePipeline, Outputs, ServedTensor, Task
from toolkit.tasks.modality import ImageModality

__all__ = ["PIPELINE", "TASK", "ImageTextEmbedding", "ImageTextTask", "ZeroShotLabel"]

_R = TypeVar("_R")

_SIGMOID_MODELS = ("siglip", "siglip2")  # model_type whose zero-shot scores are a sigmoid per label


@dataclass(frozen=True)
class ZeroShotLabel:
    """A candidate label and its probability for one image."""

    label: str
    score: float


class ImageTextTask(Task[ImageModality]):
    """Image and text embeddings from a two-tower model; the image tower's output is the metric's."""

    name = "image-text"
    modality = ImageModality
    metric = "cosine"
    preferred_output = "image_embeds"
    meaning: ClassVar[Meaning] = {
        "text_embeds": (COSINE,),
        "image_embeds": (COSINE,),
        "logits_per_image": (TOP1,),
        "logits_per_text": (TOP1,),
    }
    subgraphs: ClassVar[Mapping[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {
        "text_tower": (("input_ids", "attention_mask"), ("text_embeds",)),
        "image_tower": (("pixel_values",), ("image_embeds",)),
    }
    source_hint = " from a CLIP or SigLIP directory with a preprocessor_config.json and tokenizer.json"
    run_input = "image"
    extra_assets = ("tokenizer.json",)  # the text tower's

    def __init__(self, package: ModelPackage, specs: Sequence[TensorSpec] | None = None) -> None:
        # the image input first, so the image modality (samples, blank images) reads pixel_values, not input_ids
        given = tuple(specs or package.manifest.inputs)
        super().__init__(
            package, sorted(given, key=lambda spec: not (len(spec.shape) == 4 and "float" in spec.dtype))
        )

    @cached_property
    def config(self) -> dict[str, Any]:
        """The package's config.json (empty when it has none)."""
        path = self.package.path / "config.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

    @cached_property
    def tokenizer(self) -> TextTokenizer:
        """The package's tokenizer, truncating at the text tower's positions."""
        length = int(self.config.get("text_config", {}).get("max_position_embeddings", 77))
        return TextTokenizer(self.package.path / "tokenizer.json", length)

    @property
    def sigmoid(self) -> bool:
        """Whether zero-shot scores are a sigmoid per label (SigLIP) rather than a softmax over labels (CLIP)."""
        return self.config.get("model_type") in _SIGMOID_MODELS

    def text_feeds(self, texts: Sequence[str]) -> Feeds:
        """Texts tokenized; padded to the longest with an attention mask, or to the max length without one."""
        if "attention_mask" in self.input_names:
            batch = self.tokenizer(texts)
            return {k: v for k, v in batch.items() if k in self.input_names}
        encodings = self.tokenizer.encode(texts)
        ids = np.full((len(encodings), self.tokenizer.max_length), self.tokenizer.pad_id, dtype=np.int64)
        for row, (tokens, _) in enumerate(encodings):
            ids[row, : len(tokens)] = tokens
        return {"input_ids": ids}

    def blank_images(self, count: int = 1) -> Feeds:
        """`count` zero images of the model's size (the image input when only texts matter)."""
        height, width = self.data.size
        return {self.data.input_name: np.zeros((count, self.data.channels, height, width), dtype=np.float32)}

    def samples(self, purpose: str, count: int | None, exclude_texts: Sequence[str] = ()) -> list[Feeds]:
        """Synthetic images, each beside a one-word text (the graph takes both)."""
        return [
            {**feeds, **self.text_feeds(["photo"])}
            for feeds in super().samples(purpose, count, exclude_texts)
        ]

    def timing_feeds(self, batch: int = 1, seq: int = 128) -> Feeds:
        """`batch` images beside one text."""
        return {**self.data.timing_feeds(batch, seq), **self.text_feeds(["photo"])}

    def served_outputs(self, outputs: Sequence[TensorSpec]) -> tuple[ServedTensor, ...]:
        """``embedding`` FP32 [N, dim]: each image's unit-length embedding."""
        spec = next((o for o in outputs if o.name == "image_embeds"), None)
        dim = spec.shape[-1] if spec is not None and isinstance(spec.shape[-1], int) else -1
        return (ServedTensor("embedding", "FP32", (-1, dim)),)

    def serve_images(self, images: Sequence[ImageInput]) -> tuple[list[Feeds], Callable[[Outputs], Outputs]]:
        """Decoded images -> (feeds beside a one-word text, how the raw outputs become embeddings)."""
        pixels = np.stack([preprocess_image(image, self.data.pre) for image in images])

        def finish(outputs: Outputs) -> Outputs:
            return {"embedding": l2_normalize(outputs["image_embeds"].astype(np.float32))}

        return [{self.data.input_name: pixels, **self.text_feeds(["photo"])}], finish

    def run_lines(self, items: Sequence[str], results: Sequence[Any]) -> list[str]:
        """Zero-shot: each image's labels by probability; embeddings: each image's dimension and first values."""
        lines = []
        for item, result in zip(items, results, strict=True):
            if isinstance(result, np.ndarray):
                head = ", ".join(f"{v:.4f}" for v in result[:4])
                lines.append(f"{item}: embedding [{result.shape[0]}] {head}, ...")
            else:
                lines.append(f"{item}:")
                lines.extend(f"  {z.score:.4f}  {z.label}" for z in result)
        return lines

    def run_json(self, results: Sequence[Any]) -> dict[str, Any]:
        """``embeddings`` (arrays) or ``labels`` (per image, [{label, score}])."""
        if results and isinstance(results[0], np.ndarray):
            return {"embeddings": np.stack(list(results))}
        return {"labels": [[{"label": z.label, "score": z.score} for z in result] for result in results]}

    def accuracy_report(self, runs: Runs, feeds: HeldOut) -> AccuracyReport:
        """Cosine of the variant's embeddings against fp32's (mean, worst)."""
        return cosine_report(self, runs, feeds)


class ImageTextEmbedding(ImagePipeline):
    """CLIP / SigLIP: `ImageTextEmbedding.load(path).embed_images(images)`, `.embed_texts(texts)`, `.zero_shot(...)`."""

    task_class = ImageTextTask
    task: ImageTextTask

    def __init__(self, package: ModelPackage, runner: Runner, task: ImageTextTask | None = None) -> None:
        super().__init__(package, runner, task)
        self._towers: dict[str, Runner | None] = {}

    def tower(self, name: str) -> Runner | None:
        """The runner of subgraph `name` (``text_tower``, ``image_tower``) cut from the graph this pipeline runs;
        None when the package has none (older packages, quantized variants)."""
        if name not in self._towers:
            self._towers[name] = None
            for variant in self.package.manifest.variants.values():
                file = variant.subgraphs.get(name)
                if (
                    file is not None
                    and (self.package.path / variant.file).resolve() == self.runner.path.resolve()
                ):
                    path = resolve_inside(self.package.path, file, f"subgraph '{name}'")
                    self._towers[name] = Runner(path, config=self.runner.config, threads=self.runner.threads)
        return self._towers[name]

    def close(self) -> None:
        """Release the onnxruntime sessions (the joint graph's and the towers')."""
        for tower in self._towers.values():
            if tower is not None:
                tower.close()
        super().close()

    def embed_images(self, images: Sequence[ImageInput], batch_size: int = 8) -> np.ndarray:
        """Unit-length image embeddings float32 [N, dim] (transformers' get_image_features, normalised)."""
        tower = self.tower("image_tower")
        text = self.task.text_feeds(["photo"]) if tower is None else {}

        def finish(outputs: Outputs, feeds: Feeds) -> list[np.ndarray]:
            return list(l2_normalize(outputs["image_embeds"].astype(np.float32)))

        rows = self._beside(images, text, batch_size, finish, ["image_embeds"], tower)
        return np.stack(rows) if rows else np.zeros((0, self.dimension), dtype=np.float32)

    def embed_texts(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Unit-length text embeddings float32 [N, dim] (transformers' get_text_features, normalised)."""
        if isinstance(texts, str):
            raise BadInputError("texts must be a list of strings, got a single string; wrap it as [text]")
        tower = self.tower("text_tower")
        blank = self.task.blank_images() if tower is None else {}
        rows = []
        for start in range(0, len(texts), batch_size):
            feeds = {**blank, **self.task.text_feeds(texts[start : start + batch_size])}
            ran = (tower or self.runner).run(feeds, ["text_embeds"])
            rows.append(ran["text_embeds"].astype(np.float32))
        return l2_normalize(np.concatenate(rows)) if rows else np.zeros((0, self.dimension), dtype=np.float32)

    def zero_shot(self, images: Sequence[ImageInput], labels: Sequence[str]) -> list[list[ZeroShotLabel]]:
        """For each image, every label with its probability, highest first (transformers' zero-shot pipeline)."""
        names = [label.strip() for label in labels if label.strip()]
        if isinstance(labels, str) or not names:
            raise BadInputError('zero_shot needs a list of candidate labels, e.g. ["a cat", "a dog"]')
        text = self.task.text_feeds(names)

        def finish(outputs: Outputs, feeds: Feeds) -> list[list[ZeroShotLabel]]:
            logits = outputs["logits_per_image"].astype(np.float64)
            probs = 1 / (1 + np.exp(-logits)) if self.task.sigmoid else softmax(logits)
            return [
                [ZeroShotLabel(names[i], float(row[i])) for i in np.argsort(-row, kind="stable")]
                for row in probs
            ]

        return self._beside(images, text, 8, finish, ["logits_per_image"])

    def _beside(
        self,
        images: Sequence[ImageInput],
        text: Feeds,
        batch_size: int,
        finish: Callable[[Outputs, Feeds], Sequence[_R]],
        outputs: Sequence[str],
        runner: Runner | None = None,
    ) -> list[_R]:
        """Images in batches of one size, each batch run beside the same text feeds (on `runner`: a tower)."""
        pixels = [self._pixels(image) for image in image_list(images)]
        name = self.task.data.input_name
        return self._map(
            pixels,
            batch_size,
            lambda batch: {name: np.stack(batch), **text},
            finish,
            same_batch=lambda a, b: a.shape == b.shape,
            outputs=outputs,
            runner=runner,
        )

    @property
    def dimension(self) -> int:
        """The embedding size."""
        spec = next(o for o in self.runner.outputs if o.name == "image_embeds")
        return int(spec.shape[-1]) if isinstance(spec.shape[-1], int) else 0

    def run_items(self, items: Sequence[Any]) -> list[Any]:
        """`embed_images(items)`, one row per image."""
        return list(self.embed_images(items))


TASK = ImageTextTask
PIPELINE = ImageTextEmbedding
