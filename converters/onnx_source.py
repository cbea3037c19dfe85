"""An existing ONNX file as a source: ``edge convert model.onnx --task detect --labels labels.txt [--input ...]``.

The file is copied into the package as exported elsewhere (the Ultralytics YOLO export is the commonest); what
the toolkit needs beside it comes from the options: the task, the class labels (one per line), and, for an
image model whose input leaves its size symbolic, an ``--input`` spec with the size. Validation runs the
model: onnxruntime with every graph optimisation against onnxruntime with none, on the task's sample inputs.

Image preprocessing by layout: a YOLO-layout detector (one [batch, 4 + classes, anchors] output) is
letterboxed into its input size with grey padding and scaled to 0..1, as Ultralytics predicts; any other image
model is resized to its input size and normalised with the ImageNet mean and std.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from converters.input_specs import InputSpec
from toolkit.errors import BadInputError, BadModelError
from toolkit.inputs import InputLimits
from toolkit.inspect import inspect_model
from toolkit.manifest import FP32_VARIANT, ImagePreprocessing, TensorSpec, variant_file_name
from toolkit.tasks import tasks
from toolkit.tasks.detect import layout_of
from toolkit.tasks.modality import ImageModality

__all__ = ["DEFAULT_IMAGE_SIZE", "OnnxFile", "image_preprocessing", "read_labels"]

DEFAULT_IMAGE_SIZE = 640  # Ultralytics' export size, for an image input whose size is symbolic
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class OnnxFile:
    """What packaging an ONNX file found: its task, preprocessing, labels and a reference that re-runs it."""

    task: str
    preprocessing: ImagePreprocessing | None
    labels: tuple[str, ...] | None
    sha256: str
    reference: Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]
    limits: InputLimits


def read_labels(path: Path) -> tuple[str, ...]:
    """Class names, one per line (blank lines skipped)."""
    if not path.is_file():
        raise BadInputError(
            f"labels file '{path}' does not exist; pass a text file with one class name per line"
        )
    labels = tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    if not labels:
        raise BadInputError(f"labels file '{path}' holds no class names; write one per line")
    return labels


def _reads_one_image(task: str) -> bool:
    """Whether packages of `task` read images preprocessed by the manifest's image section alone (the registry's
    modality, and no assets beside it), all of which an ONNX file's package can be given."""
    registered = tasks().get(task)
    return registered is not None and registered.modality is ImageModality and not registered.extra_assets


def _image_input(inputs: tuple[TensorSpec, ...], where: str) -> TensorSpec:
    spec = next((s for s in inputs if s.dtype.startswith("float") and len(s.shape) == 4), None)
    if spec is None:
        described = ", ".join(f"{s.name} {s.describe()}" for s in inputs)
        raise BadModelError(
            f"{where} takes {described}, no float [batch, channels, height, width] image; "
            "convert it with another --task or --task features"
        )
    return spec


def image_preprocessing(
    spec: TensorSpec, given: tuple[InputSpec, ...], layout: str | None
) -> ImagePreprocessing:
    """Letterbox (YOLO layout) or exact resize with ImageNet normalisation, at the input's size (or --input's)."""
    dims: list[int | str] = list(spec.shape)
    for option in given:
        if option.name == spec.name:
            dims = list(option.to_tensor_spec().shape)
    height, width = (d if isinstance(d, int) else DEFAULT_IMAGE_SIZE for d in dims[2:4])
    if layout == "yolo":
        return ImagePreprocessing(
            size=(height, width),
            crop_size=None,
            mean=(0.0, 0.0, 0.0),
            std=(1.0, 1.0, 1.0),
            resize="letterbox",
        )
    return ImagePreprocessing(size=(height, width), crop_size=None, mean=_IMAGENET_MEAN, std=_IMAGENET_STD)


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with file.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _class_count(layout: str, outputs: tuple[TensorSpec, ...]) -> int | None:
    """The classes a detector scores (DETR-style logits carry one no-object class more)."""
    if layout == "detr":
        dim = next(o for o in outputs if o.name == "logits").shape[-1]
        return dim - 1 if isinstance(dim, int) else None
    dim = outputs[0].shape[1]
    return dim - 4 if isinstance(dim, int) else None


def package_onnx_file(
    source: Path,
    package_dir: Path,
    task: str | None,
    labels_file: Path | None,
    inputs: tuple[InputSpec, ...],
) -> tuple[Path, OnnxFile]:
    """Copy `source` into `package_dir` as the fp32 model; its task (`task`, else ``features``), preprocessing
    (sized by the `inputs` specs where the file leaves it symbolic), labels (`labels_file`) and reference."""
    import onnxruntime as ort

    from toolkit.runner import build_session_options

    task = task or "features"
    onnx_file = package_dir / variant_file_name(FP32_VARIANT)
    onnx_file.write_bytes(source.read_bytes())
    info = inspect_model(onnx_file)
    where = f"ONNX file '{source}'"
    labels = read_labels(labels_file) if labels_file is not None else None
    layout = layout_of(info.outputs, where) if task == "detect" else None
    preprocessing = None
    limits = InputLimits(vocab_size=None)
    if _reads_one_image(task):
        spec = _image_input(info.inputs, where)
        preprocessing = image_preprocessing(spec, inputs, layout)
        limits = InputLimits(vocab_size=None, image_size=preprocessing.size)
    session = ort.InferenceSession(
        str(onnx_file),
        build_session_options(graph_optimization="disabled"),
        providers=["CPUExecutionProvider"],
    )
    names = [o.name for o in session.get_outputs()]

    def reference(feeds: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        return dict(zip(names, session.run(names, dict(feeds)), strict=True))

    if layout is not None and labels is not None and preprocessing is not None:
        count = _class_count(layout, info.outputs)
        if count is None:  # the file leaves it symbolic: run it once on a blank image to see
            height, width = preprocessing.size
            probe = {spec.name: np.zeros((1, 3, height, width), dtype=np.float32)}
            count = _class_count(layout, _shapes(reference(probe)))
        if count != len(labels):
            raise BadInputError(
                f"labels file '{labels_file}' has {len(labels)} names but {where} scores {count} classes; "
                f"write one name per class, in the model's class order"
            )
    return onnx_file, OnnxFile(task, preprocessing, labels, _sha256(source), reference, limits)


def _shapes(outputs: Mapping[str, np.ndarray]) -> tuple[TensorSpec, ...]:
    """Specs with the concrete shapes of one run's outputs."""
    return tuple(TensorSpec(name, str(value.dtype), tuple(value.shape)) for name, value in outputs.items())
