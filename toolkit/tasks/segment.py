"""``segment``: semantic segmentation, a class id per pixel at each input image's own resolution.

The model's logits [N, classes, h, w] (SegFormer: a quarter of its input size) are resized to the image's
size bilinearly with half-pixel centres (``align_corners=False``) and the best class taken per pixel, as
transformers' ``post_process_semantic_segmentation(outputs, target_sizes=...)`` does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from toolkit.agreement import Meaning, top_k_rules
from toolkit.preprocess import ImageInput, image_list, label_names, open_image
from toolkit.tasks.accuracy import AccuracyReport, HeldOut, Runs, top1_report
from toolkit.tasks.base import ImagePipeline, Task
from toolkit.tasks.modality import ImageModality

__all__ = ["PIPELINE", "TASK", "SegmentTask", "SemanticSegmenter", "resize_bilinear"]


def _axis(out: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices (low, high) and the weight of the high one for each of `out` positions over `size`."""
    scale = np.float32(size / out)
    source = np.maximum((np.arange(out, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5), 0)
    low = np.minimum(source.astype(np.int64), size - 1)
    high = np.minimum(low + 1, size - 1)
    return low, high, (source - low).astype(np.float32)


def resize_bilinear(maps: np.ndarray, height: int, width: int) -> np.ndarray:
    """[C, h, w] -> [C, height, width], bilinear with half-pixel centres (torch's ``align_corners=False``)."""
    y0, y1, wy = _axis(height, maps.shape[1])
    x0, x1, wx = _axis(width, maps.shape[2])
    maps = maps.astype(np.float32, copy=False)
    wy, wx = wy[:, None], wx[None, :]
    top = (1 - wx) * maps[:, y0][:, :, x0] + wx * maps[:, y0][:, :, x1]
    bottom = (1 - wx) * maps[:, y1][:, :, x0] + wx * maps[:, y1][:, :, x1]
    return np.asarray((1 - wy) * top + wy * bottom)


class SegmentTask(Task[ImageModality]):
    """Per-pixel classes from the logits, at each image's size."""

    name = "segment"
    modality = ImageModality
    metric = "top1_agreement"  # per pixel
    preferred_output = "logits"
    meaning: ClassVar[Meaning] = {"logits": top_k_rules(axis=1)}  # classes on axis 1, per pixel
    source_hint = " from a directory with a preprocessor_config.json"
    run_input = "image"

    def finish(self, logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """One image's logits [classes, h, w] -> its class map int64 [height, width] at `size`."""
        return np.asarray(resize_bilinear(logits, *size).argmax(axis=0))

    def metric_values(self, outputs: Mapping[str, np.ndarray], feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        """Logits with the classes last, so top-1 agreement counts pixels."""
        return np.moveaxis(outputs[self.metric_output()], 1, -1)

    def run_lines(self, items: Sequence[str], results: Sequence[Any]) -> list[str]:
        """Each file, its size, and its five largest classes by share of pixels."""
        lines = []
        for item, classes in zip(items, results, strict=True):
            lines.append(f"{item}: {classes.shape[1]}x{classes.shape[0]}")
            lines.extend(f"  {share:6.1%}  {label}" for label, share in self.shares(classes)[:5])
        return lines

    def run_json(self, results: Sequence[Any]) -> dict[str, Any]:
        """``segments``: per image, its class map and each class's share of pixels."""
        return {"segments": [{"classes": r, "shares": dict(self.shares(r))} for r in results]}

    def shares(self, classes: np.ndarray) -> list[tuple[str, float]]:
        """(label, share of pixels) for the classes present, largest first."""
        count = max(int(classes.max()) + 1, len(self.manifest.labels or ()))
        names = label_names(self.manifest, count)
        ids, counts = np.unique(classes, return_counts=True)
        order = np.argsort(-counts, kind="stable")
        return [(names[int(ids[i])], float(counts[i] / classes.size)) for i in order]

    def accuracy_report(self, runs: Runs, feeds: HeldOut) -> AccuracyReport:
        """Top-1 agreement of the variant's pixel labels with fp32's, and the largest logit difference."""
        return top1_report(self, runs, feeds)


class SemanticSegmenter(ImagePipeline):
    """Semantic segmentation: `SemanticSegmenter.load(path).segment(images)`."""

    task_class = SegmentTask
    task: SegmentTask

    def segment(self, images: Sequence[ImageInput], batch_size: int = 8) -> list[np.ndarray]:
        """For each image, its class ids int64 [height, width] at the image's own resolution."""
        opened = [open_image(image) for image in image_list(images)]
        output = self.task.output_name(self.runner.outputs)
        logits = self._images(opened, batch_size, lambda outputs, feeds: list(outputs[output]), [output])
        return [
            self.task.finish(row, (image.height, image.width))
            for row, image in zip(logits, opened, strict=True)
        ]

    def run_items(self, items: Sequence[Any]) -> list[Any]:
        """`segment(items)`."""
        return list(self.segment(items))


TASK = SegmentTask
PIPELINE = SemanticSegmenter
