"""token-classify: `TokenClassifier.tag` against transformers' token-classification pipeline
(``aggregation_strategy="simple"``) on the bert-ner recipe's offline stand-in (a tiny random BERT tagger)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from converters import ConvertOptions, convert
from tests.conftest import build_offline_model
from toolkit import BadModelError, TokenClassifier, load
from toolkit.cli import edge
from toolkit.manifest import ModelPackage
from toolkit.tasks import task_for

TEXTS = [
    "the quick brown fox jumps over the lazy dog",
    "hello edge model, run onnx fast on a small device",
    "a cat sat on the mat with 42 dogs",  # "42" is not in the vocabulary: an [UNK] token keeps its own text
    "onnx",
]


@pytest.fixture(scope="module")
def tagger(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the stand-in HF directory, its package converted with the bert-ner recipe)."""
    source = build_offline_model("bert-ner", tmp_path_factory.mktemp("ner") / "hf", seed=3)
    package = convert(str(source), tmp_path_factory.mktemp("ner") / "pkg", ConvertOptions(recipe="bert-ner"))
    return source, package.path


def test_tag_equals_the_transformers_pipeline(tagger: tuple[Path, Path]) -> None:
    from transformers import AutoModelForTokenClassification, AutoTokenizer, pipeline

    source, package = tagger
    theirs = pipeline(
        "token-classification",
        model=AutoModelForTokenClassification.from_pretrained(source),
        tokenizer=AutoTokenizer.from_pretrained(source),
        aggregation_strategy="simple",
        device="cpu",
    )
    ours = TokenClassifier.load(package, threads=1).tag(TEXTS, batch_size=3)
    assert len(ours) == len(TEXTS)
    assert sum(map(len, ours)) > 0, "the random tagger should find some entities to compare"
    for text, got in zip(TEXTS, ours, strict=True):
        want = theirs(text)
        assert [(e.label, e.word, e.start, e.end) for e in got] == [
            (w["entity_group"], w["word"], w["start"], w["end"]) for w in want
        ], text
        assert [e.score for e in got] == pytest.approx([float(w["score"]) for w in want], abs=1e-4)
        assert all(0 <= e.start < e.end <= len(text) for e in got)


def test_load_refuses_another_tasks_package(tagger: tuple[Path, Path], tiny_classifier_package: Path) -> None:
    with pytest.raises(BadModelError, match="has task 'classify', not 'token-classify'"):
        TokenClassifier.load(tiny_classifier_package)
    assert isinstance(load(tagger[1]), TokenClassifier)
    assert task_for(ModelPackage.open(tagger[1])).metric == "top1_agreement"


def test_edge_run_prints_the_entities(tagger: tuple[Path, Path]) -> None:
    package = tagger[1]
    expected = TokenClassifier.load(package).tag(TEXTS[:2])
    result = CliRunner().invoke(edge, ["run", str(package), "--text", TEXTS[0], "--text", TEXTS[1]])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for text, entities in zip(TEXTS[:2], expected, strict=True):
        start = lines.index(f"{text!r}:")
        shown = [f"  {e.label} {e.word!r} {e.start}-{e.end} ({e.score:.3f})" for e in entities]
        assert lines[start + 1 : start + 1 + len(shown)] == (shown or ["  (no entities)"])
    data = json.loads(CliRunner().invoke(edge, ["run", str(package), "--text", TEXTS[0], "--json"]).output)
    assert data["task"] == "token-classify"
    assert [e["label"] for e in data["entities"][0]] == [e.label for e in expected[0]]
