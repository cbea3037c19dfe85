"""Model recipes: small TOML files in the repo's ``models/``, shipped in the wheel as ``converters.model_recipes``."""

from __future__ import annotations

import importlib.resources
import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolkit.errors import BadInputError, BadModelError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = ["Recipe", "RecipeSource", "list_recipes", "load_recipe"]


@dataclass(frozen=True)
class RecipeSource:
    """Where a recipe's model comes from: an installed package that ships it, and/or a hub id."""

    package: str | None = None
    package_dir: str = ""
    install: str | None = None
    hub: str | None = None

    def local_dir(self) -> Path | None:
        """The model directory inside the installed package, without importing it; None if not installed."""
        if self.package is None:
            return None
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            return None
        return Path(next(iter(spec.submodule_search_locations))) / self.package_dir


@dataclass(frozen=True)
class Recipe:
    """One model recipe."""

    name: str
    summary: str
    task: str
    source: RecipeSource
    atol: float = 1e-4
    suggested_quantization: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _recipe_files() -> dict[str, Any]:
    root = importlib.resources.files("converters.model_recipes")
    return {
        entry.name.removesuffix(".toml"): entry for entry in root.iterdir() if entry.name.endswith(".toml")
    }


def _parse(name: str, text: str) -> Recipe:
    try:
        data = tomllib.loads(text)
        source = RecipeSource(**data.get("source", {}))
        return Recipe(
            name=data["name"],
            summary=data["summary"],
            task=data["task"],
            source=source,
            atol=float(data.get("validation", {}).get("atol", 1e-4)),
            suggested_quantization=data.get("quantization", {}).get("suggested"),
            extra={
                k: v
                for k, v in data.items()
                if k not in {"name", "summary", "task", "source", "validation", "quantization"}
            },
        )
    except (tomllib.TOMLDecodeError, KeyError, TypeError) as exc:
        raise BadModelError(f"recipe '{name}' is malformed ({exc!r}); fix models/{name}.toml") from None


def list_recipes() -> list[Recipe]:
    """Every shipped recipe, sorted by name."""
    return [
        _parse(name, entry.read_text(encoding="utf-8")) for name, entry in sorted(_recipe_files().items())
    ]


def load_recipe(name: str) -> Recipe:
    """The recipe called `name`; an unknown name is a BadInputError listing the known ones."""
    files = _recipe_files()
    if name not in files:
        known = ", ".join(sorted(files)) or "none"
        raise BadInputError(f"unknown recipe '{name}' (known: {known}); run `edge models` to list them")
    return _parse(name, files[name].read_text(encoding="utf-8"))
