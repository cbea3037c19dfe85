"""`toolkit` as an embedded runtime: import weight, Runner checks, pipelines, and `edge info`/`edge run`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from toolkit import BadInputError, BadModelError, Runner, load
from toolkit.cli import edge
from toolkit.pipelines import pool


def test_import_toolkit_pulls_in_no_torch_transformers_or_optimum() -> None:
    code = (
        "import sys, toolkit, toolkit.cli; "
        "heavy = sorted(m for m in ('torch', 'transformers', 'optimum', 'converters') if m in sys.modules); "
        "print(','.join(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_runner_reports_specs_and_providers(tiny_bert_package: Path) -> None:
    runner = Runner(tiny_bert_package, threads=1)
    assert runner.providers == ("cpu",)
    assert runner.fallbacks == ()
    assert [s.name for s in runner.inputs] == ["input_ids", "attention_mask", "token_type_ids"]
    ids = np.ones((2, 5), dtype=np.int64)
    out = runner.run({"input_ids": ids, "attention_mask": ids, "token_type_ids": ids * 0})
    assert list(out) == ["last_hidden_state"]
    assert out["last_hidden_state"].shape == (2, 5, 32)


def test_runner_rejects_bad_feeds_before_onnxruntime(tiny_bert_package: Path) -> None:
    runner = Runner(tiny_bert_package)
    ids = np.ones((1, 4), dtype=np.int64)
    with pytest.raises(BadInputError, match=r"missing input 'token_type_ids'"):
        runner.run({"input_ids": ids, "attention_mask": ids})
    with pytest.raises(
        BadInputError,
        match=r"input 'attention_mask': expected int64 \[batch_size, sequence_length\], got int32 \[1, 4\]",
    ):
        runner.run({"input_ids": ids, "attention_mask": ids.astype(np.int32), "token_type_ids": ids})
    with pytest.raises(BadInputError, match=r"unknown output 'pooler'"):
        runner.run({"input_ids": ids, "attention_mask": ids, "token_type_ids": ids}, ["pooler"])
    with pytest.raises(BadInputError, match=r"threads must be at least 1"):
        Runner(tiny_bert_package, threads=0)


def test_runner_on_missing_variant_and_missing_file(tiny_bert_package: Path, tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match=r"variant 'int8' is not in package"):
        Runner(tiny_bert_package, variant="int8")
    with pytest.raises(BadInputError, match=r"does not exist"):
        Runner(tmp_path / "missing.onnx")
    (tmp_path / "zero.onnx").write_bytes(b"")
    with pytest.raises(BadModelError, match=r"could not be loaded"):
        Runner(tmp_path / "zero.onnx")


def test_pool_modes_respect_the_mask() -> None:
    hidden = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)
    mask = np.array([[1, 1, 0], [1, 0, 0]])
    np.testing.assert_allclose(pool(hidden, mask, "mean"), [[1.0, 2.0], [6.0, 7.0]])
    np.testing.assert_allclose(pool(hidden, mask, "max"), [[2.0, 3.0], [6.0, 7.0]])
    np.testing.assert_allclose(pool(hidden, mask, "cls"), [[0.0, 1.0], [6.0, 7.0]])


def test_info_json_lists_operators_and_variants(tiny_bert_package: Path) -> None:
    result = CliRunner().invoke(edge, ["info", str(tiny_bert_package), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["operators"]["MatMul"] > 0
    assert sum(info["operators"].values()) == info["node_count"]
    assert info["manifest"]["variants"]["fp32"]["validation"]["passed"] is True
    assert info["inputs"][0]["shape"] == ["batch_size", "sequence_length"]


def test_info_table_shows_every_tensor_shape(tiny_bert_package: Path) -> None:
    result = CliRunner(env={"COLUMNS": "200"}).invoke(edge, ["info", str(tiny_bert_package)])
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if "input_ids" in line or "last_hidden_state" in line]
    assert len(rows) == 2
    assert "[batch_size, sequence_length]" in rows[0]
    assert "[batch_size, sequence_length, 32]" in rows[1]


def test_run_with_npy_inputs_prints_outputs(tiny_bert_package: Path, tmp_path: Path) -> None:
    ids = np.ones((2, 6), dtype=np.int64)
    for name in ("input_ids", "attention_mask", "token_type_ids"):
        np.save(tmp_path / f"{name}.npy", ids if name != "token_type_ids" else ids * 0)
    args = [f"--input={n}={tmp_path / n}.npy" for n in ("input_ids", "attention_mask", "token_type_ids")]
    result = CliRunner().invoke(edge, ["run", str(tiny_bert_package), *args, "--json"])
    assert result.exit_code == 0, result.output
    outputs = json.loads(result.output)["outputs"]
    assert np.asarray(outputs["last_hidden_state"]).shape == (2, 6, 32)


def test_classifier_run_text_json(tiny_classifier_package: Path) -> None:
    result = CliRunner().invoke(
        edge, ["run", str(tiny_classifier_package), "--text", "hello world", "--json", "--repeat", "3"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["classifications"][0]["label"] in ("negative", "neutral", "positive")
    assert data["latency"]["runs"] == 3
    assert data["latency"]["p50_ms"] > 0


def test_installed_entry_point_runs(tiny_bert_package: Path) -> None:
    edge_script = Path(sys.executable).parent / "edge"
    assert edge_script.is_file(), "the console script `edge` is not installed in this environment"
    ok = subprocess.run([str(edge_script), "info", str(tiny_bert_package)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "MatMul" in ok.stdout
    bad = subprocess.run(
        [str(edge_script), "info", str(tiny_bert_package / "nope")], capture_output=True, text=True
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().startswith("error: ")
    assert len(bad.stderr.strip().splitlines()) == 1


def test_load_gives_the_task_pipeline(tiny_bert_package: Path, tiny_classifier_package: Path) -> None:
    assert type(load(tiny_bert_package)).__name__ == "ModelPipeline"
    assert type(load(tiny_classifier_package)).__name__ == "TextClassifier"
