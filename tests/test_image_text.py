"""image-text: `ImageTextEmbedding` against transformers' CLIP / SigLIP ``get_image_features`` and
``get_text_features`` (cosine >= 0.9999) and zero-shot probabilities, on the recipes' offline stand-ins."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from converters import ConvertOptions, convert
from converters.samples import synthetic_photo
from tests.conftest import build_offline_model
from toolkit import load
from toolkit.cli import edge
from toolkit.inspect import inspect_model
from toolkit.manifest import ModelPackage
from toolkit.tasks.image_text import ImageTextEmbedding

TEXTS = ["a photo of a cat", "the dog", "model", "a quick brown fox jumps over the lazy dog"]
SIZES = [(40, 60), (32, 32), (90, 50)]


@pytest.fixture(scope="module", params=["clip-vit-b32", "siglip-base"])
def two_towers(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, Path, Path, list[Path]]:
    """(recipe, its offline stand-in, the package, photos of SIZES)."""
    from PIL import Image

    root = tmp_path_factory.mktemp(request.param)
    source = build_offline_model(request.param, root / "hf", seed=7)
    package = convert(str(source), root / "pkg", ConvertOptions(recipe=request.param)).path
    rng = np.random.default_rng(3)
    photos = []
    for i, (height, width) in enumerate(SIZES):
        photos.append(root / f"photo{i}.png")
        Image.fromarray(synthetic_photo(height, width, rng)).save(photos[-1])
    return request.param, source, package, photos


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.asarray((a * b).sum(axis=1))


def _reference(
    source: Path, photos: list[Path], texts: list[str], siglip: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """transformers' image features, text features and zero-shot probabilities (images x texts)."""
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(source).eval()
    processor = AutoImageProcessor.from_pretrained(source)
    tokenizer = AutoTokenizer.from_pretrained(source)
    images = [Image.open(p).convert("RGB") for p in photos]
    padding = "max_length" if siglip else True
    tokens = tokenizer(
        texts,
        padding=padding,
        max_length=model.config.text_config.max_position_embeddings,
        return_tensors="pt",
    )
    if siglip:
        tokens.pop("attention_mask", None)
    tokens.pop("token_type_ids", None)
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        image_features = model.get_image_features(pixel_values=pixels).numpy()
        text_features = model.get_text_features(**tokens).numpy()
        logits = model(pixel_values=pixels, **tokens).logits_per_image
    probs = torch.sigmoid(logits) if siglip else logits.softmax(dim=-1)
    return image_features, text_features, probs.numpy()


def test_embeddings_equal_transformers_features(two_towers: tuple[str, Path, Path, list[Path]]) -> None:
    recipe, source, package, photos = two_towers
    siglip = recipe.startswith("siglip")
    with ImageTextEmbedding.load(package, threads=1) as model:
        images = model.embed_images(photos, batch_size=2)
        texts = model.embed_texts(TEXTS, batch_size=3)
        shots = model.zero_shot(photos, TEXTS[:3])
    want_images, want_texts, want_probs = _reference(source, photos, TEXTS, siglip)
    assert images.shape == want_images.shape
    assert texts.shape == want_texts.shape
    assert _cosines(images, want_images).min() >= 0.9999
    assert _cosines(texts, want_texts).min() >= 0.9999
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1.0, atol=1e-5)
    # the towers are not constant: different images and texts embed differently
    assert _cosines(images[:1].repeat(len(images), 0), images)[1:].max() < 0.9999
    _, _, want_probs = _reference(source, photos, TEXTS[:3], siglip)
    for shot, row in zip(shots, want_probs, strict=True):
        assert [z.label for z in shot] == [TEXTS[i] for i in np.argsort(-row, kind="stable")]
        np.testing.assert_allclose(
            sorted((z.score for z in shot), reverse=True), np.sort(row)[::-1], atol=1e-4
        )
    assert isinstance(load(package), ImageTextEmbedding)


def test_each_tower_is_its_own_graph_and_old_packages_keep_working(
    two_towers: tuple[str, Path, Path, list[Path]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    import onnx

    _, _, package, photos = two_towers
    manifest = ModelPackage.open(package).manifest
    fp32 = manifest.variant("fp32")
    assert fp32.subgraphs == {"text_tower": "text_tower.onnx", "image_tower": "image_tower.onnx"}
    towers = {name: inspect_model(package / file) for name, file in fp32.subgraphs.items()}
    assert "pixel_values" not in {i.name for i in towers["text_tower"].inputs}
    assert [o.name for o in towers["text_tower"].outputs] == ["text_embeds"]
    assert [i.name for i in towers["image_tower"].inputs] == ["pixel_values"]
    assert [o.name for o in towers["image_tower"].outputs] == ["image_embeds"]
    # the text tower computes nothing of the vision model (a constant it shares aside) and the image tower
    # nothing of the text model
    nodes = {name: onnx.load(str(package / file)).graph.node for name, file in fp32.subgraphs.items()}
    for tower, own, other in (
        ("text_tower", "/text_model/", "/vision_model/"),
        ("image_tower", "/vision_model/", "/text_model/"),
    ):
        assert any(n.name.startswith(own) for n in nodes[tower])
        assert not [n.name for n in nodes[tower] if n.op_type != "Constant" and n.name.startswith(other)]
    assert not [n for n in nodes["text_tower"] if n.op_type == "Conv"]  # the patch embedding
    # each tower is validated against PyTorch like the joint graph
    validated = {check.name for check in fp32.validation.outputs} if fp32.validation else set()
    assert {"text_embeds (text_tower)", "image_embeds (image_tower)"} <= validated
    # a package from before the split (no subgraphs in edge.json, no tower files) runs the joint graph
    old = tmp_path / "old"
    shutil.copytree(package, old)
    for file in fp32.subgraphs.values():
        (old / file).unlink()
    record = json.loads((old / "edge.json").read_text())
    del record["variants"]["fp32"]["subgraphs"]
    (old / "edge.json").write_text(json.dumps(record))
    with (
        ImageTextEmbedding.load(package, threads=1) as new_model,
        ImageTextEmbedding.load(old, threads=1) as old_model,
    ):
        assert new_model.tower("text_tower") is not None
        assert old_model.tower("text_tower") is None
        assert old_model.tower("image_tower") is None

        def joint_graph(*args: object, **kwargs: object) -> None:
            raise AssertionError("embed_texts/embed_images ran the joint graph (both towers)")

        monkeypatch.setattr(new_model.runner, "run", joint_graph)  # only the towers may run
        np.testing.assert_allclose(new_model.embed_texts(TEXTS), old_model.embed_texts(TEXTS), atol=1e-6)
        np.testing.assert_allclose(new_model.embed_images(photos), old_model.embed_images(photos), atol=1e-6)


def test_edge_run_zero_shot_and_embeddings(two_towers: tuple[str, Path, Path, list[Path]]) -> None:
    _, _, package, photos = two_towers
    runner = CliRunner()
    result = runner.invoke(edge, ["run", str(package), "--image", str(photos[0]), "--labels", "a cat,a dog"])
    assert result.exit_code == 0, result.output
    assert "a cat" in result.output
    assert "a dog" in result.output
    data = json.loads(runner.invoke(edge, ["run", str(package), "--image", str(photos[0]), "--json"]).output)
    want = ImageTextEmbedding.load(package).embed_images([photos[0]])
    np.testing.assert_allclose(np.asarray(data["embeddings"]), want, atol=1e-6)
    bad = runner.invoke(edge, ["run", str(package), "--text", "hello", "--labels", "a,b"])
    assert bad.exit_code == 2
    assert "--labels" in bad.output


def test_served_image_model_gives_the_embeddings(two_towers: tuple[str, Path, Path, list[Path]]) -> None:
    from toolkit import ModelPackage
    from toolkit.serve.registry import ModelRegistry
    from toolkit.serve.tensors import InferenceRequest, RequestInput

    _, _, package, photos = two_towers
    model = ModelRegistry.load([package]).get(f"{ModelPackage.open(package).manifest.name}-image", None)
    blobs = np.empty(2, dtype=object)
    blobs[:] = [photos[0].read_bytes(), photos[2].read_bytes()]
    job = model.prepare(InferenceRequest((RequestInput("image", "BYTES", (2,), blobs),)))
    served = job.finish(model.engine.runner.run(job.feeds))["embedding"]
    want = ImageTextEmbedding.load(package).embed_images([photos[0], photos[2]])
    np.testing.assert_allclose(served, want, atol=1e-5)


def _sentencepiece_siglip(folder: Path) -> Path:
    """The SigLIP stand-in with a SentencePiece tokenizer (``SiglipTokenizer``, a unigram model trained here) and
    no tokenizer.json, as SigLIP checkpoints ship."""
    import io

    import sentencepiece as spm
    from transformers import SiglipTokenizer

    source = build_offline_model("siglip-base", folder, seed=7)
    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        (source / name).unlink(missing_ok=True)
    corpus = [*TEXTS, *SIGLIP_TEXTS, "images and texts in one embedding space", "zero shot labels for photos"]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus * 20),
        model_writer=model,
        vocab_size=120,
        hard_vocab_limit=False,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
    )
    (folder / "spiece.model").write_bytes(model.getvalue())
    SiglipTokenizer(vocab_file=str(folder / "spiece.model")).save_pretrained(source)
    return source


SIGLIP_TEXTS = [
    "A Photo of a CAT!",
    "the dog's bone, (really)",
    "two   spaces  here",
    "model",
    "Zero-shot: yes?",
]


def test_a_sentencepiece_siglip_converts_with_a_tokenizer_json_that_equals_the_slow_one(
    tmp_path: Path,
) -> None:
    from transformers import AutoTokenizer

    source = _sentencepiece_siglip(tmp_path / "hf")
    assert not (source / "tokenizer.json").exists()
    package = convert(str(source), tmp_path / "pkg", ConvertOptions(recipe="siglip-base")).path
    assert (package / "tokenizer.json").is_file()
    slow = AutoTokenizer.from_pretrained(source)
    assert type(slow).__name__ == "SiglipTokenizer"
    with ImageTextEmbedding.load(package, threads=1) as model:
        got = [ids for ids, _ in model.task.tokenizer.encode(SIGLIP_TEXTS)]
        texts = model.embed_texts(SIGLIP_TEXTS)
    assert got == slow(SIGLIP_TEXTS)["input_ids"]
    assert len({tuple(ids) for ids in got}) == len(SIGLIP_TEXTS)
    from PIL import Image

    photo = tmp_path / "photo.png"
    Image.fromarray(synthetic_photo(32, 32, np.random.default_rng(0))).save(photo)
    _, want, _ = _reference(source, [photo], SIGLIP_TEXTS, siglip=True)
    assert _cosines(texts, want).min() >= 0.9999
