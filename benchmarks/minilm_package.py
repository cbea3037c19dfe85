"""The MiniLM package the benchmarks measure: opened from `path`, converted there first when missing."""

from __future__ import annotations

from pathlib import Path

from toolkit import ModelPackage

__all__ = ["open_or_convert_minilm"]


def open_or_convert_minilm(path: Path) -> ModelPackage:
    """`path` as a package; `edge convert minilm` into it first if it holds none (needs the convert extra)."""
    if not (path / "edge.json").is_file():
        from converters import convert

        convert("minilm", path)
    return ModelPackage.open(path)
