"""segment: `SemanticSegmenter.segment` against transformers' SegFormer processor, model and
``post_process_semantic_segmentation`` on the segformer-b0 recipe's offline stand-in (a tiny random SegFormer)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from converters import ConvertOptions, convert
from converters.samples import synthetic_photo
from tests.conftest import build_offline_model
from toolkit import BadModelError, ImageClassifier, ModelPackage, Runner, SemanticSegmenter, load
from toolkit.cli import edge
from toolkit.tasks.segment import resize_bilinear

# (height, width): larger, smaller and of another aspect than the model's 64x64, so resizing does work both ways
SIZES = [(48, 80), (130, 70), (64, 64), (21, 33)]


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[Path]]:
    """(the stand-in HF directory, its package converted with the segformer-b0 recipe, photos of SIZES)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("segformer")
    source = build_offline_model("segformer-b0", root / "hf", seed=4)
    package = convert(str(source), root / "pkg", ConvertOptions(recipe="segformer-b0")).path
    rng = np.random.default_rng(11)
    photos = []
    for i, (height, width) in enumerate(SIZES):
        path = root / f"photo{i}.png"
        Image.fromarray(synthetic_photo(height, width, rng)).save(path)
        photos.append(path)
    return source, package, photos


def test_resize_equals_torch_bilinear() -> None:
    import torch

    maps = np.random.default_rng(0).standard_normal((3, 16, 16)).astype(np.float32)
    for height, width in [(64, 64), (48, 80), (7, 9), (16, 16)]:
        want = torch.nn.functional.interpolate(
            torch.from_numpy(maps)[None], size=(height, width), mode="bilinear", align_corners=False
        )[0].numpy()
        np.testing.assert_allclose(resize_bilinear(maps, height, width), want, atol=1e-5, rtol=0)


def test_segment_equals_post_process_semantic_segmentation(segmenter: tuple[Path, Path, list[Path]]) -> None:
    import torch
    from PIL import Image
    from transformers import SegformerForSemanticSegmentation, SegformerImageProcessor

    source, package, photos = segmenter
    ours = SemanticSegmenter.load(package, threads=1).segment(photos, batch_size=2)
    images = [Image.open(p).convert("RGB") for p in photos]
    processor = SegformerImageProcessor.from_pretrained(source)
    model = SegformerForSemanticSegmentation.from_pretrained(source).eval()
    with torch.no_grad():
        outputs = model(**processor(images=images, return_tensors="pt"))
    sizes = [(image.height, image.width) for image in images]
    theirs = processor.post_process_semantic_segmentation(outputs, target_sizes=sizes)
    for got, want, size in zip(ours, theirs, SIZES, strict=True):
        assert got.shape == size
        assert len(np.unique(got)) > 1, "the random segmenter should find several classes"
        np.testing.assert_array_equal(got, want.numpy())

    # the post-processing alone, on our own logits: the same maps
    pixels = SemanticSegmenter.load(package).preprocess(photos[2:3])
    logits = Runner(package / "model.onnx").run({"pixel_values": pixels})["logits"]
    torch_logits = type(outputs)(logits=torch.from_numpy(logits))
    (want,) = processor.post_process_semantic_segmentation(torch_logits, target_sizes=[SIZES[2]])
    np.testing.assert_array_equal(ours[2], want.numpy())


def test_load_and_edge_run(segmenter: tuple[Path, Path, list[Path]], tiny_vit_package: Path) -> None:
    _, package, photos = segmenter
    assert isinstance(load(package), SemanticSegmenter)
    with pytest.raises(BadModelError, match="has task 'segment', not 'image-classify'"):
        ImageClassifier.load(package)
    with pytest.raises(BadModelError, match="has task 'image-classify', not 'segment'"):
        SemanticSegmenter.load(tiny_vit_package)
    result = CliRunner().invoke(edge, ["run", str(package), "--image", str(photos[0])])
    assert result.exit_code == 0, result.output
    assert f"{photos[0]}: 80x48" in result.output.splitlines()
    data = json.loads(
        CliRunner().invoke(edge, ["run", str(package), "--image", str(photos[0]), "--json"]).output
    )
    assert data["task"] == "segment"
    assert sum(data["segments"][0]["shares"].values()) == pytest.approx(1.0)
    assert np.asarray(data["segments"][0]["classes"]).shape == SIZES[0]


def test_accuracy_metric_is_pixel_agreement(segmenter: tuple[Path, Path, list[Path]]) -> None:
    from converters.accuracy import compare_variant

    _, package, _ = segmenter
    report = compare_variant(ModelPackage.open(package), package / "model.onnx")
    assert report.metric == "top1_agreement"
    assert report.score == 1.0
    assert report.details["max_logit_diff"] == 0.0
