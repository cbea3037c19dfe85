"""`Runner`: one onnxruntime session with checked feeds and honest provider reporting."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from toolkit.errors import BadInputError, BadModelError
from toolkit.manifest import FP32_VARIANT, ModelPackage, TensorSpec
from toolkit.providers import (
    ProviderFallback,
    create_session,
    provider_names,
    resolve_providers,
    short_name,
)

__all__ = ["Runner", "numpy_dtype", "resolve_model_path"]

log = logging.getLogger(__name__)

_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(bfloat16)": "bfloat16",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
    "tensor(string)": "str",
}


def numpy_dtype(ort_type: str) -> str:
    """``tensor(int64)`` -> ``int64``."""
    try:
        return _ORT_TYPES[ort_type]
    except KeyError:
        raise BadModelError(f"tensor type {ort_type} is not supported by edge-toolkit's runner") from None


def _spec(node: Any) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) else (d or "?") for d in node.shape)
    return TensorSpec(node.name, numpy_dtype(node.type), shape)


def resolve_model_path(model: str | Path, variant: str = FP32_VARIANT) -> Path:
    """A package directory (with `variant`) or an .onnx file, as a checked path to the ONNX file."""
    path = Path(model)
    if path.is_dir():
        return ModelPackage.open(path).model_path(variant)
    if not path.exists():
        raise BadInputError(f"model '{path}' does not exist; pass a model package directory or an .onnx file")
    return path


class Runner:
    """An onnxruntime session over one ONNX file, with providers tried in order and feeds checked."""

    def __init__(
        self,
        model: str | Path,
        providers: str | Sequence[str] | None = None,
        *,
        variant: str = FP32_VARIANT,
        threads: int | None = None,
        strict: bool = False,
        provider_options: Mapping[str, Mapping[str, Any]] | None = None,
        session_options: ort.SessionOptions | None = None,
    ) -> None:
        self.path = resolve_model_path(model, variant)
        requested = resolve_providers(provider_names(providers))
        options = session_options or ort.SessionOptions()
        if threads is not None:
            if threads < 1:
                raise BadInputError(f"threads must be at least 1, got {threads}")
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        # Warnings onnxruntime logs at session creation are captured by create_session; keep run-time quiet.
        options.log_severity_level = 3
        self.requested: tuple[str, ...] = tuple(s.short for s in requested)
        self.session, fallbacks = create_session(str(self.path), requested, options, provider_options, strict)
        self.fallbacks: tuple[ProviderFallback, ...] = tuple(fallbacks)
        self.inputs: tuple[TensorSpec, ...] = tuple(_spec(i) for i in self.session.get_inputs())
        self.outputs: tuple[TensorSpec, ...] = tuple(_spec(o) for o in self.session.get_outputs())
        self._inputs_by_name = {spec.name: spec for spec in self.inputs}

    @property
    def providers(self) -> tuple[str, ...]:
        """The providers onnxruntime actually uses for this session, by short name, in priority order."""
        return tuple(short_name(p) for p in self.session.get_providers())

    def check_feeds(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Convert feeds to arrays and check names, dtypes, ranks and fixed dims; errors name the input."""
        missing = [name for name in self._inputs_by_name if name not in feeds]
        unknown = [name for name in feeds if name not in self._inputs_by_name]
        if unknown:
            raise BadInputError(
                f"unknown input {', '.join(repr(n) for n in unknown)}; "
                f"this model takes {', '.join(repr(n) for n in self._inputs_by_name)}"
            )
        if missing:
            raise BadInputError(
                f"missing input {', '.join(repr(n) for n in missing)}; "
                f"this model takes {', '.join(repr(n) for n in self._inputs_by_name)}"
            )
        arrays = {}
        for name, value in feeds.items():
            spec = self._inputs_by_name[name]
            array = np.asarray(value)
            got = f"{array.dtype} [{', '.join(str(d) for d in array.shape)}]"
            if array.dtype.name != spec.dtype and not (spec.dtype == "str" and array.dtype.kind in "UO"):
                raise BadInputError(
                    f"input '{name}': expected {spec.describe()}, got {got}; cast it with .astype(np.{spec.dtype})"
                )
            if array.ndim != len(spec.shape):
                raise BadInputError(
                    f"input '{name}': expected {spec.describe()} (rank {len(spec.shape)}), got {got} (rank {array.ndim})"
                )
            for axis, (want, have) in enumerate(zip(spec.shape, array.shape, strict=True)):
                if isinstance(want, int) and want != have:
                    raise BadInputError(
                        f"input '{name}': expected {spec.describe()}, got {got} (axis {axis} must be {want})"
                    )
            arrays[name] = array
        return arrays

    def run(self, feeds: Mapping[str, Any], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Run the model on checked feeds; returns every (or the named) output by name."""
        arrays = self.check_feeds(feeds)
        names = list(outputs) if outputs is not None else [o.name for o in self.outputs]
        unknown = [n for n in names if n not in {o.name for o in self.outputs}]
        if unknown:
            raise BadInputError(
                f"unknown output {', '.join(repr(n) for n in unknown)}; "
                f"this model gives {', '.join(repr(o.name) for o in self.outputs)}"
            )
        try:
            results = self.session.run(names, arrays)
        except (ort.capi.onnxruntime_pybind11_state.Fail, ort.capi.onnxruntime_pybind11_state.InvalidArgument) as exc:
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            shapes = ", ".join(f"{n} {a.dtype} {list(a.shape)}" for n, a in arrays.items())
            raise BadInputError(f"onnxruntime could not run '{self.path.name}' on inputs {shapes}: {detail}") from None
        return dict(zip(names, results, strict=True))

    def __repr__(self) -> str:
        return f"Runner({str(self.path)!r}, providers={self.providers})"
