"""Resolve what the user typed as SOURCE into something an exporter can load.

Resolvers are tried in the order of `RESOLVERS`; the first that claims the text wins. Adding a source
kind means adding one function to that table. Hugging Face sources (recipe, directory, hub id) resolve to a
model directory; PyTorch sources (``pkg.module:factory``, ``file.py:factory``, ``.pt2``, a pickled ``.pt``)
carry a `TorchSource` in `ResolvedSource.torch` and are loaded by `converters.torch_sources`.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from converters.recipes import Recipe, load_recipe
from converters.torch_sources import TorchSource, parse_torch_source
from toolkit.errors import BadInputError
from toolkit.manifest import SourceInfo

__all__ = ["RESOLVERS", "ResolvedSource", "directory_sha256", "resolve_source"]

_RECIPE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HASH_SKIP = {"README.md", ".gitattributes"}


@dataclass(frozen=True)
class ResolvedSource:
    """A source ready to load: its kind, what the user typed, the local model directory and any recipe.

    For a PyTorch source, `torch` says what to load and `model_dir` is the folder holding its file.
    """

    kind: str
    ref: str
    model_dir: Path
    recipe: Recipe | None = None
    torch: TorchSource | None = None
    onnx: Path | None = None  # an existing .onnx file, packaged as it is

    def source_info(self, sha256: str) -> SourceInfo:
        """What the manifest records of this source, with the content hash `sha256`."""
        return SourceInfo(self.kind, self.ref, sha256, self.recipe.name if self.recipe else None)

    @property
    def name(self) -> str:
        """A short name for the package: the recipe's, the factory's or file's, or the model directory's."""
        if self.recipe is not None:
            return self.recipe.name
        if self.torch is not None:
            return self.torch.name
        if self.onnx is not None:
            return self.onnx.stem
        return self.ref.rstrip("/").split("/")[-1] if self.kind == "hub" else self.model_dir.resolve().name


def directory_sha256(folder: Path) -> str:
    """A hash of every file's relative path and content, in sorted order (READMEs left out)."""
    digest = hashlib.sha256()
    for file in sorted(
        p for p in folder.rglob("*") if p.is_file() and p.name not in _HASH_SKIP and ".git" not in p.parts
    ):
        digest.update(file.relative_to(folder).as_posix().encode())
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _check_hf_directory(folder: Path, ref: str) -> Path:
    if not (folder / "config.json").is_file():
        raise BadInputError(
            f"'{ref}' is not a Hugging Face model directory (no config.json); "
            "pass a directory saved with save_pretrained(), a recipe name, or a hub id"
        )
    return folder


def _from_recipe(text: str) -> ResolvedSource | None:
    if not _RECIPE_NAME.match(text) or Path(text).exists():
        return None
    recipe = load_recipe(text)
    local = recipe.source.local_dir()
    if local is not None and local.is_dir():
        return ResolvedSource("recipe", text, _check_hf_directory(local, text), recipe)
    module = parse_torch_source(recipe.source.module) if recipe.source.module else None
    if module is not None:
        return ResolvedSource("recipe", text, Path.cwd(), recipe, torch=module)
    if recipe.source.hub:
        return ResolvedSource(
            "recipe", text, _download_from_hub(recipe.source.hub, recipe.source.install), recipe
        )
    hint = f"; install it with `{recipe.source.install}`" if recipe.source.install else ""
    raise BadInputError(
        f"recipe '{text}' needs the package '{recipe.source.package}', which is not installed{hint}"
    )


def _from_onnx(text: str) -> ResolvedSource | None:
    if not text.strip().lower().endswith(".onnx"):
        return None
    path = Path(text.strip()).expanduser()
    if not path.is_file():
        raise BadInputError(f"ONNX file '{path}' does not exist; pass the path of an existing .onnx file")
    return ResolvedSource("onnx", text, path.parent, onnx=path)


def _from_torch(text: str) -> ResolvedSource | None:
    source = parse_torch_source(text)
    if source is None:
        return None
    folder = source.path.parent if source.path is not None else Path.cwd()
    return ResolvedSource(source.kind, text, folder, torch=source)


def _from_directory(text: str) -> ResolvedSource | None:
    path = Path(text).expanduser()
    if not path.exists():
        return None
    if path.is_file():
        raise BadInputError(
            f"'{text}' is a file; `edge convert` takes a Hugging Face model directory, a recipe name, a hub id, "
            "pkg.module:factory, path/to/file.py:factory, a .pt2 or an .onnx file"
        )
    return ResolvedSource("hf-dir", text, _check_hf_directory(path, text))


def _from_hub(text: str) -> ResolvedSource | None:
    if not _HUB_ID.match(text):
        return None
    return ResolvedSource("hub", text, _download_from_hub(text, None))


def _hub_reachable(timeout: float = 3.0) -> bool:
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or ""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _download_from_hub(repo_id: str, install_hint: str | None) -> Path:
    """Download (or find in the local cache) a hub snapshot; offline, fail at once with the way out."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except LocalEntryNotFoundError:
        pass  # not cached: download below if the hub can be reached
    alternative = (
        f"install it with `{install_hint}`"
        if install_hint
        else "download it elsewhere and pass its local directory"
    )
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"} or not _hub_reachable():
        raise BadInputError(
            f"'{repo_id}' is not in the local cache and the Hugging Face hub cannot be reached (offline); {alternative}"
        )
    try:
        return Path(
            snapshot_download(
                repo_id, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "1_Pooling/*"]
            )
        )
    except Exception as exc:  # noqa: BLE001 - huggingface_hub raises many HTTP error types; all mean the same to the user
        raise BadInputError(
            f"could not download '{repo_id}' from the Hugging Face hub ({type(exc).__name__}: {exc}); {alternative}"
        ) from None


Resolver = Callable[[str], ResolvedSource | None]

RESOLVERS: tuple[Resolver, ...] = (_from_recipe, _from_onnx, _from_torch, _from_directory, _from_hub)


def resolve_source(text: str) -> ResolvedSource:
    """The first resolver that claims `text`, or a one-line error saying what SOURCE can be."""
    for resolver in RESOLVERS:
        resolved = resolver(text)
        if resolved is not None:
            return resolved
    raise BadInputError(
        f"source '{text}' does not exist; pass a Hugging Face model directory, a recipe name (`edge models`), a hub id "
        "like org/name, pkg.module:factory, path/to/file.py:factory or a .pt2 file"
    )
