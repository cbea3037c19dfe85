"""The architecture's rules that code review alone would let slip: the import contracts can fail, and the
command-shaped modules keep their functions short enough to read as a story."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

# Where a function doing several jobs hurt most (issue 26): the server, the commands and quantization.
SHORT_FUNCTION_DIRS = ("toolkit/serve", "toolkit/cli", "converters/quantization")
MAX_FUNCTION_LINES = 80


def _long_functions(directory: Path) -> list[str]:
    found = []
    for path in sorted(directory.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    found.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({lines} lines)")
    return found


@pytest.mark.parametrize("directory", SHORT_FUNCTION_DIRS)
def test_no_function_over_80_lines(directory: str) -> None:
    assert _long_functions(REPO / directory) == []


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": str(LINT_IMPORTS.parent)},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_contracts_fail_on_a_forbidden_import(tmp_path: Path) -> None:
    """A copy of the code whose decoding engine imports a task breaks the layers contract (the real tree's
    contracts are checked by `lint-imports` in scripts/test)."""
    for package in ("toolkit", "converters"):
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    engine = tmp_path / "toolkit" / "decoding" / "__init__.py"
    engine.write_text(engine.read_text(encoding="utf-8") + "\nimport toolkit.tasks.embed\n", encoding="utf-8")

    result = _lint_imports(tmp_path)

    assert result.returncode != 0, result.stdout
    assert "toolkit.decoding -> toolkit.tasks.embed" in result.stdout.replace("\n", " ")
