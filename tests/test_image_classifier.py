"""`ImageClassifier` and `edge run --image`: real JPEGs written by Pillow, against transformers itself.

The preprocessing is compared with transformers' (slow, Pillow-based) image processors: both resize with the
same Pillow filter to the same size, so the pixels agree to float32 rounding; the tolerance 1e-4 (in normalised
units, where one 8-bit grey level is about 0.017) leaves room for that and nothing more. Transformers' *fast*
processors (torchvision, antialiased) are not the reference: their resize differs by a few grey levels.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import toolkit
from converters.export_tasks import TASKS
from converters.hf import preprocessing_of
from converters.samples import synthetic_photo
from toolkit.cli import edge
from toolkit.errors import BadInputError
from toolkit.manifest import ImagePreprocessing, ModelPackage
from toolkit.pipelines import PIPELINES, ImageClassifier, preprocess_image

PIXEL_ATOL = 1e-4
LABELS = ("cat", "dog", "bird", "car", "tree")  # tiny_vit_dir's


def _write(folder: Path, name: str, height: int, width: int, seed: int) -> Path:
    from PIL import Image

    path = folder / name
    Image.fromarray(synthetic_photo(height, width, np.random.default_rng(seed))).save(path)
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two JPEGs (landscape, portrait) and a PNG, none of them the model's size."""
    folder = tmp_path_factory.mktemp("photos")
    return [
        _write(folder, "landscape.jpg", 48, 64, 0),
        _write(folder, "portrait.jpg", 90, 41, 1),
        _write(folder, "small.png", 20, 25, 2),
    ]


def test_load_gives_the_image_classifier(tiny_vit_package: Path) -> None:
    assert PIPELINES["image-classify"] is ImageClassifier
    pipeline = toolkit.load(tiny_vit_package)
    assert isinstance(pipeline, ImageClassifier)
    pre = ModelPackage.open(tiny_vit_package).manifest.preprocessing
    assert pre == ImagePreprocessing(
        size=(32, 32), crop_size=None, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), resize="exact"
    )


def test_top5_is_sorted_labelled_and_matches_transformers(
    tiny_vit_package: Path, tiny_vit_dir: Path, photos: list[Path]
) -> None:
    import torch
    from PIL import Image
    from transformers import ViTForImageClassification, ViTImageProcessor

    pipeline = toolkit.load(tiny_vit_package)
    assert isinstance(pipeline, ImageClassifier)
    results = pipeline.classify(photos, top_k=5)
    assert len(results) == len(photos)

    processor = ViTImageProcessor.from_pretrained(tiny_vit_dir)
    model = ViTForImageClassification.from_pretrained(tiny_vit_dir).eval()
    pixels = processor([Image.open(p).convert("RGB") for p in photos], return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        probs = torch.softmax(model(pixel_values=pixels).logits.double(), dim=-1).numpy()

    for ranked, expected in zip(results, probs, strict=True):
        assert [c.label for c in ranked] == [LABELS[i] for i in np.argsort(-expected)[:5]]
        scores = [c.score for c in ranked]
        assert scores == sorted(scores, reverse=True)
        np.testing.assert_allclose(scores, np.sort(expected)[::-1][:5], atol=1e-5)
        assert set(ranked[0].scores) == set(LABELS)
        assert sum(ranked[0].scores.values()) == pytest.approx(1.0, abs=1e-9)
    # fewer than all labels, batching and other input types change nothing
    top2 = pipeline.classify(photos, top_k=2, batch_size=2)
    assert [[c.label for c in r] for r in top2] == [[c.label for c in r[:2]] for r in results]
    as_arrays = pipeline.classify([np.asarray(Image.open(photos[2]).convert("RGB"))])
    assert [(c.label, c.score) for c in as_arrays[0]] == [(c.label, c.score) for c in results[2]]


@pytest.mark.parametrize(
    ("processor", "kwargs"),
    [
        ("ViTImageProcessor", {"size": {"height": 32, "width": 32}}),
        # ResNet's: shortest edge to 32 / 0.875 = 36 (bicubic), then a 32x32 centre crop
        (
            "ConvNextImageProcessor",
            {
                "size": {"shortest_edge": 32},
                "crop_pct": 0.875,
                "resample": 3,
                "image_mean": [0.485, 0.456, 0.406],
                "image_std": [0.229, 0.224, 0.225],
            },
        ),
        ("ConvNextImageProcessor", {"size": {"shortest_edge": 384}}),  # at 384 and above: a warp, no crop
        ("CLIPImageProcessor", {"size": {"shortest_edge": 30}, "crop_size": {"height": 28, "width": 24}}),
        # a crop larger than the resized image: zero padding around it, as transformers' center_crop does
        ("CLIPImageProcessor", {"size": {"shortest_edge": 20}, "crop_size": {"height": 33, "width": 24}}),
        ("SegformerImageProcessor", {"size": {"height": 40, "width": 24}}),
    ],
)
def test_preprocessing_matches_the_transformers_processor(
    processor: str, kwargs: dict[str, object], photos: list[Path], tmp_path: Path
) -> None:
    import transformers
    from PIL import Image

    reference = getattr(transformers, processor)(**kwargs)
    reference.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{}", encoding="utf-8")
    pre = preprocessing_of(tmp_path, tmp_path, TASKS["image-classify"])
    assert isinstance(pre, ImagePreprocessing)
    for photo in photos:
        ours = preprocess_image(photo, pre)
        theirs = reference(Image.open(photo).convert("RGB"), return_tensors="np")["pixel_values"][0]
        assert ours.shape == theirs.shape
        assert ours.dtype == np.float32
        assert float(np.abs(ours - theirs).max()) < PIXEL_ATOL


def test_edge_run_image_prints_the_top5(tiny_vit_package: Path, photos: list[Path]) -> None:
    args = ["run", str(tiny_vit_package), "--image", str(photos[0]), "--image", str(photos[1])]
    result = CliRunner().invoke(edge, args)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    expected = ImageClassifier.load(tiny_vit_package).classify(photos[:2])
    for photo, ranked in zip(photos[:2], expected, strict=True):
        start = lines.index(f"{photo}:")
        for place, c in enumerate(ranked, 1):
            assert lines[start + place] == f"  {place}. {c.score:.4f}  {c.label}"

    data = json.loads(CliRunner().invoke(edge, [*args, "--json"]).output)
    assert data["images"] == [str(photos[0]), str(photos[1])]
    assert data["providers"] == ["cpu"]
    for got, ranked in zip(data["top5"], expected, strict=True):
        assert [entry["label"] for entry in got] == [c.label for c in ranked]
        assert [entry["score"] for entry in got] == pytest.approx([c.score for c in ranked], abs=1e-12)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda folder: folder / "missing.jpg", "does not exist; pass the path of a JPEG"),
        (lambda folder: _text_file(folder), "could not be decoded ("),
        (lambda folder: folder, "is not a file; pass the path of a JPEG"),
    ],
)
def test_bad_image_files_are_one_line_exit_2(
    tiny_vit_package: Path, tmp_path: Path, make: Callable[[Path], Path], message: str
) -> None:
    path = make(tmp_path)
    result = CliRunner().invoke(edge, ["run", str(tiny_vit_package), "--image", str(path)])
    assert result.exit_code == 2
    assert result.output.startswith(f"error: image '{path}' ")
    assert message in result.output
    assert result.output.count("\n") == 1


def _text_file(folder: Path) -> Path:
    path = folder / "notes.jpg"
    path.write_text("not an image\n", encoding="utf-8")
    return path


def test_image_on_a_text_package_and_mixed_options(
    tiny_classifier_package: Path, tiny_vit_package: Path, photos: list[Path]
) -> None:
    result = CliRunner().invoke(edge, ["run", str(tiny_classifier_package), "--image", str(photos[0])])
    assert result.exit_code == 2
    assert "package task 'classify' has no image pipeline" in result.output
    result = CliRunner().invoke(
        edge, ["run", str(tiny_vit_package), "--image", str(photos[0]), "--text", "x"]
    )
    assert result.exit_code == 2
    assert "pass one of --text" in result.output


def test_bad_arguments_from_python(tiny_vit_package: Path, photos: list[Path]) -> None:
    pipeline = toolkit.load(tiny_vit_package)
    assert isinstance(pipeline, ImageClassifier)
    with pytest.raises(BadInputError, match="wrap a single image as"):
        pipeline.classify(photos[0])  # type: ignore[arg-type]
    with pytest.raises(BadInputError, match="uint8"):
        pipeline.classify([np.zeros((8, 8, 3), dtype=np.float32)])
    with pytest.raises(BadInputError, match="top_k"):
        pipeline.classify(photos, top_k=0)
    assert pipeline.classify([]) == []


def test_import_toolkit_does_not_import_pillow() -> None:
    code = "import sys, toolkit, toolkit.pipelines; print('PIL' in sys.modules)"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        == "False\n"
    )


def test_images_of_different_sizes_run_in_separate_batches(photos: list[Path], tmp_path: Path) -> None:
    """A shortest-edge resize without a crop keeps each image's aspect ratio: batches split where sizes change."""
    import dataclasses

    from conftest import build_offline_model

    from converters import ConvertOptions, convert

    source = build_offline_model("resnet50", tmp_path / "resnet")
    package = convert(str(source), tmp_path / "pkg", ConvertOptions(recipe="resnet50"))
    pre = package.manifest.preprocessing
    assert isinstance(pre, ImagePreprocessing)
    package.save(
        dataclasses.replace(package.manifest, preprocessing=dataclasses.replace(pre, crop_size=None))
    )
    pipeline = toolkit.load(package.path)
    assert isinstance(pipeline, ImageClassifier)
    images = [photos[0], photos[1], photos[0], photos[0]]
    together = pipeline.classify(images, batch_size=2)
    alone = [pipeline.classify([image])[0] for image in images]
    for got, want in zip(together, alone, strict=True):
        assert [c.label for c in got] == [c.label for c in want]
        np.testing.assert_allclose([c.score for c in got], [c.score for c in want], atol=1e-6)
    with pytest.raises(BadInputError, match="came out in different sizes"):
        pipeline.preprocess(photos[:2])
    assert pipeline.preprocess([photos[0], photos[0]]).shape == (2, 3, 36, 48)
