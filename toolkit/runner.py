"""`Runner`: one onnxruntime session with checked feeds, honest provider reporting and GPU options.

What ran where is never a guess: `runner.providers` is what onnxruntime uses, `runner.fallbacks` says
why a requested provider was dropped, and `runner.node_placement()` counts the nodes each provider got.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import functools
import json
import logging
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from toolkit.checks import feed_array, feed_mapping, output_names
from toolkit.dtypes import BY_NUMPY, BY_ORT
from toolkit.errors import BadInputError, BadModelError, first_line
from toolkit.host import current_host, unvalidated_host_warning
from toolkit.manifest import FP32_VARIANT, MANIFEST_NAME, ModelPackage, TensorSpec, TextPreprocessing
from toolkit.providers import (
    PROVIDERS,
    CudaOptions,
    ProviderConfig,
    ProviderFallback,
    ProviderSpec,
    TensorRTOptions,
    TensorRTProfile,
    create_session,
    derive_tensorrt_profile,
    ort_provider_options,
    probe_provider,
    provider_names,
    resolve_providers,
    short_name,
)

__all__ = [
    "GRAPH_OPT_LEVELS",
    "LOW_MEMORY",
    "TRT_CACHE_DIR",
    "Runner",
    "Startup",
    "apply_low_memory",
    "build_session_options",
    "numpy_dtype",
    "placement_from_profile",
    "resolve_model_path",
]

TRT_CACHE_DIR = ".trt_cache"
_RECORD_PLACEMENT = "session.record_ep_graph_assignment_info"
_CONTROL_FLOW = ("If", "Loop", "Scan")

log = logging.getLogger(__name__)


# --opt-level names -> onnxruntime's graph optimisation levels
GRAPH_OPT_LEVELS = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def build_session_options(
    threads: int | None = None,
    *,
    graph_optimization: str | None = None,
    spinning: bool = True,
    base: ort.SessionOptions | None = None,
) -> ort.SessionOptions:
    """onnxruntime session options, built in this one place: `threads` intra-op threads (one inter-op),
    a graph optimisation level by name, thread spinning between runs, and quiet run-time logs."""
    options = base or ort.SessionOptions()
    if threads is not None:
        if threads < 1:
            raise BadInputError(f"threads must be at least 1, got {threads}")
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if graph_optimization is not None:
        if graph_optimization not in GRAPH_OPT_LEVELS:
            raise BadInputError(
                f"unknown graph optimisation level '{graph_optimization}'; use one of: {', '.join(GRAPH_OPT_LEVELS)}"
            )
        options.graph_optimization_level = GRAPH_OPT_LEVELS[graph_optimization]
    if not spinning:
        # intra-op threads spin between runs by default; a server's event loop needs those cores
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # Warnings onnxruntime logs at session creation are captured by create_session; keep run-time quiet.
    options.log_severity_level = 3
    return options


LOW_MEMORY: dict[str, str] = {
    # pre-packing copies each MatMul/Conv weight into the kernel's layout; the copy is kept beside the original
    "session.disable_prepacking": "1",
    # an ORT-format file's initializers are used in place in the buffer it was read into, not copied out of it
    "session.use_ort_model_bytes_directly": "1",
    "session.use_ort_model_bytes_for_initializers": "1",
}
"""Session config entries of the low-memory profile (besides no CPU arena and no memory-pattern planner)."""


_MALLOC_MMAP_THRESHOLD = -3  # glibc's mallopt parameter M_MMAP_THRESHOLD
_MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's own starting value


@functools.cache
def _fix_mmap_threshold() -> bool:
    """Pin glibc's mmap threshold (process-wide) so freed large buffers go back to the system.

    glibc raises the threshold to the size of each mmapped block it frees; after that, onnxruntime's activations
    (no arena) come from the heap and stay there once freed, and MiniLM fp32's peak RSS grew from 184 to 291 MB
    with the arena off. Returns whether it could (not on musl, macOS or Windows)."""
    if platform.system() != "Linux":
        return False
    try:
        return bool(ctypes.CDLL(None).mallopt(_MALLOC_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):
        return False


def apply_low_memory(options: ort.SessionOptions) -> None:
    """The low-memory profile on `options`: buffers are freed as soon as they are dead instead of kept in onnxruntime's
    growing CPU arena, no memory-pattern planner (it pre-allocates one block per input shape seen), no pre-packed
    weight copies, ORT-format initializers used in place; on glibc, a pinned mmap threshold (`_fix_mmap_threshold`)."""
    options.enable_cpu_mem_arena = False
    options.enable_mem_pattern = False
    for key, value in LOW_MEMORY.items():
        options.add_session_config_entry(key, value)
    if not _fix_mmap_threshold():
        log.debug("could not pin the malloc mmap threshold here; freed buffers may stay in the heap")


def numpy_dtype(ort_type: str) -> str:
    """``tensor(int64)`` -> ``int64``."""
    element = BY_ORT.get(ort_type)
    if element is None:
        raise BadModelError(f"tensor type {ort_type} is not supported by edge-toolkit's runner")
    return element.numpy


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


def _package_for(model: str | Path, path: Path) -> ModelPackage | None:
    """The package `model` is, or that the ONNX file `path` lives in, if any."""
    root = Path(model) if Path(model).is_dir() else path.parent
    if not (root / MANIFEST_NAME).is_file():
        return None
    try:
        return ModelPackage.open(root)
    except (BadInputError, BadModelError):
        return None


def _ops(path: Path) -> frozenset[str]:
    from toolkit.inspect import op_types  # onnx is imported only when a graph is read

    return op_types(path)


def _graph_inputs(path: Path) -> tuple[TensorSpec, ...]:
    from toolkit.inspect import graph_inputs

    return graph_inputs(path)


def _check_graph_dims(path: Path, inputs: Sequence[TensorSpec], sizes: Mapping[str, int]) -> None:
    """A CUDA graph needs every symbolic input dimension sized up front (see CudaOptions.graph_dims)."""
    unnamed = [spec.name for spec in inputs if "?" in spec.shape]
    if unnamed:
        raise BadInputError(
            f"CUDA graphs need fixed shapes and input {unnamed[0]} of model '{path.name}' has an unnamed dynamic "
            "dimension that cannot be sized; re-export it with named or fixed dimensions, or drop --cuda-graph"
        )
    symbolic = list(dict.fromkeys(d for spec in inputs for d in spec.shape if isinstance(d, str)))
    unknown = sorted(set(sizes) - set(symbolic))
    if unknown:
        has = f"its symbolic dimensions are {', '.join(symbolic)}" if symbolic else "it has none"
        raise BadInputError(
            f"--cuda-graph-dim {', '.join(unknown)}: model '{path.name}' has no such symbolic dimension ({has})"
        )
    missing = [d for d in symbolic if d not in sizes]
    if missing:
        raise BadInputError(
            f"CUDA graphs need fixed shapes and model '{path.name}' leaves {', '.join(missing)} open: give each the "
            f"size you will run, e.g. --cuda-graph-dim {missing[0]}=N (CudaOptions(graph_dims=...))"
        )


@dataclass(frozen=True)
class Startup:
    """How the session became ready: creation time, first-run time, and the TensorRT engine cache's part."""

    session_s: float
    first_run_s: float | None = None
    engine_cache: str | None = None  # "built", "reused", or None when TensorRT did not run
    cache_dir: Path | None = None


def placement_from_profile(
    path: Path,
    providers: Sequence[tuple[str, Mapping[str, Any]]],
    feeds: Mapping[str, np.ndarray],
    threads: int | None = None,
) -> dict[str, int]:
    """Nodes per provider from one profiled run (for onnxruntime builds without graph assignment info)."""
    import tempfile

    from toolkit.providers import captured_native_stderr

    with tempfile.TemporaryDirectory(prefix="edge-placement-") as folder:
        options = build_session_options(threads)
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(folder) / "placement")
        with captured_native_stderr():
            session = ort.InferenceSession(str(path), options, providers=list(providers))
            session.run(None, dict(feeds))
            profile = Path(session.end_profiling())
        events = json.loads(profile.read_text(encoding="utf-8"))
        profile.unlink(missing_ok=True)
    nodes: dict[str, str] = {}
    for event in events:
        name = event.get("name", "")
        provider = event.get("args", {}).get("provider")
        if event.get("cat") == "Node" and provider and name.endswith("_kernel_time"):
            nodes[name.removesuffix("_kernel_time")] = short_name(provider)
    return dict(collections.Counter(nodes.values()).most_common())


class Runner:
    """An onnxruntime session over one ONNX file (a path, a package directory or an opened `ModelPackage`
    with `variant`), with providers tried in order and feeds checked.

    GPU options travel as `CudaOptions` / `TensorRTOptions` (or one `ProviderConfig`); `io_binding=True`
    keeps inputs and outputs on the device between runs (required by, and implied by, CUDA graphs).
    """

    def __init__(
        self,
        model: str | Path | ModelPackage,
        providers: str | Sequence[str] | None = None,
        *,
        variant: str = FP32_VARIANT,
        threads: int | None = None,
        strict: bool = False,
        provider_options: Mapping[str, Mapping[str, Any]] | None = None,
        session_options: ort.SessionOptions | None = None,
        graph_optimization: str | None = None,
        spinning: bool = True,
        config: ProviderConfig | None = None,
        cuda: CudaOptions | None = None,
        tensorrt: TensorRTOptions | None = None,
        io_binding: bool | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        package: ModelPackage | None
        if isinstance(model, ModelPackage):  # opened by the caller: its manifest is not read again
            self.path, package = model.model_path(variant), model
        else:
            self.path = resolve_model_path(model, variant)
            package = _package_for(model, self.path)
        base = config or ProviderConfig()
        names = provider_names(providers if providers is not None or config is None else base.providers)
        requested = resolve_providers(names)
        self.config = replace(
            base,
            providers=tuple(s.short for s in requested),
            strict=strict or base.strict,
            cuda=cuda or base.cuda,
            tensorrt=tensorrt or base.tensorrt,
            io_binding=base.io_binding if io_binding is None else io_binding,
        )
        self.config = self._check_cuda_graph(requested, io_binding)
        say = progress or log.info
        options = build_session_options(
            threads, graph_optimization=graph_optimization, spinning=spinning, base=session_options
        )
        if self.config.low_memory:
            apply_low_memory(options)
        for name, size in self.config.cuda.graph_dims.items():
            options.add_free_dimension_override_by_name(name, size)
        self._threads = threads
        self._placement_recorded = hasattr(ort.InferenceSession, "get_provider_graph_assignment_info")
        if self._placement_recorded:
            options.add_session_config_entry(_RECORD_PLACEMENT, "1")
        self.requested: tuple[str, ...] = self.config.providers
        cache_dir, profile, engines_before = self._prepare_tensorrt(requested, package, say)
        ort_options = {
            s.short: ort_provider_options(
                s, self.config, cache_dir, profile, (provider_options or {}).get(s.short)
            )
            for s in requested
        }
        self._ort_providers = [(s.ort_name, {**s.options, **ort_options[s.short]}) for s in requested]
        started = time.perf_counter()
        self.session, fallbacks = create_session(
            str(self.path), requested, options, ort_options, self.config.strict
        )
        session_s = time.perf_counter() - started
        self.fallbacks: tuple[ProviderFallback, ...] = tuple(fallbacks)
        self.inputs: tuple[TensorSpec, ...] = tuple(_spec(i) for i in self.session.get_inputs())
        self.outputs: tuple[TensorSpec, ...] = tuple(_spec(o) for o in self.session.get_outputs())
        self._inputs_by_name = {spec.name: spec for spec in self.inputs}
        self._engines_before = engines_before
        self._cache_dir = cache_dir
        if cache_dir is not None and "tensorrt" not in self.providers:
            with contextlib.suppress(OSError):
                cache_dir.rmdir()  # only when empty: TensorRT did not run, leave no litter
        self.startup = Startup(
            session_s, None, self._engine_cache_state(), cache_dir if self._uses_trt else None
        )
        if package is not None:
            warning = unvalidated_host_warning(
                package, self.path.name, self.providers[0], current_host(self.providers[0])
            )
            if warning:
                log.warning(warning)
        self._placement: dict[str, int] | None = None
        self._run_options = ort.RunOptions()
        self._run_options.log_severity_level = 4  # run-time errors reach the caller as BadInputError, once
        self._binding: Any = None
        self._bound_inputs: dict[str, Any] = {}
        self._bound_outputs: tuple[str, ...] = ()
        spec = PROVIDERS[self.providers[0]] if self.providers[0] in PROVIDERS else PROVIDERS["cpu"]
        self._device = spec.device
        self._device_id = (
            self.config.tensorrt.device_id if spec.short == "tensorrt" else self.config.cuda.device_id
        )

    # -- construction helpers ------------------------------------------------------------------

    def _check_cuda_graph(self, requested: Sequence[ProviderSpec], io_binding: bool | None) -> ProviderConfig:
        """CUDA graphs' documented restrictions, checked before any session exists."""
        config = self.config
        if not config.cuda.cuda_graph:
            return config
        if not any(s.short == "cuda" for s in requested):
            raise BadInputError(
                "CUDA graphs need the cuda provider; add cuda to --providers or drop --cuda-graph"
            )
        if io_binding is False:
            raise BadInputError("CUDA graphs need IO binding (fixed device buffers); drop io_binding=False")
        control = sorted(_ops(self.path) & set(_CONTROL_FLOW))
        if control:
            raise BadInputError(
                f"model '{self.path.name}' has control-flow operators ({', '.join(control)}) that CUDA graphs "
                "cannot capture; drop --cuda-graph"
            )
        _check_graph_dims(self.path, _graph_inputs(self.path), config.cuda.graph_dims)
        return replace(config, io_binding=True)

    @property
    def _uses_trt(self) -> bool:
        return "tensorrt" in self.providers

    def _prepare_tensorrt(
        self, requested: Sequence[ProviderSpec], package: ModelPackage | None, say: Callable[[str], None]
    ) -> tuple[Path | None, TensorRTProfile | None, frozenset[str]]:
        """Cache folder, optimisation profile and int8 check for TensorRT; nothing when it is not requested."""
        if not any(s.short == "tensorrt" for s in requested):
            return None, None, frozenset()
        trt = self.config.tensorrt
        if trt.int8 and not {"QuantizeLinear", "DequantizeLinear"} & _ops(self.path):
            raise BadInputError(
                f"TensorRT int8 needs a QDQ model and '{self.path.name}' has no QuantizeLinear/DequantizeLinear "
                "nodes; create one with `edge quantize` (static int8, QDQ) or drop --trt-int8"
            )
        cache_dir = Path(trt.cache_dir) if trt.cache_dir else self.path.parent / TRT_CACHE_DIR
        profile = trt.profile
        if profile is None:
            if package is not None:
                inputs = package.manifest.inputs
                text = package.manifest.section(TextPreprocessing)
                max_length = text.max_length if text is not None else None
            else:
                inputs, max_length = _graph_inputs(self.path), None
            profile, unresolved = derive_tensorrt_profile(inputs, trt.dims, max_length)
            if unresolved:
                log.warning(
                    "TensorRT: no size range for dimension %s; the engine is built for the first input shapes "
                    "and rebuilt when they change; pass --trt-dim %s=MIN:OPT:MAX",
                    ", ".join(unresolved),
                    unresolved[0],
                )
        if probe_provider("tensorrt") is not None:
            return cache_dir, profile, frozenset()  # it will fall back; create_session reports why
        if trt.engine_cache or trt.timing_cache:
            cache_dir.mkdir(parents=True, exist_ok=True)
        engines = frozenset(p.name for p in cache_dir.glob("*.engine")) if cache_dir.is_dir() else frozenset()
        if trt.engine_cache and engines:
            say(f"TensorRT: loading the cached engine for {self.path.name} from {cache_dir}")
        else:
            say(
                f"TensorRT: building the engine for {self.path.name} (first run only; "
                f"can take minutes; cached in {cache_dir})"
            )
        return cache_dir, profile, engines

    def _engine_cache_state(self) -> str | None:
        if not self._uses_trt or self._cache_dir is None or not self.config.tensorrt.engine_cache:
            return None
        now = {p.name for p in self._cache_dir.glob("*.engine")} if self._cache_dir.is_dir() else set()
        if now - self._engines_before:
            return "built"
        return "reused" if now else None

    # -- reporting --------------------------------------------------------------------------------

    @property
    def threads(self) -> int | None:
        """The intra-op thread count asked for (None: onnxruntime's default)."""
        return self._threads

    @property
    def providers(self) -> tuple[str, ...]:
        """The providers onnxruntime actually uses for this session, by short name, in priority order."""
        return tuple(short_name(p) for p in self.session.get_providers())

    @property
    def device(self) -> tuple[str, int]:
        """Where IO-bound tensors of this session live: ("cpu", 0) or ("cuda", device id)."""
        return self._device, self._device_id

    def node_placement(self, feeds: Mapping[str, Any] | None = None) -> dict[str, int]:
        """Nodes per provider (short names, most first), after onnxruntime's graph optimisations; cached.

        Read from onnxruntime's graph assignment info where the installed build records it, otherwise
        from one profiled run on `feeds` (default: `sample_feeds()`).
        """
        if self._placement is None:
            if self._placement_recorded:
                counts: collections.Counter[str] = collections.Counter()
                for subgraph in self.session.get_provider_graph_assignment_info():
                    counts[short_name(subgraph.ep_name)] += len(subgraph.get_nodes())
                self._placement = dict(counts.most_common())
            else:
                arrays = self.check_feeds(feeds) if feeds is not None else self.sample_feeds()
                self._placement = placement_from_profile(
                    self.path, self._ort_providers, arrays, self._threads
                )
        return dict(self._placement)

    def sample_feeds(self, batch: int = 1, sequence: int = 8) -> dict[str, np.ndarray]:
        """Zero-filled feeds of the right dtypes; batch-like dims get `batch`, other dynamic dims `sequence`."""
        feeds = {}
        for spec in self.inputs:
            shape = [
                d if isinstance(d, int) and d > 0 else (batch if axis == 0 else sequence)
                for axis, d in enumerate(spec.shape)
            ]
            dtype = object if spec.dtype == "str" else spec.dtype
            feeds[spec.name] = np.zeros(shape, dtype=dtype)
        return feeds

    # -- running --------------------------------------------------------------------------------

    def check_feeds(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Convert feeds to arrays and check names, dtypes, ranks and fixed dims; errors name the input."""
        feeds = feed_mapping(feeds)
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
            array = feed_array(name, value)
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
                    fixed = (
                        "; --cuda-graph-dim fixed it: a CUDA graph runs one shape"
                        if self.config.cuda.graph_dims
                        else ""
                    )
                    raise BadInputError(
                        f"input '{name}': expected {spec.describe()}, got {got} (axis {axis} must be {want}{fixed})"
                    )
            arrays[name] = array
        return arrays

    def _output_names(self, outputs: str | Sequence[str] | None) -> list[str]:
        names = output_names(outputs) or [o.name for o in self.outputs]
        unknown = [n for n in names if n not in {o.name for o in self.outputs}]
        if unknown:
            raise BadInputError(
                f"unknown output {', '.join(repr(n) for n in unknown)}; "
                f"this model gives {', '.join(repr(o.name) for o in self.outputs)}"
            )
        return names

    def run(
        self, feeds: Mapping[str, Any], outputs: str | Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Run the model on checked feeds; returns every (or the named) output by name, as numpy arrays."""
        arrays = self.check_feeds(feeds)
        names = self._output_names(outputs)
        if self.config.io_binding:
            binding = self._timed(lambda: self._run_bound(arrays, names), arrays)
            return dict(zip(names, binding.copy_outputs_to_cpu(), strict=True))
        results = self._timed(lambda: self.session.run(names, arrays, self._run_options), arrays)
        return dict(zip(names, results, strict=True))

    def run_on_device(
        self, feeds: Mapping[str, Any], outputs: str | Sequence[str] | None = None
    ) -> dict[str, ort.OrtValue]:
        """Run with IO binding and leave the outputs where they were computed (OrtValues on the GPU)."""
        if not self.config.io_binding:
            raise BadInputError("run_on_device needs IO binding; create the Runner with io_binding=True")
        arrays = self.check_feeds(feeds)
        names = self._output_names(outputs)
        binding = self._timed(lambda: self._run_bound(arrays, names), arrays)
        return dict(zip(names, binding.get_outputs(), strict=True))

    def _timed(self, call: Callable[[], Any], arrays: Mapping[str, np.ndarray]) -> Any:
        first = self.startup.first_run_s is None
        started = time.perf_counter()
        try:
            result = call()
        except (
            ort.capi.onnxruntime_pybind11_state.Fail,
            ort.capi.onnxruntime_pybind11_state.InvalidArgument,
        ) as exc:
            detail = first_line(exc)
            shapes = ", ".join(f"{n} {a.dtype} {list(a.shape)}" for n, a in arrays.items())
            raise BadInputError(
                f"onnxruntime could not run '{self.path.name}' on inputs {shapes}: {detail}"
            ) from None
        if first:
            # With dynamic shapes and no explicit profile, TensorRT builds its engine on the first run.
            self.startup = replace(
                self.startup,
                first_run_s=time.perf_counter() - started,
                engine_cache=self._engine_cache_state(),
            )
        return result

    def _run_bound(self, arrays: Mapping[str, np.ndarray], names: Sequence[str]) -> Any:
        """Bind inputs (reusing device buffers while shapes hold) and outputs on the device, then run."""
        if self._binding is None:
            self._binding = self.session.io_binding()
        binding = self._binding
        graph = self.config.cuda.cuda_graph and self._device == "cuda"
        rebound = False
        for name, array in arrays.items():
            current = self._bound_inputs.get(name)
            if (
                current is not None
                and current.shape() == list(array.shape)
                and current.data_type() == _ort_type(array)
            ):
                current.update_inplace(np.ascontiguousarray(array))
                continue
            # A copy on CPU too: update_inplace writes into the buffer, which must not be the caller's array.
            value = ort.OrtValue.ortvalue_from_numpy(
                np.array(array, copy=True), self._device, self._device_id
            )
            binding.bind_ortvalue_input(name, value)
            self._bound_inputs[name] = value
            rebound = True
        if rebound or tuple(names) != self._bound_outputs:
            # Outputs onnxruntime allocated for the last shapes stay bound; rebind so new shapes get new buffers.
            binding.clear_binding_outputs()
            for name in names:
                if graph:
                    spec = next(o for o in self.outputs if o.name == name)
                    value = ort.OrtValue.ortvalue_from_shape_and_type(
                        self._output_shape(spec, arrays), np.dtype(spec.dtype), self._device, self._device_id
                    )
                    binding.bind_ortvalue_output(name, value)
                else:
                    binding.bind_output(name, self._device, self._device_id)
            self._bound_outputs = tuple(names)
        self.session.run_with_iobinding(binding, self._run_options)
        return binding

    def _output_shape(self, spec: TensorSpec, arrays: Mapping[str, np.ndarray]) -> list[int]:
        """An output's shape from the inputs' sizes for its symbolic dims (CUDA graphs preallocate outputs)."""
        sizes: dict[str, int] = {}
        for tensor in self.inputs:
            for dim, size in zip(tensor.shape, arrays[tensor.name].shape, strict=True):
                if isinstance(dim, str):
                    sizes[dim] = size
        shape = []
        for dim in spec.shape:
            if isinstance(dim, int) and dim > 0:
                shape.append(dim)
            elif isinstance(dim, str) and dim in sizes:
                shape.append(sizes[dim])
            else:
                raise BadInputError(
                    f"output '{spec.name}' has dimension {dim!r} that no input determines, so CUDA graphs cannot "
                    "preallocate it; drop --cuda-graph for this model"
                )
        return shape

    def close(self) -> None:
        """Release the onnxruntime session (and any I/O binding); the runner cannot run afterwards."""
        self._binding = None
        self._bound_inputs = {}
        self.session = _ClosedSession(self.path)

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Runner({str(self.path)!r}, providers={self.providers})"


class _ClosedSession:
    """What a closed runner holds instead of its session: any use is a clear error."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def __getattr__(self, name: str) -> Any:
        raise BadInputError(f"the runner for '{self._path}' is closed; create a new Runner to run it again")


def _ort_type(array: np.ndarray) -> str:
    element = BY_NUMPY.get(array.dtype.name)
    return element.ort if element is not None else f"tensor({array.dtype.name})"
