"""The typed public API: a user's code type-checks under ``mypy --strict`` with no ignores."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

TYPED = """
from pathlib import Path

import numpy as np

import toolkit


def embed(path: Path) -> np.ndarray:
    return toolkit.TextEmbedding.load(path, threads=2).embed(["a", "b"])


def top_labels(path: str) -> list[str]:
    with toolkit.TextClassifier.load(path, variant="int8") as classifier:
        return [top[0].label for top in classifier.classify(["a"], top_k=2)]


def spans(path: str) -> list[tuple[int, int]]:
    return [(e.start, e.end) for e in toolkit.TokenClassifier.load(path).tag(["Angela lives in Berlin"])[0]]


def classes(path: str) -> np.ndarray:
    return toolkit.SemanticSegmenter.load(path).segment(["a.jpg"])[0]
"""

# The dynamic entry gives the base pipeline: calling a task method on it is a type error, not a runtime surprise.
UNTYPED = """
import toolkit

toolkit.load("pkg").embed(["a"])
"""


def _mypy(tmp_path: Path, code: str) -> subprocess.CompletedProcess[str]:
    snippet = tmp_path / "snippet.py"
    snippet.write_text(code, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-incremental",
            "--cache-dir",
            str(tmp_path / "cache"),
            str(snippet),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )


def test_typed_loads_pass_mypy_strict(tmp_path: Path) -> None:
    pytest.importorskip("mypy")
    result = _mypy(tmp_path, TYPED)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_task_method_on_the_dynamic_load_is_a_type_error(tmp_path: Path) -> None:
    pytest.importorskip("mypy")
    result = _mypy(tmp_path, UNTYPED)
    assert result.returncode == 1
    assert '"Pipeline[Any]" has no attribute "embed"' in result.stdout
