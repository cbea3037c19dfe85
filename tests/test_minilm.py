"""The real pretrained model: all-MiniLM-L6-v2 converted by recipe, against sentence-transformers itself."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from tokenizers import Tokenizer

from toolkit import ModelPackage, TextEmbedding
from toolkit.cli import edge
from toolkit.manifest import TextPreprocessing

pytestmark = pytest.mark.slow

SUBJECTS = [
    "The committee",
    "A small robot",
    "My grandmother",
    "The new compiler",
    "Every satellite",
    "Our startup",
    "The river",
    "This recipe",
]
PREDICATES = [
    "approved the budget after a long debate",
    "runs inference on a microcontroller with 256 KB of RAM",
    "makes the best apple pie in the county",
    "vectorises the inner loop and removes two branches",
]


def _sentences() -> list[str]:
    short = [f"{s} {p}." for s in SUBJECTS for p in PREDICATES]  # 32 sentences, 8 to 16 tokens
    words = ["ok", "Hi!", "¿Qué tal?", "naïve café résumé", "GPU", "東京は大きい", "1234567890", "e = mc^2"]
    medium = [
        f"{s} {p}, but {SUBJECTS[(i + 3) % 8].lower()} {PREDICATES[(i + 1) % 4]} too."
        for i, (s, p) in enumerate(zip(SUBJECTS, PREDICATES * 2, strict=True))
    ]
    long = [
        " ".join(f"{s} {p}." for s, p in zip(SUBJECTS[i:] + SUBJECTS[:i], PREDICATES * 2, strict=True))
        * (4 + i)
        for i in range(8)
    ]
    paragraph = [
        "Edge deployment " + "keeps latency low and privacy high while saving bandwidth; " * (10 + 5 * i)
        for i in range(8)
    ]
    return short + words + medium + long + paragraph


def test_embeddings_match_sentence_transformers(minilm_package: Path, minilm_dir: Path) -> None:
    from sentence_transformers import SentenceTransformer

    texts = _sentences()
    pipeline = TextEmbedding.load(minilm_package, threads=2)
    token_counts = [len(ids) for ids, _ in pipeline.tokenizer.encode(texts)]
    assert len(texts) >= 64
    assert max(token_counts) == 256, "some texts must be longer than the 256-token limit and get truncated"
    untruncated = Tokenizer.from_file(str(minilm_package / "tokenizer.json"))
    untruncated.no_truncation()
    assert sum(len(untruncated.encode(t).ids) > 256 for t in texts) >= 8

    ours = pipeline.embed(texts, batch_size=16)
    theirs = SentenceTransformer(str(minilm_dir), device="cpu").encode(texts, batch_size=16)
    assert ours.shape == theirs.shape == (len(texts), 384)
    cosine = (ours * theirs).sum(axis=1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1))
    worst = int(cosine.argmin())
    assert cosine.min() >= 0.9999, f"text {worst} ({texts[worst][:40]!r}) has cosine {cosine[worst]:.6f}"
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_embed_is_order_preserving_and_batch_size_independent(minilm_package: Path) -> None:
    texts = _sentences()[:40]
    pipeline = TextEmbedding.load(minilm_package)
    whole = pipeline.embed(texts, batch_size=64)
    one_by_one = np.stack([pipeline.embed([t])[0] for t in texts])
    np.testing.assert_allclose(whole, one_by_one, atol=1e-5)
    assert pipeline.embed([]).shape == (0, 384)


def test_recipe_package_manifest(minilm_package: Path) -> None:
    manifest = ModelPackage.open(minilm_package).manifest
    assert manifest.source.recipe == "minilm"
    text = manifest.section(TextPreprocessing)
    assert text is not None
    assert (text.max_length, text.pooling, text.normalize) == (256, "mean", True)


def test_edge_run_text_json(minilm_package: Path) -> None:
    result = CliRunner().invoke(
        edge, ["run", str(minilm_package), "--text", "hello", "--text", "edge inference", "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    embeddings = np.asarray(data["embeddings"])
    assert embeddings.shape == (2, 384)
    assert data["providers"] == ["cpu"]


def test_edge_models_lists_minilm() -> None:
    result = CliRunner().invoke(edge, ["models"])
    assert result.exit_code == 0
    assert any(line.startswith("minilm ") and "installed" in line for line in result.output.splitlines())
