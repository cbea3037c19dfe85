"""Export a loaded PyTorch model to ONNX with ``torch.onnx``: the dynamo exporter first, TorchScript as fallback.

- Inputs are passed to ``forward`` as keyword arguments named by the input specs (a ``.pt2`` program takes
  them positionally, in its own order); named dims become dynamic axes, sized apart in the example inputs so
  that ``torch.export`` cannot mistake one for another.
- Outputs are flattened predictably: one tensor is ``output``; a tuple ``output_0, output_1, ...``; a dict its
  keys; nested containers join with ``_<index>`` and ``.<key>`` (``hidden_0``, ``extra.scores``).
- The dynamo path is ``torch.export.export(strict=False)`` then ``torch.onnx.export(program)``: a model that
  ``torch.export`` cannot capture faithfully (data-dependent control flow, a dynamic dim it specialises) fails
  there instead of being exported silently specialised, and ``auto`` retries with the TorchScript tracer.
- A failure is one line naming the model, the exporter, the operator and the submodule that calls it; the
  exporters' own traces are chained to the error for ``--debug``.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import logging
import os
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from converters.input_specs import InputSpec
from converters.torch_sources import LoadedModel
from toolkit.errors import BadInputError, ExportError
from toolkit.inputs import InputLimits, is_batch_dim, is_sequence_dim, random_feeds

__all__ = [
    "EXPORTERS",
    "TorchExport",
    "check_inputs",
    "example_sizes",
    "export_torch",
    "flatten_outputs",
    "run_model",
]

log = logging.getLogger(__name__)

EXPORTERS = ("auto", "dynamo", "torchscript")
_EXAMPLE_BATCH = 2
# Example sizes for the other dynamic dims: distinct primes, so torch.export never unifies two of them.
_EXAMPLE_SIZES = (11, 13, 17, 19, 23, 29, 31, 37)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")

Feeds = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class TorchExport:
    """The ONNX file an exporter wrote, which exporter it was, and why the first one failed when `auto` fell back."""

    onnx_file: Path
    exporter: str
    first_error: str | None
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    dim_sizes: Mapping[str, int]
    seconds: float


# --- calling the model ----------------------------------------------------------------------------------


def _forward_parameters(module: Any) -> tuple[list[str], list[str], bool]:
    """Names `forward` accepts by keyword, the ones it requires, and whether it takes **kwargs."""
    import inspect

    signature = inspect.signature(module.forward)
    names, required, var_keyword = [], [], False
    for parameter in signature.parameters.values():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            var_keyword = True
        elif parameter.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
            names.append(parameter.name)
            if parameter.default is inspect.Parameter.empty:
                required.append(parameter.name)
    return names, required, var_keyword


def check_inputs(model: LoadedModel, specs: Sequence[InputSpec]) -> tuple[InputSpec, ...]:
    """`specs` in the order the model takes them; names must match `forward`'s parameters (or the program's inputs)."""
    by_name = {spec.name: spec for spec in specs}
    untyped = [s for s in specs if s.dtype.startswith(("int", "uint")) and s.value_range is None]
    if untyped:
        raise BadInputError(
            f"--input '{untyped[0]}' is an integer input without a value range; add one so export and validation "
            f"use valid values, e.g. {untyped[0]}:0..999"
        )
    if model.program is not None:
        wanted = list(model.program_inputs)
        unknown = [n for n in by_name if n not in wanted]
        missing = [n for n in wanted if n not in by_name]
        if unknown or missing:
            raise BadInputError(
                f"{model.label} takes inputs ({', '.join(wanted)}) but --input declares ({', '.join(by_name)}); "
                "declare exactly those names"
            )
        return tuple(by_name[n] for n in wanted)
    names, required, var_keyword = _forward_parameters(model.module)
    signature = f"{model.label}.forward({', '.join(names)}{', **kwargs' if var_keyword else ''})"
    unknown = [n for n in by_name if n not in names and not var_keyword]
    if unknown:
        raise BadInputError(
            f"--input '{unknown[0]}' is not a parameter of {signature}; name each input after a forward parameter"
        )
    missing = [n for n in required if n not in by_name]
    if missing:
        raise BadInputError(
            f"{signature} requires '{missing[0]}' but no --input declares it; add --input '{missing[0]}:DTYPE[DIMS]'"
        )
    ordered = [by_name[n] for n in names if n in by_name]
    return (*ordered, *(s for s in specs if s.name not in names))


def example_sizes(specs: Sequence[InputSpec], known: Mapping[str, int] | None = None) -> dict[str, int]:
    """A size for every dynamic dim name: `known` ones kept, the batch 2, the others distinct primes."""
    sizes = dict(known or {})
    spare = (s for s in itertools.chain(_EXAMPLE_SIZES, itertools.count(41)) if s not in sizes.values())
    for spec in specs:
        for axis, dim in spec.dynamic_dims.items():
            if dim in sizes:
                continue
            sizes[dim] = (
                _EXAMPLE_BATCH
                if is_batch_dim(dim) or (axis == 0 and not is_sequence_dim(dim))
                else next(spare)
            )
    return sizes


def _example_feeds(specs: Sequence[InputSpec], sizes: Mapping[str, int]) -> dict[str, np.ndarray]:
    limits = InputLimits(vocab_size=None, dim_sizes=sizes, default_dim=None)
    return random_feeds([s.to_tensor_spec() for s in specs], _EXAMPLE_BATCH, None, limits, rng=12345)


def _to_torch(feeds: Feeds) -> dict[str, Any]:
    import torch

    return {name: torch.from_numpy(np.ascontiguousarray(array)) for name, array in feeds.items()}


def _call(model: LoadedModel, tensors: Mapping[str, Any]) -> Any:
    """Call the model: forward(**tensors), or a program with its inputs in its own positional structure."""
    if model.program is not None:
        import torch.utils._pytree as pytree

        flat = [tensors[name] for name in model.program_inputs]
        args, kwargs = pytree.tree_unflatten(flat, model.program.call_spec.in_spec)
        return model.module(*args, **kwargs)
    return model.module(**tensors)


def flatten_outputs(outputs: Any, label: str = "the model") -> list[tuple[str, Any]]:
    """(name, tensor) for every tensor in `outputs`, named as the module docstring says."""
    import torch
    import torch.utils._pytree as pytree

    leaves, _ = pytree.tree_flatten_with_path(outputs)
    named: list[tuple[str, Any]] = []
    for path, leaf in leaves:
        name = ""
        for entry in path:
            if isinstance(entry, pytree.SequenceKey):
                name = f"{name or 'output'}_{entry.idx}"
            else:
                key = (
                    entry.key if isinstance(entry, pytree.MappingKey) else getattr(entry, "name", str(entry))
                )
                name = f"{name}.{key}" if name else str(key)
        name = name or "output"
        if not isinstance(leaf, torch.Tensor):
            raise BadInputError(
                f"{label} returns a {type(leaf).__name__} as output '{name}'; ONNX outputs are tensors, so return "
                "tensors only (or wrap the model)"
            )
        named.append((name, leaf))
    return named


def run_model(model: LoadedModel, feeds: Feeds) -> dict[str, np.ndarray]:
    """Run the PyTorch model on numpy feeds; outputs by their flattened names, as float/int numpy arrays."""
    import torch

    with torch.inference_mode():
        outputs = _call(model, _to_torch(feeds))
    return {
        name: tensor.detach().float().numpy() if tensor.is_floating_point() else tensor.detach().numpy()
        for name, tensor in flatten_outputs(outputs, model.label)
    }


def _describe(feeds: Feeds) -> str:
    return ", ".join(f"{name} {array.dtype} {list(array.shape)}" for name, array in feeds.items())


# --- quiet exporters ------------------------------------------------------------------------------------


@contextlib.contextmanager
def _captured_fds(sink: io.StringIO) -> Iterator[None]:
    """Capture what C++ code writes to file descriptors 1 and 2 (the TorchScript exporter prints graphs there).

    Process-wide while it lasts: export runs from the CLI or a script, not beside a server's request threads.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        saved = [os.dup(1), os.dup(2)]
    except OSError:  # no standard descriptors (an embedded interpreter): nothing native to capture
        yield
        return
    with tempfile.TemporaryFile(mode="w+b") as capture:
        try:
            os.dup2(capture.fileno(), 1)
            os.dup2(capture.fileno(), 2)
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            capture.seek(0)
            sink.write(capture.read().decode("utf-8", errors="replace"))


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporters log, warn and print progress at length; keep all of it for --debug (converters at DEBUG)."""
    torch_logger = logging.getLogger("torch")
    previous = torch_logger.level
    if not log.isEnabledFor(logging.DEBUG):
        torch_logger.setLevel(logging.CRITICAL)
    printed = io.StringIO()
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as recorded, _captured_fds(printed):
            warnings.simplefilter("always")
            caught = recorded
            with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
                yield
    finally:
        torch_logger.setLevel(previous)
        for warning in caught:
            log.debug("export: %s", warning.message)
        if printed.getvalue().strip():
            log.debug("export output:\n%s", printed.getvalue())


# --- the two exporters ----------------------------------------------------------------------------------


def _rename_dims(onnx_program: Any, specs: Sequence[InputSpec]) -> None:
    """torch.export names dynamic dims s0, s1, ...; give them the names the input specs use, everywhere."""
    import onnx_ir as ir

    renames: dict[str, str] = {}
    for spec, value in zip(specs, onnx_program.model.graph.inputs, strict=False):
        if value.shape is None:
            continue
        for axis, dim in enumerate(value.shape.dims):
            if isinstance(dim, ir.SymbolicDim) and dim.value is not None and axis < len(spec.shape):
                target = spec.shape[axis]
                if isinstance(target, str):
                    renames.setdefault(dim.value, target)
    if not renames:
        return
    graph = onnx_program.model.graph
    values = [*graph.inputs, *graph.outputs, *(out for node in graph.all_nodes() for out in node.outputs)]
    for value in values:
        if value.shape is None:
            continue
        dims = [
            ir.SymbolicDim(renames[d.value]) if isinstance(d, ir.SymbolicDim) and d.value in renames else d
            for d in value.shape.dims
        ]
        value.shape = ir.Shape(dims)


def _export_dynamo(
    model: LoadedModel,
    specs: Sequence[InputSpec],
    tensors: Mapping[str, Any],
    output_names: Sequence[str],
    out_file: Path,
    opset: int | None,
) -> None:
    import torch

    if model.program is not None:
        program = model.program
        args, kwargs = _program_args(model, tensors)
    else:
        dynamic = torch.export.Dim.DYNAMIC
        shapes = {spec.name: {axis: dynamic for axis in spec.dynamic_dims} or None for spec in specs}
        args, kwargs = (), dict(tensors)
        program = torch.export.export(model.module, args, kwargs=kwargs, dynamic_shapes=shapes, strict=False)
    onnx_program = torch.onnx.export(
        program,
        args,
        kwargs=kwargs,
        input_names=[spec.name for spec in specs],
        output_names=list(output_names),
        opset_version=opset,
        dynamo=True,
        verbose=False,
        external_data=False,
    )
    if onnx_program is None:
        raise ExportError("torch.onnx.export returned no ONNX program")
    _rename_dims(onnx_program, specs)
    onnx_program.save(str(out_file))


def _program_args(model: LoadedModel, tensors: Mapping[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    import torch.utils._pytree as pytree

    flat = [tensors[name] for name in model.program_inputs]
    args, kwargs = pytree.tree_unflatten(flat, model.program.call_spec.in_spec)
    return tuple(args), dict(kwargs)


def _export_torchscript(
    model: LoadedModel,
    specs: Sequence[InputSpec],
    tensors: Mapping[str, Any],
    output_names: Sequence[str],
    out_file: Path,
    opset: int | None,
) -> None:
    import torch

    names = [spec.name for spec in specs]

    class ByName(torch.nn.Module):
        """Positional tensors in, the model called by name, outputs flattened: the tracer sees only tensors."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model.module

        def forward(self, *inputs: Any) -> tuple[Any, ...]:
            outputs = _call(model, dict(zip(names, inputs, strict=True)))
            return tuple(tensor for _, tensor in flatten_outputs(outputs, model.label))

        def train(self, mode: bool = True) -> ByName:
            # the model stays in the eval mode it was loaded in; a .pt2 program's module refuses train() at all
            self.training = mode
            return self

    torch.onnx.export(
        ByName(),
        tuple(tensors[name] for name in names),
        str(out_file),
        input_names=names,
        output_names=list(output_names),
        opset_version=opset,
        dynamo=False,
        dynamic_axes={spec.name: spec.dynamic_dims for spec in specs if spec.dynamic_dims},
    )


ExportFn = Callable[
    [LoadedModel, Sequence[InputSpec], Mapping[str, Any], Sequence[str], Path, int | None], None
]

_EXPORT_FUNCTIONS: dict[str, ExportFn] = {"dynamo": _export_dynamo, "torchscript": _export_torchscript}
_EXPORTER_LABELS = {"dynamo": "dynamo (torch.export)", "torchscript": "TorchScript"}


# --- failures -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Failure:
    exporter: str
    problem: str
    hint: str
    operator: str | None = None


_HINT_OPERATOR = "replace that call in the model, or register a translation with torch.onnx.export(custom_translation_table=...)"
_HINT_SPECIALISED = "give that dim its fixed size in --input, or use --exporter torchscript"
_HINT_DATA_DEPENDENT = (
    "rewrite the branch with torch.where or torch.cond, or use --exporter torchscript (it traces the branch "
    "the example inputs take)"
)
_HINT_DEBUG = "rerun with --debug for the exporter's trace"


def _chain_text(exc: BaseException) -> str:
    parts, seen = [], set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        parts.append(f"{type(current).__name__}: {current}")
        current = current.__cause__ or current.__context__
    return _ANSI.sub("", "\n".join(parts))


_OPERATOR_PATTERNS = (
    re.compile(r"OpOverload\(op='(?P<op>[\w.]+)'"),
    re.compile(r"operator '(?P<op>[\w:.]+)'"),
    re.compile(r"No ONNX function found for (?P<op>[\w.:]+)"),
    re.compile(r"(?:Unsupported|unsupported)[^\n]*?(?P<op>aten(?:::|\.)\w+)"),
)
_USER_CODE = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<func>\w+)\n\s+(?P<code>[^\n]+)')
_SPECIALISED = re.compile(
    r"L\['(?P<input>\w+)'\]\.size\(\)\[(?P<axis>\d+)\] as dynamic but your code specialized it to be a constant "
    r"\((?P<value>\d+)\)"
)


def _operator(text: str) -> str | None:
    """The operator an exporter could not convert, as ``namespace::name`` (``aten::linalg_svd``)."""
    for pattern in _OPERATOR_PATTERNS:
        match = pattern.search(text)
        if match is not None:
            parts = [p for p in re.split(r"::|\.", match["op"]) if p]
            namespace = parts[0] if len(parts) > 1 else "aten"
            base = parts[1] if len(parts) > 1 else parts[0]
            # the dynamo exporter names the private overload (aten._linalg_svd) the TorchScript one the public op
            return f"{namespace}::{base.lstrip('_')}"
    return None


def _first_text_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0][:240] if lines else "no message"


def _user_code(text: str) -> str:
    """`` at file.py:12 `code` `` for the last frame of user code the exporter quoted, if any."""
    frames = [
        m
        for m in _USER_CODE.finditer(text)
        if "/torch/" not in m["file"] and "site-packages" not in m["file"]
    ]
    if not frames:
        return ""
    frame = frames[-1]
    return f" at {Path(frame['file']).name}:{frame['line']} `{frame['code'].strip()}`"


def _diagnose(exporter: str, exc: BaseException, specs: Sequence[InputSpec]) -> _Failure:
    text = _chain_text(exc)
    operator = _operator(text)
    if operator is not None:
        return _Failure(exporter, f"operator {operator} has no ONNX conversion", _HINT_OPERATOR, operator)
    specialised = _SPECIALISED.search(text)
    if specialised is not None:
        spec = next((s for s in specs if s.name == specialised["input"]), None)
        axis = int(specialised["axis"])
        dim = spec.shape[axis] if spec is not None and axis < len(spec.shape) else axis
        return _Failure(
            exporter,
            f"dim '{dim}' of input '{specialised['input']}' is declared dynamic but torch.export specialised "
            f"it to {specialised['value']}",
            _HINT_SPECIALISED,
        )
    if "data-dependent" in text or "GuardOnDataDependentSymNode" in text:
        return _Failure(exporter, f"data-dependent control flow{_user_code(text)}", _HINT_DATA_DEPENDENT)
    problem = f"{type(exc).__name__}: {_first_text_line(_ANSI.sub('', str(exc)))}{_user_code(text)}"
    return _Failure(exporter, problem, _HINT_DEBUG)


def _base_name(operator: str) -> str:
    parts = [p for p in re.split(r"::|\.", operator) if p and p not in ("default", "Tensor", "Scalar", "int")]
    return parts[-1].lstrip("_") if parts else operator


def _module_calling(model: LoadedModel, tensors: Mapping[str, Any], operator: str) -> str | None:
    """``in Class at 'path'`` for the submodule whose forward calls `operator`, found by running the model once."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    wanted = _base_name(operator)
    stack: list[tuple[str, str]] = []
    found: list[tuple[str, str]] = []

    class Spy(TorchDispatchMode):
        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            if not found and stack and _base_name(func.name()).startswith(wanted):
                found.append(stack[-1])
            return func(*args, **(kwargs or {}))

    def push(entry: tuple[str, str]) -> Callable[..., None]:
        return lambda *_: stack.append(entry)

    def pop(*_: Any) -> None:
        stack.pop()

    handles = []
    for path, submodule in model.module.named_modules():
        handles.append(submodule.register_forward_pre_hook(push((path, type(submodule).__name__))))
        handles.append(submodule.register_forward_hook(pop))
    try:
        with torch.inference_mode(), Spy():
            _call(model, tensors)
    except Exception as exc:  # noqa: BLE001 - only a hint for the message; the export error is reported either way
        log.debug("could not locate %s in %s: %s", operator, model.label, exc)
    finally:
        for handle in handles:
            handle.remove()
    if not found:
        return None
    path, cls = found[0]
    return f"in {cls} at '{path}'" if path else f"in {cls}.forward"


def _failure_message(model: LoadedModel, failures: Sequence[_Failure], tensors: Mapping[str, Any]) -> str:
    operators = {f.operator for f in failures}
    if len(operators) == 1 and None not in operators:
        operator = failures[0].operator or ""
        where = _module_calling(model, tensors, operator)
        exporters = " and ".join(_EXPORTER_LABELS[f.exporter] for f in failures)
        return (
            f"cannot export {model.label} to ONNX: operator {operator}{f' (called {where})' if where else ''} is "
            f"not supported by the {exporters} exporter{'s' if len(failures) > 1 else ''}; {_HINT_OPERATOR}"
        )
    reasons = "; ".join(f"{_EXPORTER_LABELS[f.exporter]}: {f.problem}" for f in failures)
    some_operator = next((f.operator for f in failures if f.operator), None)
    where = _module_calling(model, tensors, some_operator) if some_operator else None
    located = f" ({some_operator} is called {where})" if where else ""
    return f"cannot export {model.label} to ONNX ({reasons}){located}; {failures[-1].hint}"


# --- the entry point ------------------------------------------------------------------------------------


def export_torch(
    model: LoadedModel,
    specs: Sequence[InputSpec],
    out_file: Path,
    exporter: str = "auto",
    opset: int | None = None,
) -> TorchExport:
    """Export `model` to `out_file`: dynamo first and TorchScript when it fails (`auto`), or the one named."""
    if exporter not in EXPORTERS:
        raise BadInputError(f"unknown exporter '{exporter}'; use one of: {', '.join(EXPORTERS)}")
    specs = check_inputs(model, specs)
    sizes = example_sizes(specs, model.dim_sizes)
    feeds = _example_feeds(specs, sizes)
    tensors = _to_torch(feeds)
    try:
        with _quiet():
            import torch

            with torch.inference_mode():
                outputs = _call(model, tensors)
    except Exception as exc:  # the user's forward may raise anything on wrong shapes or dtypes
        raise BadInputError(
            f"{model.label} does not run on the declared inputs ({_describe(feeds)}): {type(exc).__name__}: "
            f"{_first_text_line(_ANSI.sub('', str(exc)))}; check --input"
        ) from exc
    output_names = tuple(name for name, _ in flatten_outputs(outputs, model.label))
    if len(set(output_names)) != len(output_names):
        raise BadInputError(
            f"{model.label} returns outputs whose flattened names repeat ({', '.join(output_names)})"
        )
    order = ("dynamo", "torchscript") if exporter == "auto" else (exporter,)
    failures: list[_Failure] = []
    last: BaseException | None = None
    for name in order:
        started = time.perf_counter()
        try:
            with _quiet():
                _EXPORT_FUNCTIONS[name](model, specs, tensors, output_names, out_file, opset)
        except Exception as exc:  # exporters raise arbitrary types from deep inside torch
            log.debug("%s exporter failed on %s", name, model.label, exc_info=exc)
            failures.append(_diagnose(name, exc, specs))
            last = exc
            out_file.unlink(missing_ok=True)
            continue
        first_error = f"{_EXPORTER_LABELS[failures[0].exporter]}: {failures[0].problem}" if failures else None
        if first_error is not None:
            log.warning(
                "the %s exporter failed (%s); exported with %s instead",
                failures[0].exporter,
                failures[0].problem,
                _EXPORTER_LABELS[name],
            )
        return TorchExport(
            onnx_file=out_file,
            exporter=name,
            first_error=first_error,
            input_names=tuple(spec.name for spec in specs),
            output_names=output_names,
            dim_sizes=sizes,
            seconds=time.perf_counter() - started,
        )
    raise ExportError(_failure_message(model, failures, tensors)) from last
