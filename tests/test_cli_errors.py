"""User mistakes: one line, `error: ...`, exit code 2, no traceback, nothing half-written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from toolkit.cli import edge


def _fails_cleanly(args: list[str], *expected: str) -> str:
    result = CliRunner().invoke(edge, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, result.output
    assert "Traceback" not in result.output
    for text in expected:
        assert text in errors[0], errors[0]
    return errors[0]


def test_missing_source(tmp_path: Path) -> None:
    _fails_cleanly(["convert", str(tmp_path / "nope"), "-o", str(tmp_path / "out")], "does not exist")
    assert not (tmp_path / "out").exists()


def test_directory_that_is_not_a_model(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    _fails_cleanly(
        ["convert", str(tmp_path / "empty"), "-o", str(tmp_path / "out")],
        "not a Hugging Face model directory",
        "config.json",
    )


def test_unknown_recipe(tmp_path: Path) -> None:
    _fails_cleanly(
        ["convert", "no-such-recipe", "-o", str(tmp_path / "out")],
        "unknown recipe 'no-such-recipe'",
        "minilm",
    )


def test_offline_hub_id_fails_fast(tmp_path: Path) -> None:
    _fails_cleanly(["convert", "someone/not-cached-model", "-o", str(tmp_path / "out")], "offline")


def test_unknown_task(tiny_bert_dir: Path, tmp_path: Path) -> None:
    _fails_cleanly(
        ["convert", str(tiny_bert_dir), "-o", str(tmp_path / "out"), "--task", "dance"],
        "unknown task 'dance'",
    )


@pytest.mark.parametrize("command", ["info", "run"])
def test_corrupt_onnx(tmp_path: Path, command: str) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage that is not protobuf" * 3)
    args = [command, str(bad)] + (["--input", f"x={tmp_path / 'x.npy'}"] if command == "run" else [])
    np.save(tmp_path / "x.npy", np.zeros(3, dtype=np.float32))
    _fails_cleanly(args, str(bad))


def test_truncated_onnx(tiny_bert_package: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes((tiny_bert_package / "model.onnx").read_bytes()[:5000])
    np.save(tmp_path / "ids.npy", np.zeros((1, 4), dtype=np.int64))
    _fails_cleanly(["run", str(truncated), "--input", f"input_ids={tmp_path / 'ids.npy'}"], "truncated.onnx")


def test_directory_without_manifest(tmp_path: Path) -> None:
    _fails_cleanly(["info", str(tmp_path)], "not a model package", "edge.json")


def _feeds(tmp_path: Path, **arrays: np.ndarray) -> list[str]:
    args = []
    for name, array in arrays.items():
        np.save(tmp_path / f"{name}.npy", array)
        args += ["--input", f"{name}={tmp_path / f'{name}.npy'}"]
    return args


def test_wrong_input_name(tiny_bert_package: Path, tmp_path: Path) -> None:
    ids = np.zeros((1, 4), dtype=np.int64)
    args = _feeds(tmp_path, input_ids=ids, attention_mask=ids, token_typo=ids)
    _fails_cleanly(["run", str(tiny_bert_package), *args], "unknown input 'token_typo'", "token_type_ids")


def test_wrong_input_dtype(tiny_bert_package: Path, tmp_path: Path) -> None:
    ids = np.zeros((1, 4), dtype=np.int64)
    args = _feeds(tmp_path, input_ids=ids.astype(np.float32), attention_mask=ids, token_type_ids=ids)
    _fails_cleanly(
        ["run", str(tiny_bert_package), *args],
        "input 'input_ids': expected int64 [batch_size, sequence_length], got float32 [1, 4]",
    )


def test_wrong_input_rank(tiny_bert_package: Path, tmp_path: Path) -> None:
    ids = np.zeros((1, 4), dtype=np.int64)
    args = _feeds(tmp_path, input_ids=np.zeros(3, dtype=np.int64), attention_mask=ids, token_type_ids=ids)
    _fails_cleanly(["run", str(tiny_bert_package), *args], "input 'input_ids'", "rank 2", "rank 1")


def test_unknown_provider(tiny_bert_package: Path) -> None:
    _fails_cleanly(
        ["run", str(tiny_bert_package), "--text", "hi", "--providers", "tpu"],
        "unknown execution provider 'tpu'",
    )


def test_text_on_package_without_text_pipeline(tiny_vit_package: Path) -> None:
    _fails_cleanly(["run", str(tiny_vit_package), "--text", "hi"], "has no text pipeline")
