"""Execution providers: one table from short names to onnxruntime names, options as frozen dataclasses.

The table `PROVIDERS` is the single source of provider names; `CudaOptions` and `TensorRTOptions`
(bundled in a `ProviderConfig`) are mapped to onnxruntime's option dicts in one place,
`ort_provider_options`, with the option names onnxruntime documents.

Session creation lives here too, because that is where providers fail: onnxruntime reports a
provider that cannot load in two ways, neither of which reaches Python as data. A CUDA provider
whose libraries are missing is logged to the process's native stderr and silently dropped; a
TensorRT provider raises, and the Python wrapper prints a banner and retries on CPU. We capture the
native stderr while the session is created, turn each dropped provider into a `ProviderFallback`
with the reason onnxruntime gave, and route the captured noise to our logger instead of the terminal.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import io
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import onnxruntime as ort

from toolkit.errors import BadInputError, BadModelError, ProviderUnavailableError, first_line
from toolkit.manifest import TensorSpec

__all__ = [
    "DEFAULT_BATCH_RANGE",
    "PROVIDERS",
    "CudaOptions",
    "DimRange",
    "OrtPackage",
    "ProviderConfig",
    "ProviderFallback",
    "ProviderSpec",
    "TensorRTOptions",
    "TensorRTProfile",
    "captured_native_stderr",
    "create_session",
    "derive_tensorrt_profile",
    "onnxruntime_packages",
    "ort_provider_options",
    "parse_dim_range",
    "parse_fixed_dim",
    "preload_nvidia_libraries",
    "probe_model_bytes",
    "probe_provider",
    "provider_names",
    "resolve_providers",
    "short_name",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProviderSpec:
    """A short provider name, its onnxruntime name, the options we pass by default, and its device."""

    short: str
    ort_name: str
    options: Mapping[str, Any] = field(default_factory=dict)
    gpu: bool = False
    device: str = "cpu"  # where IO binding puts inputs and outputs (an OrtDevice type)


PROVIDERS: dict[str, ProviderSpec] = {
    spec.short: spec
    for spec in (
        ProviderSpec("tensorrt", "TensorrtExecutionProvider", gpu=True, device="cuda"),
        ProviderSpec("cuda", "CUDAExecutionProvider", gpu=True, device="cuda"),
        ProviderSpec("openvino", "OpenVINOExecutionProvider"),
        ProviderSpec("dml", "DmlExecutionProvider", gpu=True),
        ProviderSpec("coreml", "CoreMLExecutionProvider"),
        ProviderSpec("cpu", "CPUExecutionProvider"),
    )
}
_BY_ORT_NAME = {spec.ort_name: spec for spec in PROVIDERS.values()}
_NVIDIA = ("tensorrt", "cuda")

DEFAULT_PROVIDERS = ("cpu",)


def provider_names(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """Split ``"tensorrt,cuda,cpu"`` (or pass a sequence through); None gives the default."""
    if text is None:
        return DEFAULT_PROVIDERS
    items = text.split(",") if isinstance(text, str) else list(text)
    names = tuple(item.strip().lower() for item in items if item.strip())
    if not names:
        raise BadInputError("no execution provider given; pass e.g. --providers cpu or --providers cuda,cpu")
    return names


def resolve_providers(names: Sequence[str]) -> list[ProviderSpec]:
    """Map short (or onnxruntime) names to specs; an unknown name is a BadInputError listing the known ones."""
    specs = []
    for name in names:
        spec = PROVIDERS.get(name.lower()) or _BY_ORT_NAME.get(name)
        if spec is None:
            known = ", ".join(PROVIDERS)
            raise BadInputError(f"unknown execution provider '{name}'; use one of: {known}")
        if spec not in specs:
            specs.append(spec)
    return specs


def short_name(ort_name: str) -> str:
    """``CUDAExecutionProvider`` -> ``cuda``; names not in the table pass through unchanged."""
    spec = _BY_ORT_NAME.get(ort_name)
    return spec.short if spec else ort_name


# --------------------------------------------------------------------------------------------------
# Options


@dataclass(frozen=True)
class DimRange:
    """The min / opt / max a TensorRT optimisation profile allows for one symbolic dimension."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise BadInputError(
                f"dimension range {self.min}:{self.opt}:{self.max} must satisfy 1 <= min <= opt <= max"
            )


DEFAULT_BATCH_RANGE = DimRange(1, 1, 32)


def parse_dim_range(text: str) -> tuple[str, DimRange]:
    """``batch_size=1:8:32`` (or ``batch_size=16`` for a fixed size) -> (name, DimRange)."""
    name, sep, spec = text.partition("=")
    parts = spec.split(":")
    if not sep or not name.strip() or len(parts) not in (1, 3) or not all(p.strip().isdigit() for p in parts):
        raise BadInputError(
            f"dimension range '{text}' must look like NAME=MIN:OPT:MAX (e.g. batch_size=1:8:32)"
        )
    values = [int(p) for p in parts] * (3 if len(parts) == 1 else 1)
    return name.strip(), DimRange(values[0], values[1], values[2])


def parse_fixed_dim(text: str) -> tuple[str, int]:
    """``batch_size=4`` -> ("batch_size", 4): one size for a symbolic dim (a CUDA graph's)."""
    name, sizes = parse_dim_range(text)
    if sizes.min != sizes.max:
        raise BadInputError(
            f"dimension '{text}' must be one size for a CUDA graph, NAME=SIZE (e.g. batch_size=4)"
        )
    return name, sizes.min


@dataclass(frozen=True)
class TensorRTProfile:
    """Explicit min / opt / max input shapes for TensorRT, one shape per dynamic input."""

    min: Mapping[str, tuple[int, ...]]
    opt: Mapping[str, tuple[int, ...]]
    max: Mapping[str, tuple[int, ...]]

    @staticmethod
    def _format(shapes: Mapping[str, tuple[int, ...]]) -> str:
        return ",".join(f"{name}:{'x'.join(str(d) for d in shape)}" for name, shape in shapes.items())

    def ort_options(self) -> dict[str, str]:
        """The ``trt_profile_{min,opt,max}_shapes`` strings (``name:1x128,other:1x128``)."""
        return {
            "trt_profile_min_shapes": self._format(self.min),
            "trt_profile_opt_shapes": self._format(self.opt),
            "trt_profile_max_shapes": self._format(self.max),
        }


ConvAlgoSearch = Literal["EXHAUSTIVE", "HEURISTIC", "DEFAULT"]


@dataclass(frozen=True)
class CudaOptions:
    """CUDA execution provider settings (onnxruntime's defaults unless changed)."""

    device_id: int = 0
    cudnn_conv_algo_search: ConvAlgoSearch = "EXHAUSTIVE"
    cuda_graph: bool = False
    copy_in_default_stream: bool = True
    gpu_mem_limit: int | None = None
    # The size of each symbolic dimension a CUDA graph is captured at (e.g. batch_size=4): fixed when the session
    # is created, so onnxruntime folds the shape computations it would otherwise run on the CPU, which a graph
    # cannot capture (onnxruntime refused MiniLM's capture on an H200 without them).
    graph_dims: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.device_id < 0:
            raise BadInputError(f"CUDA device id must be 0 or more, got {self.device_id}")
        for name, size in self.graph_dims.items():
            if size < 1:
                raise BadInputError(f"CUDA graph dimension {name}={size}: a size must be 1 or more")
        if self.graph_dims and not self.cuda_graph:
            raise BadInputError("CUDA graph dimensions (--cuda-graph-dim) need --cuda-graph")
        if self.cudnn_conv_algo_search not in ("EXHAUSTIVE", "HEURISTIC", "DEFAULT"):
            raise BadInputError(
                f"cudnn_conv_algo_search '{self.cudnn_conv_algo_search}' is not one of EXHAUSTIVE, HEURISTIC, DEFAULT"
            )


@dataclass(frozen=True)
class TensorRTOptions:
    """TensorRT execution provider settings; engine and timing caches default to the package's .trt_cache/."""

    device_id: int = 0
    fp16: bool = False
    int8: bool = False
    engine_cache: bool = True
    timing_cache: bool = True
    cache_dir: str | None = None
    builder_optimization_level: int | None = None
    max_workspace_size: int | None = None
    cuda_graph: bool = False
    dims: Mapping[str, DimRange] = field(default_factory=dict)
    profile: TensorRTProfile | None = None

    def __post_init__(self) -> None:
        if self.device_id < 0:
            raise BadInputError(f"TensorRT device id must be 0 or more, got {self.device_id}")
        level = self.builder_optimization_level
        if level is not None and not 0 <= level <= 5:
            raise BadInputError(f"TensorRT builder optimisation level must be 0 to 5, got {level}")
        if self.max_workspace_size is not None and self.max_workspace_size < 1:
            raise BadInputError(f"TensorRT workspace size must be positive, got {self.max_workspace_size}")


@dataclass(frozen=True)
class ProviderConfig:
    """Everything about where a model runs: providers in priority order, their options, strictness, and the
    low-memory profile (`toolkit.runner.LOW_MEMORY`: footprint over speed, for devices where memory is tight)."""

    providers: tuple[str, ...] = DEFAULT_PROVIDERS
    strict: bool = False
    cuda: CudaOptions = field(default_factory=CudaOptions)
    tensorrt: TensorRTOptions = field(default_factory=TensorRTOptions)
    io_binding: bool = False
    low_memory: bool = False


def _flag(value: bool) -> str:
    return "1" if value else "0"


def ort_provider_options(
    spec: ProviderSpec,
    config: ProviderConfig,
    cache_dir: Path | None = None,
    profile: TensorRTProfile | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The one place our options become onnxruntime's option dict for `spec` (names as onnxruntime documents)."""
    options: dict[str, Any] = dict(spec.options)
    if spec.short == "cuda":
        cuda = config.cuda
        options.update(
            device_id=str(cuda.device_id),
            cudnn_conv_algo_search=cuda.cudnn_conv_algo_search,
            do_copy_in_default_stream=_flag(cuda.copy_in_default_stream),
        )
        if cuda.cuda_graph:
            options["enable_cuda_graph"] = "1"
        if cuda.gpu_mem_limit is not None:
            options["gpu_mem_limit"] = str(cuda.gpu_mem_limit)
    elif spec.short == "tensorrt":
        trt = config.tensorrt
        options.update(
            device_id=str(trt.device_id),
            trt_fp16_enable=_flag(trt.fp16),
            trt_int8_enable=_flag(trt.int8),
        )
        directory = Path(trt.cache_dir) if trt.cache_dir else cache_dir
        if trt.engine_cache and directory is not None:
            options.update(trt_engine_cache_enable="1", trt_engine_cache_path=str(directory))
        if trt.timing_cache and directory is not None:
            options.update(trt_timing_cache_enable="1", trt_timing_cache_path=str(directory))
        if trt.builder_optimization_level is not None:
            options["trt_builder_optimization_level"] = str(trt.builder_optimization_level)
        if trt.max_workspace_size is not None:
            options["trt_max_workspace_size"] = str(trt.max_workspace_size)
        if trt.cuda_graph:
            options["trt_cuda_graph_enable"] = "1"
        chosen = trt.profile or profile
        if chosen is not None:
            options.update(chosen.ort_options())
    options.update(extra or {})
    return options


def derive_tensorrt_profile(
    inputs: Sequence[TensorSpec],
    dims: Mapping[str, DimRange] | None = None,
    max_length: int | None = None,
) -> tuple[TensorRTProfile | None, tuple[str, ...]]:
    """Min/opt/max shapes from the inputs' symbolic dims; returns (profile, dims it could not size).

    A dim named in `dims` uses that range; otherwise batch dims get `DEFAULT_BATCH_RANGE` and sequence
    dims 1 / min(128, max_length) / max_length when the package records a max length.
    """
    dims = dict(dims or {})
    unresolved: list[str] = []
    shapes: dict[str, list[tuple[int, ...]]] = {}
    dynamic = False
    for tensor in inputs:
        mins, opts, maxs = [], [], []
        for axis, dim in enumerate(tensor.shape):
            if isinstance(dim, int) and dim > 0:
                mins.append(dim)
                opts.append(dim)
                maxs.append(dim)
                continue
            dynamic = True
            name = str(dim)
            found = dims.get(name) or _default_range(name, axis, max_length)
            if found is None:
                if name not in unresolved:
                    unresolved.append(name)
                continue
            mins.append(found.min)
            opts.append(found.opt)
            maxs.append(found.max)
        shapes[tensor.name] = [tuple(mins), tuple(opts), tuple(maxs)]
    if unresolved or not dynamic:
        return None, tuple(unresolved)
    return (
        TensorRTProfile(
            min={n: s[0] for n, s in shapes.items()},
            opt={n: s[1] for n, s in shapes.items()},
            max={n: s[2] for n, s in shapes.items()},
        ),
        (),
    )


def _default_range(name: str, axis: int, max_length: int | None) -> DimRange | None:
    lowered = name.lower()
    if "batch" in lowered or (axis == 0 and lowered in ("n", "?", "b")):
        return DEFAULT_BATCH_RANGE
    if max_length and any(word in lowered for word in ("seq", "length", "token")):
        return DimRange(1, min(128, max_length), max_length)
    return None


# --------------------------------------------------------------------------------------------------
# The installation: packages, pip NVIDIA libraries, a tiny probe per provider


@dataclass(frozen=True)
class OrtPackage:
    """An installed distribution that provides the ``onnxruntime`` module."""

    name: str
    version: str


_NOT_RUNTIMES = ("onnxruntime-extensions", "onnxruntime-genai", "onnxruntime-tools")


def onnxruntime_packages() -> tuple[OrtPackage, ...]:
    """Installed onnxruntime builds (onnxruntime, onnxruntime-gpu, ...); more than one is a conflict."""
    found: dict[str, OrtPackage] = {}
    for dist in importlib.metadata.distributions():
        name = (dist.metadata["Name"] or "").lower()
        if name == "onnxruntime" or (name.startswith("onnxruntime-") and not name.startswith(_NOT_RUNTIMES)):
            found.setdefault(name, OrtPackage(name, dist.version))
    return tuple(sorted(found.values(), key=lambda p: p.name))


def nvidia_pip_packages() -> tuple[OrtPackage, ...]:
    """NVIDIA library wheels (``nvidia-cublas``, ``nvidia-cudnn-cu13``, ...) installed with pip."""
    found: dict[str, OrtPackage] = {}
    for dist in importlib.metadata.distributions():
        name = (dist.metadata["Name"] or "").lower()
        if name.startswith(("nvidia-", "tensorrt")):
            found.setdefault(name, OrtPackage(name, dist.version))
    return tuple(sorted(found.values(), key=lambda p: p.name))


@functools.lru_cache(maxsize=1)
def preload_nvidia_libraries() -> tuple[str, ...]:
    """Load pip-installed CUDA/cuDNN libraries with onnxruntime's ``preload_dlls()`` (once); returns its messages.

    Does nothing when no NVIDIA wheels are installed (system libraries are found by the loader)
    or when the installed onnxruntime has no ``preload_dlls`` (before 1.21).
    """
    if not nvidia_pip_packages() or not hasattr(ort, "preload_dlls"):
        return ()
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), captured_native_stderr() as lines:
        try:
            ort.preload_dlls()
        except (OSError, RuntimeError) as exc:
            buffer.write(f"preload_dlls failed: {exc}\n")
    messages = tuple(_strip_ansi(m) for m in buffer.getvalue().splitlines() if m.strip()) + tuple(lines)
    for message in messages:
        log.debug("onnxruntime.preload_dlls: %s", message)
    return messages


def probe_model_bytes() -> bytes:
    """A tiny ONNX model (one Add of two float inputs), built in memory for provider probes."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Add", ["x", "y"], ["z"])], "edge_probe", [x, y], [z])
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="edge-toolkit"
    )
    model.ir_version = 8
    serialized: bytes = model.SerializeToString()
    return serialized


@functools.cache
def probe_provider(name: str) -> str | None:
    """Try a tiny session on provider `name` alone; None when it works, else onnxruntime's reason (cached)."""
    spec = resolve_providers([name])[0]
    if spec.ort_name not in ort.get_available_providers():
        return _not_compiled_reason(spec)
    if spec.short in _NVIDIA:
        preload_nvidia_libraries()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        with captured_native_stderr(level=logging.NOTSET) as lines:
            session = ort.InferenceSession(
                probe_model_bytes(), options, providers=[spec.ort_name], enable_fallback=0
            )
    except Exception as exc:  # noqa: BLE001 - the reason is the result
        return _reason_from_log(spec, lines, default=None) or _reason_from_exception(exc)
    if spec.ort_name not in session.get_providers():
        return _reason_from_log(spec, lines)
    return None


# --------------------------------------------------------------------------------------------------
# Sessions


@dataclass(frozen=True)
class ProviderFallback:
    """A requested provider that onnxruntime did not use, and why."""

    provider: str
    reason: str
    to: str = ""

    def message(self) -> str:
        """One line for a warning."""
        target = f"falling back to {self.to}" if self.to else "falling back"
        return (
            f"execution provider '{self.provider}' is unavailable ({self.reason}); {target}; "
            "run `edge doctor` for the fix"
        )


@contextlib.contextmanager
def captured_native_stderr(level: int = logging.DEBUG) -> Iterator[list[str]]:
    """Redirect file descriptor 2 to a temporary file for the block; yields the captured lines afterwards."""
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read().decode("utf-8", errors="replace")
            lines.extend(_strip_ansi(line) for line in text.splitlines() if line.strip())
    if level:
        for line in lines:
            log.log(level, "onnxruntime: %s", line)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_LIBRARY_ERROR = re.compile(r"with error: (?P<reason>[^\n]+?)\s*$")
# onnxruntime's refusal when a CUDA-graph session has nodes on another provider
_GRAPH_CAPTURE_REFUSED = "cannot use the graph capture feature"


def _strip_ansi(text: str) -> str:
    return _ANSI.sub("", text).strip()


def _not_compiled_reason(spec: ProviderSpec) -> str:
    packages = onnxruntime_packages()
    reason = f"the installed onnxruntime package was built without {spec.ort_name}"
    if len(packages) > 1:
        names = " and ".join(p.name for p in packages)
        reason += f"; {names} are both installed and overwrite each other"
    return reason


def _reason_from_log(spec: ProviderSpec, lines: Sequence[str], default: str | None = "") -> str | None:
    """The most specific line onnxruntime logged about `spec` failing to load."""
    library = f"libonnxruntime_providers_{spec.short}"
    for line in lines:
        if library in line or f"onnxruntime_providers_{spec.short}." in line:
            match = _LIBRARY_ERROR.search(line)
            return match.group("reason") if match else line
    for line in lines:
        if spec.ort_name.replace("ExecutionProvider", "") in line and ("Failed" in line or "Error" in line):
            return line
    if spec.ort_name not in ort.get_available_providers():
        return _not_compiled_reason(spec)
    if default is None:
        return None
    return default or "onnxruntime did not enable it for this model"


def _reason_from_exception(exc: BaseException) -> str:
    text = _strip_ansi(str(exc))
    match = re.search(r"libonnxruntime_providers_\w+\.so with error: ([^\n]+)", text)
    if match:
        return match.group(1).strip()
    return _ort_detail(text.split("\n")[0].split(" void ")[-1])[:300]


def _ort_detail(line: str) -> str:
    """An onnxruntime error line without its ``[ONNXRuntimeError] : 1 : FAIL : `` prefix."""
    return re.sub(r"^.*?\[ONNXRuntimeError\] : \d+ : \w+ : ", "", line).strip()


def create_session(
    model: str | bytes,
    specs: Sequence[ProviderSpec],
    options: ort.SessionOptions,
    provider_options: Mapping[str, Mapping[str, Any]] | None = None,
    strict: bool = False,
) -> tuple[ort.InferenceSession, list[ProviderFallback]]:
    """Create a session on the first usable providers of `specs`, reporting each one that was dropped.

    `provider_options` maps a short name to its complete onnxruntime option dict (see
    `ort_provider_options`); a spec's table defaults fill in what it leaves out.
    """
    if any(s.short in _NVIDIA for s in specs):
        preload_nvidia_libraries()
    remaining = list(specs)
    fallbacks: list[ProviderFallback] = []
    origin = model if isinstance(model, str) else "<bytes>"
    while remaining:
        providers = [
            (s.ort_name, {**s.options, **(provider_options or {}).get(s.short, {})}) for s in remaining
        ]
        lines: list[str] = []
        try:
            with captured_native_stderr() as lines:
                session = ort.InferenceSession(model, options, providers=providers, enable_fallback=0)
        except Exception as exc:  # noqa: BLE001 - classified below; never swallowed
            if _GRAPH_CAPTURE_REFUSED in str(exc):
                # CUDA works; the model does not fit a graph: falling back to the CPU would hide that
                raise BadInputError(
                    f"model '{Path(origin).name}' cannot be captured as a CUDA graph: onnxruntime placed some of its "
                    "nodes on the CPU (usually shape computations of symbolic dimensions); fix each dimension's "
                    "size with --cuda-graph-dim NAME=SIZE, or drop --cuda-graph"
                ) from None
            failed = _provider_in_error(exc, remaining)
            if failed is None:
                raise BadModelError(_model_load_message(origin, exc)) from None
            reason = _reason_from_log(failed, lines, default=None) or _reason_from_exception(exc)
            fallbacks.append(ProviderFallback(failed.short, reason))
            remaining.remove(failed)
            continue
        used = set(session.get_providers())
        fallbacks.extend(
            ProviderFallback(s.short, _reason_from_log(s, lines) or "")
            for s in remaining
            if s.ort_name not in used
        )
        break
    else:
        raise ProviderUnavailableError(
            "none of the requested execution providers could be used: "
            + "; ".join(f"{f.provider}: {f.reason}" for f in fallbacks)
            + "; add cpu to the list or run `edge doctor`"
        )
    if strict and fallbacks:
        raise ProviderUnavailableError(
            "; ".join(f"execution provider '{f.provider}' is unavailable ({f.reason})" for f in fallbacks)
            + "; drop --strict to fall back, or run `edge doctor` for the fix"
        )
    first = short_name(session.get_providers()[0])
    fallbacks = [ProviderFallback(f.provider, f.reason, first) for f in fallbacks]
    for fallback in fallbacks:
        log.warning(fallback.message())
    return session, fallbacks


def _provider_in_error(exc: BaseException, specs: Sequence[ProviderSpec]) -> ProviderSpec | None:
    """The GPU provider an exception from session creation is about, if it is about one."""
    text = str(exc)
    for spec in specs:
        if spec.short == "cpu":
            continue
        if spec.ort_name in text or f"providers_{spec.short}" in text or spec.short.lower() in text.lower():
            return spec
    return None


def _model_load_message(origin: str, exc: BaseException) -> str:
    detail = _ort_detail(_strip_ansi(first_line(exc)))
    return f"model '{origin}' could not be loaded by onnxruntime ({detail}); check the file is a complete ONNX model or re-export it"
