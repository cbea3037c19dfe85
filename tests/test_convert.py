"""`edge convert` on tiny random transformers: package contents, validation, atomicity."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

import converters.conversion
import converters.hf
from toolkit import ModelPackage, Runner, TextClassifier
from toolkit.cli import edge
from toolkit.errors import ExportError


def test_features_package_has_manifest_model_and_tokenizer(tiny_bert_package: Path) -> None:
    package = ModelPackage.open(tiny_bert_package)
    manifest = package.manifest
    assert manifest.format == 1
    assert manifest.task == "features"
    assert manifest.source.kind == "hf-dir"
    assert len(manifest.source.sha256) == 64
    assert [t.name for t in manifest.inputs] == ["input_ids", "attention_mask", "token_type_ids"]
    assert manifest.inputs[0].dtype == "int64"
    assert all(isinstance(d, str) for d in manifest.inputs[0].shape), (
        "batch and sequence axes must be dynamic"
    )
    assert manifest.outputs[0].shape[-1] == 32
    fp32 = manifest.variant("fp32")
    assert fp32.validation is not None
    assert fp32.validation.passed
    assert fp32.validation.metric == "allclose"
    assert fp32.validation.value <= 1  # the worst ratio of an output's deciding rule
    assert all(check.max_abs_diff <= 1e-4 for check in fp32.validation.outputs)
    assert fp32.validation.samples >= 10
    assert any("padded" in c for c in fp32.validation.cases)
    assert any("unpadded" in c for c in fp32.validation.cases)
    assert fp32.size_bytes == (tiny_bert_package / "model.onnx").stat().st_size
    assert "onnxruntime-gpu" in fp32.tool_versions or "onnxruntime" in fp32.tool_versions
    assert (tiny_bert_package / "tokenizer.json").is_file()
    assert not list(tiny_bert_package.parent.glob(".*staging*")), "staging directory left behind"


@pytest.mark.parametrize("batch", [1, 3])
def test_exported_encoder_runs_with_dynamic_batch_and_sequence(
    tiny_bert_package: Path, tiny_bert_dir: Path, batch: int
) -> None:
    import torch
    from transformers import BertModel

    seq = 7 + batch
    rng = np.random.default_rng(batch)
    feeds = {
        "input_ids": rng.integers(0, 60, size=(batch, seq)).astype(np.int64),
        "attention_mask": np.ones((batch, seq), dtype=np.int64),
        "token_type_ids": np.zeros((batch, seq), dtype=np.int64),
    }
    got = Runner(tiny_bert_package).run(feeds)["last_hidden_state"]
    with torch.inference_mode():
        want = (
            BertModel.from_pretrained(tiny_bert_dir)
            .eval()(**{k: torch.from_numpy(v) for k, v in feeds.items()})
            .last_hidden_state.numpy()
        )
    assert got.shape == (batch, seq, 32)
    assert np.abs(got - want).max() < 1e-4


def test_classifier_package_keeps_labels_and_classifies(tiny_classifier_package: Path) -> None:
    manifest = ModelPackage.open(tiny_classifier_package).manifest
    assert manifest.task == "classify"
    assert manifest.labels == ("negative", "neutral", "positive")
    results = TextClassifier.load(tiny_classifier_package).classify(["hello world", "the quick brown fox"])
    assert len(results) == 2
    for (result,) in results:
        assert result.label in manifest.labels
        assert sum(result.scores.values()) == pytest.approx(1.0, abs=1e-6)
        assert result.score == max(result.scores.values())


def test_image_classifier_package_validates_and_runs(tiny_vit_package: Path) -> None:
    manifest = ModelPackage.open(tiny_vit_package).manifest
    assert manifest.task == "image-classify"
    assert manifest.labels == ("cat", "dog", "bird", "car", "tree")
    assert manifest.preprocessing is not None
    assert manifest.preprocessing.kind == "image"
    validation = manifest.variant("fp32").validation
    assert validation is not None
    assert validation.passed
    for batch in (1, 3):
        pixels = np.random.default_rng(0).standard_normal((batch, 3, 32, 32)).astype(np.float32)
        assert Runner(tiny_vit_package).run({"pixel_values": pixels})["logits"].shape == (batch, 5)


def test_failed_validation_keeps_package_marked_failed_and_exits_1(
    tiny_bert_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "pkg"
    result = CliRunner().invoke(
        edge, ["convert", str(tiny_bert_dir), "-o", str(out), "--atol", "1e-12", "--rtol", "0"]
    )
    assert result.exit_code == 1, result.output
    assert "validation failed" in result.output
    manifest = json.loads((out / "edge.json").read_text())
    assert manifest["variants"]["fp32"]["validation"]["passed"] is False
    assert (out / "model.onnx").is_file()


def test_existing_package_needs_force(tiny_bert_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "pkg"
    assert CliRunner().invoke(edge, ["convert", str(tiny_bert_dir), "-o", str(out)]).exit_code == 0
    again = CliRunner().invoke(edge, ["convert", str(tiny_bert_dir), "-o", str(out)])
    assert again.exit_code == 2
    assert "--force" in again.output
    assert (
        CliRunner()
        .invoke(edge, ["convert", str(tiny_bert_dir), "-o", str(out), "--force", "--json"])
        .exit_code
        == 0
    )


@pytest.mark.parametrize("failure", [ExportError("simulated exporter crash"), KeyboardInterrupt()])
def test_failed_or_interrupted_export_leaves_nothing(
    tiny_bert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: BaseException
) -> None:
    real_export = converters.hf.export_hf_model

    def export_then_fail(model: Any, task: Any, output_dir: Path, opset: int, main_file: str) -> None:
        real_export(model, task, output_dir, opset, main_file)  # a complete model.onnx exists in staging now
        raise failure

    monkeypatch.setattr(converters.hf, "export_hf_model", export_then_fail)
    out = tmp_path / "pkg"
    result = CliRunner().invoke(edge, ["convert", str(tiny_bert_dir), "-o", str(out)])
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert not (out / "model.onnx").exists()
    assert not (out / "edge.json").exists()
    assert list(tmp_path.iterdir()) == [], "staging files were left beside the output"


def test_convert_help_names_every_task() -> None:
    from click.testing import CliRunner

    from converters.export_tasks import TASKS
    from toolkit.cli import edge

    text = " ".join(CliRunner().invoke(edge, ["convert", "--help"]).output.split())
    missing = [name for name in TASKS if name not in text]
    assert missing == [], f"--task help misses {missing}"
