"""``image-classify``: decode with Pillow, resize/crop/normalise from the manifest, softmax, top-k labels."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from toolkit.errors import BadInputError
from toolkit.preprocess import Classification, ImageInput
from toolkit.tasks.accuracy import AccuracyReport, HeldOut, Runs, top1_report
from toolkit.tasks.base import ImagePipeline
from toolkit.tasks.classify import RankedTask
from toolkit.tasks.modality import ImageModality

__all__ = ["PIPELINE", "TASK", "ImageClassifier", "ImageClassifyTask"]


class ImageClassifyTask(RankedTask[ImageModality]):
    """The top-k labels of each image."""

    name = "image-classify"
    modality = ImageModality
    metric = "top1_agreement"
    source_hint = " from a directory with a preprocessor_config.json"
    run_input = "image"

    def accuracy_report(self, runs: Runs, feeds: HeldOut) -> AccuracyReport:
        """Top-1 agreement of the variant's labels with fp32's, and the largest logit difference."""
        return top1_report(self, runs, feeds)


class ImageClassifier(ImagePipeline):
    """Image classification: `ImageClassifier.load(path).classify(images, top_k=5)`."""

    task_class = ImageClassifyTask
    task: ImageClassifyTask

    def classify(
        self, images: Sequence[ImageInput], top_k: int = 5, batch_size: int = 8
    ) -> list[list[Classification]]:
        """For each image, its `top_k` labels by probability (highest first); `scores` holds every label's."""
        if top_k < 1 or batch_size < 1:
            raise BadInputError(f"top_k and batch_size must be at least 1, got {top_k} and {batch_size}")
        output = self.task.output_name(self.runner.outputs)
        return self._images(
            images, batch_size, lambda outputs, feeds: self.task.finish(outputs, top_k), [output]
        )

    def run_items(self, items: Sequence[Any]) -> list[Any]:
        """`classify(items, top_k=5)`."""
        return list(self.classify(items, top_k=5))


TASK = ImageClassifyTask
PIPELINE = ImageClassifier
