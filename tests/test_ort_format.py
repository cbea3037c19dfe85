"""`edge export ort` (onnxruntime's ORT format and the required_operators.config of a minimal build, loaded back
through `Runner`) and `edge info`'s mobile usability (onnxruntime's NNAPI / CoreML checker)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from converters.quantization import QuantizeOptions, quantize
from toolkit import TextEmbedding
from toolkit.cli import edge
from toolkit.manifest import ModelPackage
from toolkit.ort_format import export_ort, mobile_usability
from toolkit.runner import Runner
from toolkit.tasks import task_for


@pytest.fixture(scope="module")
def bert_two_variants(tiny_bert_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    package = Path(shutil.copytree(tiny_bert_package, tmp_path_factory.mktemp("ort") / "bert"))
    quantize(package, "dynamic-int8", QuantizeOptions(budget=0.5, latency_runs=1))
    return package


def test_export_ort_writes_a_package_runner_loads(bert_two_variants: Path, tmp_path: Path) -> None:
    out = tmp_path / "bert-ort"
    result = CliRunner().invoke(edge, ["export", "ort", str(bert_two_variants), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "loaded back: max abs diff" in result.output
    manifest = json.loads((out / "edge.json").read_text())
    assert {n: v["file"] for n, v in manifest["variants"].items()} == {
        "fp32": "model.ort",
        "int8": "model.int8.ort",
    }
    assert not list(out.glob("*.onnx"))
    config = (out / "required_operators.config").read_text()
    assert "# - model.ort" in config  # names the files, not the staging folder they were made in
    assert "ai.onnx;" in config
    assert "DynamicQuantizeMatMul" in config or "MatMulInteger" in config  # the int8 variant's integer kernel
    feeds = task_for(ModelPackage.open(bert_two_variants)).samples("held-out", 3)
    for variant in ("fp32", "int8"):
        ort_runner = Runner(out, "cpu", variant=variant)
        assert ort_runner.path.suffix == ".ort"
        onnx_runner = Runner(bert_two_variants, "cpu", variant=variant)
        for feed in feeds:
            got, want = ort_runner.run(feed), onnx_runner.run(feed)
            for name in want:
                np.testing.assert_allclose(got[name], want[name], atol=1e-5)
    again = CliRunner().invoke(edge, ["export", "ort", str(bert_two_variants), "-o", str(out)])
    assert again.exit_code == 2
    assert "is not empty; pass --force" in again.output
    info = CliRunner().invoke(edge, ["info", str(out)])
    assert info.exit_code == 2
    assert "in onnxruntime's ORT format" in info.output


def test_export_ort_one_variant_and_bad_platform(bert_two_variants: Path, tmp_path: Path) -> None:
    result = export_ort(bert_two_variants, tmp_path / "int8-only", variants=["int8"], platform="amd64")
    assert [v.variant for v in result.variants] == ["int8"]
    assert result.variants[0].max_abs_diff <= 1e-5
    assert list(ModelPackage.open(result.output).manifest.variants) == ["int8"]
    bad = CliRunner().invoke(
        edge, ["export", "ort", str(bert_two_variants), "-o", str(tmp_path / "x"), "--platform", "riscv"]
    )
    assert bad.exit_code == 2


def test_info_reports_mobile_usability_per_variant(bert_two_variants: Path) -> None:
    result = CliRunner().invoke(edge, ["info", str(bert_two_variants), "--json"])
    assert result.exit_code == 0, result.output
    mobile = json.loads(result.output)["mobile"]
    assert set(mobile) == {"fp32", "int8"}
    assert [ep["execution_provider"] for ep in mobile["int8"]] == [
        "NNAPI",
        "CoreML NeuralNetwork",
        "CoreML MLProgram",
    ]
    nnapi = mobile["int8"][0]
    assert "ai.onnx:MatMulInteger" in nnapi["unsupported_ops"]  # NNAPI has no integer MatMul
    assert 0 < nnapi["supported_nodes"] < nnapi["nodes"]
    assert nnapi["verdict"] in ("yes", "maybe", "no")
    direct = mobile_usability(bert_two_variants / "model.onnx")
    assert [list(ep.unsupported_ops) for ep in direct] == [ep["unsupported_ops"] for ep in mobile["fp32"]]
    table = CliRunner().invoke(edge, ["info", str(bert_two_variants)])
    assert "NNAPI" in table.output
    assert "lacks:" in table.output


@pytest.mark.slow
def test_ort_format_minilm_embeds_like_the_onnx_package(minilm_package: Path, tmp_path: Path) -> None:
    out = export_ort(minilm_package, tmp_path / "minilm-ort").output
    texts = [
        "edge inference on a phone",
        "ORT format keeps the same graph",
        "a third, longer sentence to embed here",
    ]
    got = TextEmbedding.load(out, threads=2).embed(texts)
    want = TextEmbedding.load(minilm_package, threads=2).embed(texts)
    cosines = (got * want).sum(axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    assert cosines.min() >= 1 - 1e-6
    assert (out / "required_operators.config").is_file()
