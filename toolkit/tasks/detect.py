"""``detect``: object detection, boxes in each input image's own pixels.

Two output layouts, told apart by the model's outputs (`layout_of`):

- ``detr``: ``logits`` [N, queries, classes(+1)] and ``pred_boxes`` [N, queries, 4] (centre x, centre y, width,
  height, relative), as DETR, YOLOS, RT-DETR and the other transformers detectors optimum-onnx exports. Scores are
  transformers' ``post_process_object_detection``: a softmax without the trailing no-object class (DETR, YOLOS),
  or, for the focal-loss models named in `SIGMOID_TOP_K` (by the package's ``config.json`` model_type), a
  sigmoid over every (query, class) pair and the best k of them.
- ``yolo``: one output [N, 4 + classes, anchors] (the Ultralytics export): boxes as centre/size in the
  letterboxed input's pixels, per-class scores; the best class per anchor over the threshold, class-aware
  non-maximum suppression, and boxes mapped back through the letterbox (`toolkit.preprocess.letterbox_geometry`).

Results come sorted by score, highest first; ``top_k`` keeps the best k.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from toolkit.agreement import TOP1, TOP5, Meaning, MeaningRule, Tolerance
from toolkit.atomic import atomic_path
from toolkit.errors import BadInputError, BadModelError
from toolkit.manifest import ModelPackage, TensorSpec
from toolkit.preprocess import (
    ImageInput,
    image_list,
    label_names,
    letterbox_geometry,
    open_image,
    preprocess_image,
)
from toolkit.tasks.accuracy import AccuracyReport, HeldOut, Runs, detection_report
from toolkit.tasks.base import Feeds, ImagePipeline, Outputs, ServedTensor, Task
from toolkit.tasks.modality import ImageModality

__all__ = [
    "LAYOUTS",
    "PIPELINE",
    "SIGMOID_TOP_K",
    "TASK",
    "DetectTask",
    "Detection",
    "ObjectDetector",
    "box_iou",
    "layout_of",
    "match_detections",
    "nms",
]

LAYOUTS = ("detr", "yolo")
# config.json model_type -> k of the sigmoid top-k scoring (None: every query), as each model's image processor
SIGMOID_TOP_K: dict[str, int | None] = {
    "rt_detr": None,
    "rt_detr_v2": None,
    "d_fine": None,
    "deformable_detr": 100,
    "conditional_detr": 100,
}
YOLO_MAX_DETECTIONS = 300  # Ultralytics' max_det
YOLO_CLASS_OFFSET = 7680.0  # Ultralytics' max_wh: boxes of different classes never overlap after this shift
_PALETTE = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240))


@dataclass(frozen=True)
class Detection:
    """One detected object: its label, score and box in the image's pixels (x0, y0, x1, y1)."""

    label: str
    score: float
    box: tuple[float, float, float, float]
    label_id: int = 0


def layout_of(outputs: Sequence[TensorSpec], where: str = "the model") -> str:
    """``detr`` (``logits`` + ``pred_boxes``) or ``yolo`` (one [N, 4 + classes, anchors] output); else BadModelError."""
    names = {o.name for o in outputs}
    if {"logits", "pred_boxes"} <= names:
        return "detr"
    if len(outputs) == 1 and len(outputs[0].shape) == 3:
        channels = outputs[0].shape[1]
        if not isinstance(channels, int) or channels > 4:
            return "yolo"
    described = ", ".join(f"{o.name} {o.describe()}" for o in outputs)
    raise BadModelError(
        f"{where} has outputs {described}, not a detector's; detect takes logits + pred_boxes (DETR-style) "
        "or one [batch, 4 + classes, anchors] output (Ultralytics YOLO)"
    )


def _corners(boxes: np.ndarray) -> np.ndarray:
    """Centre x, centre y, width, height -> x0, y0, x1, y1."""
    cx, cy, w, h = np.moveaxis(boxes, -1, 0)
    return np.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of boxes a [n, 4] and b [m, 4] (x0, y0, x1, y1): [n, m]."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    left = np.maximum(a[:, None, :2], b[None, :, :2])
    right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(right - left, 0, None).prod(axis=-1)
    area_a = (a[:, 2:] - a[:, :2]).clip(0).prod(axis=-1)
    area_b = (b[:, 2:] - b[:, :2]).clip(0).prod(axis=-1)
    return np.asarray(inter / np.clip(area_a[:, None] + area_b[None, :] - inter, 1e-12, None))


def _worst_box_iou(actual: np.ndarray, expected: np.ndarray, tolerance: Tolerance) -> float:
    """The lowest IoU between matching boxes (centre x, centre y, width, height on the last axis)."""
    got, want = _corners(actual.reshape(-1, 4)), _corners(expected.reshape(-1, 4))
    if not len(want):
        return 1.0
    ious = [float(box_iou(got[i : i + 1], want[i : i + 1])[0, 0]) for i in range(len(want))]
    # two degenerate (zero-area) boxes in the same place agree
    same = np.all(np.isclose(got, want, atol=tolerance.atol, rtol=tolerance.rtol), axis=-1)
    return float(np.where(same, 1.0, ious).min())


BOX_IOU = MeaningRule("box_iou", 0.99, _worst_box_iou)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression (torchvision's ``nms``): indices kept, highest score first."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        best = int(order[0])
        keep.append(best)
        rest = order[1:]
        order = rest[box_iou(boxes[best : best + 1], boxes[rest])[0] <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def match_detections(got: Sequence[Detection], want: Sequence[Detection], iou: float = 0.5) -> int:
    """How many of `want` are matched one-to-one by a `got` detection of the same label at IoU >= `iou`."""
    used: set[int] = set()
    matched = 0
    for target in want:
        best, best_iou = -1, iou
        for i, candidate in enumerate(got):
            if i in used or candidate.label_id != target.label_id:
                continue
            overlap = float(box_iou(np.asarray([candidate.box]), np.asarray([target.box]))[0, 0])
            if overlap >= best_iou:
                best, best_iou = i, overlap
        if best >= 0:
            used.add(best)
            matched += 1
    return matched


class DetectTask(Task[ImageModality]):
    """Boxes, labels and scores from a DETR-style or YOLO-layout detector."""

    name = "detect"
    modality = ImageModality
    metric = "detection_agreement"
    preferred_output = "logits"
    meaning: ClassVar[Meaning] = {"logits": (TOP1, TOP5), "pred_boxes": (BOX_IOU,)}
    source_hint = " from a directory with a preprocessor_config.json, or an .onnx file with --task detect"
    run_input = "image"

    def __init__(self, package: ModelPackage, specs: Sequence[TensorSpec] | None = None) -> None:
        super().__init__(package, specs)
        self.layout = layout_of(self.manifest.outputs, f"package '{package.path}'")

    @cached_property
    def sigmoid_top_k(self) -> tuple[bool, int | None]:
        """(whether scores are a sigmoid top-k, and k), from the package's config.json model_type."""
        config = self.package.path / "config.json"
        model_type = (
            json.loads(config.read_text(encoding="utf-8")).get("model_type") if config.is_file() else None
        )
        return (model_type in SIGMOID_TOP_K, SIGMOID_TOP_K.get(model_type or ""))

    def labels(self, count: int) -> tuple[str, ...]:
        """The class names (``LABEL_i`` where the manifest has none)."""
        return label_names(self.manifest, count)

    def finish(
        self,
        outputs: Mapping[str, np.ndarray],
        row: int,
        size: tuple[int, int],
        threshold: float,
        top_k: int | None,
        iou_threshold: float,
    ) -> list[Detection]:
        """One image's detections (row `row` of a batch) in the pixels of its original `size` (height, width)."""
        if self.layout == "detr":
            found = self._detr(outputs["logits"][row], outputs["pred_boxes"][row], size, threshold)
        else:
            name = self.output_name(self.manifest.outputs)
            found = self._yolo(outputs[name][row], size, threshold, iou_threshold)
        found.sort(key=lambda d: -d.score)
        return found[:top_k] if top_k is not None else found

    def _detections(self, scores: np.ndarray, labels: np.ndarray, boxes: np.ndarray) -> list[Detection]:
        names = self.labels(int(labels.max()) + 1 if labels.size else 0)
        return [
            Detection(
                names[int(label)] if int(label) < len(names) else f"LABEL_{int(label)}",
                float(score),
                (float(box[0]), float(box[1]), float(box[2]), float(box[3])),
                int(label),
            )
            for score, label, box in zip(scores, labels, boxes, strict=True)
        ]

    def _detr(
        self, logits: np.ndarray, boxes: np.ndarray, size: tuple[int, int], threshold: float
    ) -> list[Detection]:
        height, width = size
        corners = _corners(boxes.astype(np.float32)) * np.asarray([width, height, width, height], np.float32)
        sigmoid, k = self.sigmoid_top_k
        if sigmoid:
            probs = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
            flat = probs.reshape(-1)
            count = min(k if k is not None else logits.shape[0], flat.size)
            best = np.argsort(-flat, kind="stable")[:count]
            scores, labels, corners = flat[best], best % logits.shape[1], corners[best // logits.shape[1]]
        else:
            values = logits.astype(np.float64)
            exp = np.exp(values - values.max(axis=-1, keepdims=True))
            probs = (exp / exp.sum(axis=-1, keepdims=True))[:, :-1]
            scores, labels = probs.max(axis=-1), probs.argmax(axis=-1)
        keep = scores > threshold
        return self._detections(scores[keep], labels[keep], corners[keep])

    def _yolo(
        self, prediction: np.ndarray, size: tuple[int, int], threshold: float, iou_threshold: float
    ) -> list[Detection]:
        rows = prediction.T.astype(np.float32)  # [anchors, 4 + classes]
        class_scores = rows[:, 4:]
        scores, labels = class_scores.max(axis=1), class_scores.argmax(axis=1)
        keep = scores > threshold
        rows, scores, labels = rows[keep], scores[keep], labels[keep]
        corners = _corners(rows[:, :4])
        kept = nms(corners + labels[:, None] * YOLO_CLASS_OFFSET, scores, iou_threshold)[:YOLO_MAX_DETECTIONS]
        height, width = size
        gain, _, _, left, top = letterbox_geometry(width, height, self.data.pre.size)
        boxes = (corners[kept] - np.asarray([left, top, left, top], np.float32)) / gain
        boxes = boxes.clip(0, np.asarray([width, height, width, height], np.float32))
        return self._detections(scores[kept], labels[kept], boxes)

    def class_count(self) -> int | None:
        """The number of classes the model scores (None when its shape leaves it symbolic)."""
        if self.layout == "detr":
            spec = next(o for o in self.manifest.outputs if o.name == "logits")
            count = spec.shape[-1]
            return count - (0 if self.sigmoid_top_k[0] else 1) if isinstance(count, int) else None
        channels = self.manifest.outputs[0].shape[1]
        return channels - 4 if isinstance(channels, int) else None

    # -- accuracy: detections matched to fp32's ------------------------------------------------------

    def agreement(
        self, got: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray], feeds: Mapping[str, np.ndarray]
    ) -> tuple[int, int]:
        """(fp32 detections matched by the candidate's at IoU >= 0.5 with the same label, fp32 detections),
        at threshold 0.5 on the model's input size."""
        pixels = next(iter(feeds.values()))
        size = (int(pixels.shape[-2]), int(pixels.shape[-1]))
        matched = total = 0
        for row in range(pixels.shape[0]):
            ours = self.finish(got, row, size, 0.5, None, 0.7)
            reference = self.finish(want, row, size, 0.5, None, 0.7)
            matched += match_detections(ours, reference)
            total += len(reference)
        return matched, total

    # -- edge run ---------------------------------------------------------------------------------------

    def annotate(self, image: ImageInput, found: Sequence[Detection], out: Path) -> None:
        """Draw `found` on `image` (a box, its label and score per detection) and save it to `out` (atomically)."""
        from PIL import ImageDraw

        canvas = open_image(image).copy()  # never draw on the caller's own image
        draw = ImageDraw.Draw(canvas)
        for detection in found:
            colour = _PALETTE[detection.label_id % len(_PALETTE)]
            x0, y0, x1, y1 = detection.box
            draw.rectangle((x0, y0, x1, y1), outline=colour, width=max(1, round(min(canvas.size) / 200)))
            caption = f"{detection.label} {detection.score:.2f}"
            left, top, right, bottom = draw.textbbox((x0, y0), caption)
            lift = min(bottom - top + 2, y0)
            draw.rectangle((left, top - lift, right + 2, bottom - lift), fill=colour)
            draw.text((x0 + 1, y0 - lift), caption, fill=(255, 255, 255))
        suffix = out.suffix.lower().lstrip(".")
        kind = {"jpg": "JPEG", "jpeg": "JPEG"}.get(suffix, "PNG")
        with atomic_path(out) as staged:
            canvas.save(staged, format=kind)

    def run_lines(self, items: Sequence[str], results: Sequence[Any]) -> list[str]:
        """Each file and its detections: score, label, box."""
        lines = []
        for item, found in zip(items, results, strict=True):
            lines.append(f"{item}: {len(found)} detection{'s' if len(found) != 1 else ''}")
            lines.extend(
                f"  {d.score:.3f}  {d.label}  [{', '.join(f'{v:.1f}' for v in d.box)}]" for d in found
            )
        return lines

    def run_json(self, results: Sequence[Any]) -> dict[str, Any]:
        """``detections``: per image, a list of {label, score, box}."""
        return {
            "detections": [
                [{"label": d.label, "score": d.score, "box": list(d.box)} for d in found] for found in results
            ]
        }

    # -- the server's image pipeline model: encoded images in, detections out -------------------------

    def served_outputs(self, outputs: Sequence[TensorSpec]) -> tuple[ServedTensor, ...]:
        """``detections`` BYTES [N]: per image, its detections at threshold 0.5 as a JSON list."""
        return (ServedTensor("detections", "BYTES", (-1,)),)

    def serve_images(self, images: Sequence[ImageInput]) -> tuple[list[Feeds], Callable[[Outputs], Outputs]]:
        """Decoded images -> (one run per preprocessed size: a DETR-style model keeps each aspect ratio, so
        images of different sizes run apart; how the runs' outputs become each image's detections JSON)."""
        opened = [open_image(image) for image in images]
        pixels = [preprocess_image(image, self.data.pre) for image in opened]
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for index, array in enumerate(pixels):
            by_shape.setdefault(array.shape, []).append(index)
        order = [index for members in by_shape.values() for index in members]  # image of each output row
        sizes = [(image.height, image.width) for image in opened]

        def finish(outputs: Outputs) -> Outputs:
            documents = np.empty(len(sizes), dtype=object)
            for row, index in enumerate(order):
                found = self.finish(outputs, row, sizes[index], 0.5, None, 0.7)
                documents[index] = json.dumps(self.run_json([found])["detections"][0]).encode()
            return {"detections": documents}

        runs = [
            {self.data.input_name: np.stack([pixels[i] for i in members])} for members in by_shape.values()
        ]
        return runs, finish

    def accuracy_report(self, runs: Runs, feeds: HeldOut) -> AccuracyReport:
        """The share of fp32's detections the variant's match (`agreement`)."""
        return detection_report(runs, feeds, self.agreement)


class ObjectDetector(ImagePipeline):
    """Object detection: `ObjectDetector.load(path).detect(images, threshold=0.5)`."""

    task_class = DetectTask
    task: DetectTask

    def detect(
        self,
        images: Sequence[ImageInput],
        threshold: float = 0.5,
        top_k: int | None = None,
        batch_size: int = 8,
        iou_threshold: float = 0.7,
    ) -> list[list[Detection]]:
        """For each image, its detections scoring over `threshold` (the best `top_k`), highest score first.

        `iou_threshold` is the non-maximum suppression overlap of YOLO-layout models (Ultralytics' default)."""
        if top_k is not None and top_k < 1:
            raise BadInputError(f"top_k must be at least 1 (or None for all), got {top_k}")
        if not 0.0 <= threshold < 1.0 or not 0.0 < iou_threshold <= 1.0:
            raise BadInputError(
                f"threshold must be in [0, 1) and iou_threshold in (0, 1], got {threshold} and {iou_threshold}"
            )
        opened = [open_image(image) for image in image_list(images)]
        sizes = [(image.height, image.width) for image in opened]
        names = [o.name for o in self.runner.outputs]
        task = self.task

        def rows(outputs: Outputs, feeds: Mapping[str, np.ndarray]) -> list[tuple[Outputs, int]]:
            return [(outputs, row) for row in range(next(iter(feeds.values())).shape[0])]

        raw = self._images(opened, batch_size, rows, names)
        return [
            task.finish(outputs, row, size, threshold, top_k, iou_threshold)
            for (outputs, row), size in zip(raw, sizes, strict=True)
        ]

    def run_items(self, items: Sequence[Any]) -> list[Any]:
        """`detect(items)` at threshold 0.5."""
        return list(self.detect(items))


TASK = DetectTask
PIPELINE = ObjectDetector
