"""Plain PyTorch sources: ``pkg.module:factory``, ``path/to/file.py:factory``, ``.pt2`` programs, pickled ``.pt`` modules.

Loading is safe by default. Importing a module or running a ``.py`` file is the user's own code; weights are
read with safetensors or ``torch.load(weights_only=True)``, and a file that would need arbitrary unpickling
(a whole pickled module, a checkpoint holding Python objects) is refused unless the caller passes
``trust_remote_code=True`` (``--trust-remote-code``), because unpickling it runs code from the file.
torch is imported inside the functions that load, so parsing a source stays cheap.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import logging
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from converters.input_specs import DTYPES, InputSpec
from toolkit.errors import BadInputError, ExportError, first_line

__all__ = [
    "PICKLE_SUFFIXES",
    "LoadedModel",
    "TorchSource",
    "load_torch_source",
    "load_weights",
    "parse_torch_source",
]

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".pt", ".pth")
_WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
_TRUST_FLAG = "--trust-remote-code (trust_remote_code=True)"
_MODULE_FACTORY = re.compile(
    r"^(?P<module>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*):(?P<attr>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)$"
)
_FILE_FACTORY = re.compile(r"^(?P<path>.+\.py):(?P<attr>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)$")


@dataclass(frozen=True)
class TorchSource:
    """A PyTorch source as the user named it: `kind` is ``module``, ``file``, ``pt2`` or ``pickle``."""

    kind: str
    ref: str
    path: Path | None = None
    module: str | None = None
    attr: str | None = None

    @property
    def name(self) -> str:
        """A short name for the package: the factory's name, or the file's stem."""
        if self.attr is not None:
            return self.attr.split(".")[-1]
        return self.path.stem if self.path is not None else self.ref


@dataclass(frozen=True)
class LoadedModel:
    """A loaded PyTorch model in eval mode, with what a ``.pt2`` program says about its inputs.

    `module` is the ``nn.Module`` to call; `program` the ``ExportedProgram`` of a ``.pt2`` source (its inputs are
    positional, in `program_inputs` order); `specs` and `dim_sizes` come from the program's example inputs;
    `files` are the files that define the model (hashed into the manifest).
    """

    module: Any
    label: str
    files: tuple[Path, ...]
    program: Any = None
    program_inputs: tuple[str, ...] = ()
    specs: tuple[InputSpec, ...] = ()
    dim_sizes: Mapping[str, int] = field(default_factory=dict)


def parse_torch_source(text: str) -> TorchSource | None:
    """The PyTorch source `text` names, or None when it is not one (a directory, a recipe, a hub id)."""
    stripped = text.strip()
    match = _FILE_FACTORY.match(stripped)
    if match is not None:
        path = Path(match["path"]).expanduser()
        if not path.is_file():
            raise BadInputError(f"source file '{path}' does not exist; pass path/to/file.py:factory")
        return TorchSource("file", text, path=path, attr=match["attr"])
    lowered = stripped.lower()
    if lowered.endswith(".pt2") or lowered.endswith(PICKLE_SUFFIXES):
        path = Path(stripped).expanduser()
        if not path.is_file():
            raise BadInputError(
                f"source file '{path}' does not exist; pass a .pt2 saved with torch.export.save"
            )
        return TorchSource("pt2" if lowered.endswith(".pt2") else "pickle", text, path=path)
    match = _MODULE_FACTORY.match(stripped)
    if match is not None:
        return TorchSource("module", text, module=match["module"], attr=match["attr"])
    return None


def _import_module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        raise BadInputError(
            f"cannot import module '{name}' ({first_line(exc, 300)}); check the name and that it is on sys.path, "
            "or pass path/to/file.py:factory"
        ) from None
    except Exception as exc:  # the user's module may raise anything while importing
        raise ExportError(
            f"importing module '{name}' failed ({type(exc).__name__}: {first_line(exc, 300)})"
        ) from exc


def _import_file(path: Path) -> Any:
    module_name = f"_edge_source_{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]}_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise BadInputError(f"'{path}' cannot be imported as a Python file; pass path/to/file.py:factory")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = (
        module  # classes defined in the file must be importable by name (pickle, torch.export)
    )
    folder = str(path.resolve().parent)
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)  # so the file can import its sibling modules
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the user's file may raise anything while running
        sys.modules.pop(module_name, None)
        raise ExportError(f"running '{path}' failed ({type(exc).__name__}: {first_line(exc, 300)})") from exc
    finally:
        if added:
            sys.path.remove(folder)
    return module


def _attribute(module: Any, attr: str, where: str) -> Any:
    value = module
    for part in attr.split("."):
        if not hasattr(value, part):
            public = sorted(n for n in dir(module) if not n.startswith("_"))[:12]
            raise BadInputError(
                f"{where} has no '{attr}' (it defines: {', '.join(public) or 'nothing public'}); "
                "name a function or class that returns a torch.nn.Module"
            )
        value = getattr(value, part)
    return value


def _call_factory(factory: Any, ref: str) -> Any:
    import torch

    if not callable(factory):
        if isinstance(factory, torch.nn.Module):
            return factory
        raise BadInputError(f"'{ref}' is a {type(factory).__name__}, not a factory; name a function or class")
    try:
        model = factory()
    except TypeError as exc:
        raise BadInputError(
            f"'{ref}' could not be called without arguments ({first_line(exc, 300)}); name a factory that takes none"
        ) from None
    except Exception as exc:  # the user's factory may raise anything
        raise ExportError(f"'{ref}' raised {type(exc).__name__}: {first_line(exc, 300)}") from exc
    if not isinstance(model, torch.nn.Module):
        raise BadInputError(f"'{ref}' returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def _torch_load(path: Path, trust_remote_code: bool, what: str) -> Any:
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_remote_code)
    except pickle.UnpicklingError as exc:
        if trust_remote_code:
            raise BadInputError(f"{what} '{path}' could not be unpickled ({first_line(exc, 300)})") from None
        raise BadInputError(
            f"{what} '{path}' holds pickled Python objects that weights-only loading refuses; loading it runs code "
            f"from the file, so pass {_TRUST_FLAG} only if you trust where it came from, or save a state dict "
            "(torch.save(model.state_dict())) or .safetensors instead"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise BadInputError(
            f"{what} '{path}' is not a readable PyTorch file ({first_line(exc, 300)})"
        ) from None


def _state_dict(loaded: Any, path: Path) -> Mapping[str, Any]:
    import torch

    if isinstance(loaded, torch.nn.Module):
        return loaded.state_dict()
    if isinstance(loaded, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            inner = loaded.get(key)
            if (
                isinstance(inner, Mapping)
                and inner
                and all(isinstance(v, torch.Tensor) for v in inner.values())
            ):
                return inner
        tensors = {k: v for k, v in loaded.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
    raise BadInputError(
        f"weights '{path}' hold a {type(loaded).__name__} with no tensors; pass a state dict saved with "
        "torch.save(model.state_dict()) or safetensors"
    )


def load_weights(model: Any, path: Path, trust_remote_code: bool = False) -> None:
    """Load a state dict from `path` (.safetensors, or .pt/.pth/.bin weights-only) into `model`, strictly."""
    if not path.is_file():
        raise BadInputError(f"--weights file '{path}' does not exist")
    suffix = path.suffix.lower()
    if suffix not in _WEIGHT_SUFFIXES:
        raise BadInputError(
            f"--weights '{path}' has an unknown format; use .safetensors, or .pt/.pth/.bin saved with torch.save"
        )
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state: Mapping[str, Any] = load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as exc:
            raise BadInputError(
                f"--weights '{path}' is not a readable safetensors file ({first_line(exc, 300)})"
            ) from None
    else:
        state = _state_dict(_torch_load(path, trust_remote_code, "--weights"), path)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(
                f"missing {len(missing)} ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})"
            )
        if unexpected:
            parts.append(
                f"unexpected {len(unexpected)} ({', '.join(unexpected[:3])}{', ...' if len(unexpected) > 3 else ''})"
            )
        raise BadInputError(
            f"--weights '{path}' do not match {type(model).__name__}: {'; '.join(parts)}; "
            "save them from the same model class with model.state_dict()"
        )
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise BadInputError(
                f"--weights '{path}': '{key}' has shape {list(tensor.shape)} but {type(model).__name__} expects "
                f"{list(expected[key].shape)}; save them from the same model configuration"
            )
    model.load_state_dict(state, strict=True)


def _numpy_dtype(dtype: Any) -> str:
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES.values():
        raise BadInputError(f"an input of the program has dtype {name}, which edge-toolkit cannot feed")
    return name


def _load_program(path: Path) -> LoadedModel:
    import torch
    import torch.utils._pytree as pytree

    try:
        program = torch.export.load(path)
    except Exception as exc:  # noqa: BLE001 - torch.export.load raises many types for a foreign or corrupt file
        raise BadInputError(
            f"'{path}' is not a program saved with torch.export.save ({type(exc).__name__}: {first_line(exc, 300)})"
        ) from None
    names = tuple(program.graph_signature.user_inputs)
    placeholders = {node.name: node for node in program.graph.nodes if node.op == "placeholder"}
    examples: list[Any] = []
    if program.example_inputs is not None:
        examples = list(pytree.tree_leaves(program.example_inputs))
    if examples and len(examples) != len(names):
        examples = []  # non-tensor leaves in the example inputs: the specs cannot be read from them
    symbols: dict[str, str] = {}
    dim_sizes: dict[str, int] = {}
    specs = []
    for index, name in enumerate(names):
        value = placeholders[name].meta.get("val")
        if value is None or not hasattr(value, "shape"):
            raise BadInputError(
                f"'{path}' has a non-tensor input '{name}'; edge convert exports tensor inputs only"
            )
        dims: list[int | str] = []
        for axis, dim in enumerate(value.shape):
            if isinstance(dim, int):
                dims.append(dim)
                continue
            symbol = str(dim)
            if symbol not in symbols:
                symbols[symbol] = (
                    "batch" if axis == 0 and "batch" not in symbols.values() else f"dim{len(symbols)}"
                )
            dims.append(symbols[symbol])
            if examples:
                dim_sizes.setdefault(symbols[symbol], int(examples[index].shape[axis]))
        dtype = _numpy_dtype(value.dtype)
        value_range = None
        if dtype.startswith(("int", "uint")):
            if not examples:
                raise BadInputError(
                    f"'{path}' has integer input '{name}' and no example inputs to read its value range from; "
                    f"describe every input with --input, e.g. --input '{name}:{dtype}[...]:0..999'"
                )
            example = examples[index]
            value_range = (int(example.min()), int(example.max())) if example.numel() else (0, 0)
        if dtype == "bool":
            value_range = None
        specs.append(InputSpec(name, dtype, tuple(dims), value_range))
    module = program.module()
    label = f"{path.name} (torch.export program)"
    return LoadedModel(module, label, (path,), program, names, tuple(specs), dim_sizes)


def _module_file(module_name: str) -> tuple[Path, ...]:
    module = sys.modules.get(module_name)
    try:
        file = inspect.getsourcefile(module) if module is not None else None
    except TypeError:  # built-in or namespace module: nothing to hash
        file = None
    return (Path(file),) if file else ()


def load_torch_source(
    source: TorchSource, weights: Path | None = None, trust_remote_code: bool = False
) -> LoadedModel:
    """Load `source` (and `weights` into it) as a model in eval mode; every failure is a one-line EdgeError."""
    import torch

    if source.kind == "pt2":
        assert source.path is not None
        if weights is not None:
            raise BadInputError(
                f"--weights does not apply to '{source.path}': a .pt2 program carries its weights"
            )
        return _load_program(source.path)
    files: tuple[Path, ...]
    if source.kind == "pickle":
        assert source.path is not None
        model = _torch_load(source.path, trust_remote_code, "source")
        if not isinstance(model, torch.nn.Module):
            raise BadInputError(
                f"'{source.path}' holds a {type(model).__name__}, not a pickled torch.nn.Module; pass the model's "
                "factory as SOURCE (pkg.module:factory or file.py:factory) and this file as --weights"
            )
        files = (source.path,)
    elif source.kind == "file":
        assert source.path is not None
        assert source.attr is not None
        module = _import_file(source.path)
        model = _call_factory(_attribute(module, source.attr, f"'{source.path}'"), source.ref)
        files = (source.path,)
    else:
        assert source.module is not None
        assert source.attr is not None
        module = _import_module(source.module)
        model = _call_factory(_attribute(module, source.attr, f"module '{source.module}'"), source.ref)
        files = _module_file(source.module)
    if weights is not None:
        load_weights(model, weights, trust_remote_code)
        files = (*files, weights)
    return LoadedModel(model.eval(), type(model).__name__, files)
