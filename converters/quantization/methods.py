"""The quantization methods, one function per method in `METHODS`, and `quantize_with` that runs one of them
(`entry.quantize` is the entry point; `auto` lives in `auto.py`).

Every variant is produced in a staging folder inside the package, validated against fp32 on held-out inputs,
timed against fp32 in the same process, then renamed into place as ``model.<variant>.onnx`` and recorded in
``edge.json``; a failure leaves neither a file nor a manifest entry.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import onnx
from google.protobuf.message import DecodeError

from converters.accuracy import (
    HeldOutSet,
    HeldOutSets,
    Latency,
    compare_variant,
    latency_feeds,
    measure_latency,
)
from converters.quantization.calibration import CalibrationOptions, FeedReader, load_calibration
from toolkit.atomic import atomic_path, staging_directory
from toolkit.errors import BadInputError, BadModelError
from toolkit.host import current_host
from toolkit.inspect import model_size
from toolkit.manifest import FP32_VARIANT, Host, ModelPackage, Variant, tool_versions, variant_file_name
from toolkit.runner import Runner
from toolkit.tasks import Family, family_of, task_for
from toolkit.tasks.accuracy import AccuracyReport

__all__ = [
    "METHODS",
    "Candidate",
    "Method",
    "QuantizeOptions",
    "QuantizeResult",
    "Workspace",
    "quantize_with",
]

log = logging.getLogger(__name__)

Progress = Callable[[str], None]

QUANTIZED_OPS = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "MatMulInteger",
        "ConvInteger",
        "QLinearConv",
        "QLinearMatMul",
        "DynamicQuantizeMatMul",
        "MatMulNBits",
        "GatherBlockQuantized",
        "QAttention",
    }
)
# Ops kept in fp32 by the fp16 conversion on top of onnxruntime's default list: reductions and exponentials that
# overflow float16's 65504 range (decomposed LayerNorm's Pow/ReduceMean, Softmax's Exp).
FP16_OP_BLOCK_LIST = ("Pow", "ReduceMean", "ReduceSum", "ReduceL2", "Exp", "Log", "Range", "CumSum")
STATIC_OP_TYPES = ("MatMul", "Gemm", "Conv", "Gather")


@dataclass(frozen=True)
class QuantizeOptions:
    """Knobs shared by the methods; each method reads the ones it understands."""

    name: str | None = None
    per_channel: bool = True
    reduce_range: bool = False
    """Dynamic int8: 7-bit weights, so AVX2/AVX-512BW kernels without VNNI cannot saturate (see `toolkit.host`)."""
    exclude: tuple[str, ...] = ()
    blockwise: tuple[str, ...] | None = None
    """dynamic-int8: the nodes or op types made 8-bit blockwise weight-only; None: the task's default
    (`Task.int8_blockwise`: every MatMul of a generator), () none."""
    op_types: tuple[str, ...] | None = None
    calibration: CalibrationOptions = field(default_factory=CalibrationOptions)
    symmetric_activations: bool = False
    block_size: int | None = None
    """int4: None picks block size and accuracy level by measurement (`int4_search`)."""
    fp16_op_block_list: tuple[str, ...] = ()
    budget: float = 0.99
    max_size: float | None = None
    """`auto` only: the largest file it may keep, as a fraction of the fp32 file (0.3 = 30%)."""
    portable_only: bool = False
    """`auto` only: keep only candidates whose accuracy holds on every CPU (see `auto.py`)."""
    threads: int = 2
    latency_runs: int = 20
    held_out: Path | None = None
    """A .txt file of the user's own text to measure accuracy on (the int4 search's scores, the recorded accuracy,
    the budget check) instead of the built-in samples: for a model trained on another domain."""


@dataclass(frozen=True)
class Candidate:
    """One variant `auto` tried: what it was, how accurate, how fast, how big, and whether it met the budget."""

    name: str
    method: str
    settings: Mapping[str, Any]
    accuracy: AccuracyReport | None
    latency_ms: float | None
    speedup: float | None
    size_bytes: int
    meets_budget: bool
    error: str | None = None
    over_size_cap: bool = False
    portable: bool = False
    """No kernel it uses can saturate on CPUs without VNNI, so its accuracy holds on every host."""


@dataclass(frozen=True)
class QuantizeResult:
    """What `quantize` did: the package after the write, the variant (None when `auto` found none within budget),
    its accuracy, latency against fp32, size against fp32, the candidates `auto` tried, and notes for the user."""

    package: ModelPackage
    method: str
    variant: Variant | None
    accuracy: AccuracyReport | None
    latency: Latency | None
    size_ratio: float | None
    budget: float
    candidates: tuple[Candidate, ...] = ()
    notes: tuple[str, ...] = ()
    host: Host | None = None
    """Where the accuracy and latency were measured (int8 accuracy depends on the CPU)."""


@contextlib.contextmanager
def routed_ort_logging() -> Iterator[None]:
    """onnxruntime.quantization logs through the root logger; send that to our debug log instead of stderr."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level

    class _Forward(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            log.debug("onnxruntime: %s", record.getMessage())

    root.handlers = [_Forward()]
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.handlers = saved_handlers
        root.setLevel(saved_level)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


# a model whose weights fit one protobuf: its variants can be written as single files
SINGLE_FILE_LIMIT = 1_800_000_000


def load_source_model(path: Path) -> onnx.ModelProto:
    """The fp32 model, checked to be readable, under 2 GB (external data only below that) and not already
    quantized."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, OSError, RuntimeError) as exc:
        raise BadModelError(
            f"'{path}' is not a readable ONNX model ({_short(exc)}); re-create the package with `edge convert`"
        ) from None
    if not model.graph.node:
        raise BadModelError(f"'{path}' has an empty graph; re-create the package with `edge convert`")
    if model_size(path) > SINGLE_FILE_LIMIT:
        raise BadModelError(
            f"'{path}' with its external data is over {SINGLE_FILE_LIMIT / 1e9:.1f} GB; edge quantize writes "
            "single-file variants only, so quantize it with onnxruntime.quantization and use_external_data_format=True"
        )
    quantized = sorted({n.op_type for n in model.graph.node if n.op_type in QUANTIZED_OPS})
    if quantized:
        raise BadModelError(
            f"'{path}' is already quantized (it has {', '.join(quantized)} nodes); quantize the fp32 export: "
            "re-create it with `edge convert`"
        )
    return model


class Workspace:
    """The fp32 source and a staging folder; builds the pre-processed (shape-inferred, optimised) model once.
    `held_out`: the inputs accuracy is measured on (the built-in samples unless given), built once."""

    def __init__(
        self,
        package: ModelPackage,
        source: Path,
        folder: Path,
        say: Progress,
        held_out: HeldOutSets | None = None,
    ) -> None:
        self.package = package
        self.source = source
        self.folder = folder
        self.say = say
        self.held_out = held_out or HeldOutSets(package)
        self.model = load_source_model(source)
        self._preprocessed: Path | None = None
        self.preprocess_mode = "none"

    def preprocessed(self) -> Path:
        """Symbolic shape inference and ORT graph optimisation; falls back step by step on onnxruntime's known failures."""
        if self._preprocessed is not None:
            return self._preprocessed
        from onnxruntime.quantization import quant_pre_process

        out = self.folder / "preprocessed.onnx"
        attempts: tuple[tuple[str, dict[str, Any]], ...] = (
            ("symbolic shapes + optimisation", {"auto_merge": True}),
            ("onnx shapes + optimisation", {"skip_symbolic_shape": True}),
            ("onnx shapes only", {"skip_symbolic_shape": True, "skip_optimization": True}),
        )
        self.say("pre-processing: shape inference and graph optimisation")
        reasons = []
        for mode, kwargs in attempts:
            try:
                with routed_ort_logging():
                    quant_pre_process(str(self.source), str(out), **kwargs)
            except Exception as exc:  # noqa: BLE001 - onnxruntime raises bare Exception here; we try the next mode
                reasons.append(f"{mode}: {_short(exc)}")
                log.info("pre-processing with %s failed (%s); trying the next way", mode, _short(exc))
                continue
            self._preprocessed, self.preprocess_mode = out, mode
            return out
        raise BadModelError(
            f"onnxruntime cannot pre-process '{self.source}' for quantization ({'; '.join(reasons)}); "
            "re-export it with another --opset"
        )

    def node_names(self, patterns: Sequence[str], model: Path | None = None) -> list[str]:
        """Node names matching `patterns` (a glob on the node name, or an op type) in the pre-processed model."""
        if not patterns:
            return []
        graph = onnx.load(str(model or self.preprocessed()), load_external_data=False).graph
        names: list[str] = []
        for pattern in patterns:
            hits = [
                n.name for n in graph.node if n.op_type == pattern or fnmatch.fnmatchcase(n.name, pattern)
            ]
            if not hits:
                example = next((n.name for n in graph.node if n.op_type == "MatMul"), graph.node[0].name)
                raise BadInputError(
                    f"--exclude '{pattern}' matches no node name or op type in {self.source.name}; "
                    f"pass an op type (MatMul) or a node name glob (like '{example}')"
                )
            names.extend(h for h in hits if h not in names)
        return names


@dataclass(frozen=True)
class Method:
    """A quantization method: its default variant name, precision, and the function that writes the file.

    `build(workspace, options, out)` writes the quantized model to `out` and returns the settings to record.
    """

    name: str
    variant: str
    precision: str
    summary: str
    build: Callable[[Workspace, QuantizeOptions, Path], dict[str, Any]]


METHODS: dict[str, Method] = {}


def register(
    name: str, variant: str, precision: str, summary: str
) -> Callable[[Callable[..., dict[str, Any]]], Callable[..., dict[str, Any]]]:
    """Add a method to `METHODS` (decorator)."""

    def wrap(build: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
        METHODS[name] = Method(name, variant, precision, summary, build)
        return build

    return wrap


def _quantizer_failure(method: str, exc: BaseException) -> BadModelError:
    reason = _short(exc)
    hint = (
        "pass --exclude for the node it names"
        if "type" in reason.lower() or "shape" in reason.lower()
        else "try another --method"
    )
    return BadModelError(f"onnxruntime's {method} quantizer failed on this model ({reason}); {hint}")


@register("dynamic-int8", "int8", "int8", "int8 weights, activations quantized at run time (CPU)")
def dynamic_int8(ws: Workspace, options: QuantizeOptions, out: Path) -> dict[str, Any]:
    """Dynamic int8: symmetric int8 weights (per channel unless told otherwise), uint8 activations at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source = ws.preprocessed()
    exclude = ws.node_names(options.exclude)
    task = task_for(ws.package)
    op_types = options.op_types
    if options.blockwise is None and task.int8_blockwise:
        wanted, op_types = task.int8_blockwise, op_types or task.int8_dynamic_op_types
    else:
        wanted = options.blockwise or ()
    blockwise = [n for n in ws.node_names(wanted) if n not in exclude]
    ws.say(f"quantizing: dynamic int8, {'per-channel' if options.per_channel else 'per-tensor'}")
    try:
        with routed_ort_logging():
            if blockwise:
                source = _blockwise_int8(ws, source, blockwise)
            quantize_dynamic(
                str(source),
                str(out),
                op_types_to_quantize=list(op_types) if op_types else None,
                per_channel=options.per_channel,
                reduce_range=options.reduce_range,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=exclude,
                extra_options={"WeightSymmetric": True, "MatMulConstBOnly": True},
            )
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises bare Exception/RuntimeError; reported as one line
        raise _quantizer_failure("dynamic int8", exc) from None
    return {
        "per_channel": options.per_channel,
        "weight_type": "int7 (reduce_range)" if options.reduce_range else "int8",
        "weight_symmetric": True,
        "activation_type": "uint8 (dynamic)",
        "op_types": list(op_types) if op_types else "all supported (MatMul, Gemm, Gather, Conv, ...)",
        "excluded_nodes": exclude,
        "blockwise_int8_nodes": blockwise,
        "preprocess": ws.preprocess_mode,
    }


BLOCKWISE_BLOCK_SIZE = 64


def _blockwise_int8(ws: Workspace, source: Path, nodes: Sequence[str]) -> Path:
    """`nodes` (MatMuls) as 8-bit blockwise weight-only MatMulNBits, whose activations are quantized per block of
    64 at run time: far more accurate than per-tensor dynamic int8 on layers with outlier activations."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    model = onnx.load(str(source))
    keep = set(nodes)
    others = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in keep]
    quantizer = MatMulNBitsQuantizer(
        model,
        bits=8,
        block_size=BLOCKWISE_BLOCK_SIZE,
        is_symmetric=True,
        accuracy_level=4,
        nodes_to_exclude=others,
        op_types_to_quantize=("MatMul",),
    )
    quantizer.process()
    out = ws.folder / "blockwise.onnx"
    quantizer.model.save_model_to_file(str(out), False)
    return out


@register(
    "static-int8",
    "int8-static",
    "int8",
    "int8 weights and activations, QDQ format, calibrated (CPU, TensorRT)",
)
def static_int8(ws: Workspace, options: QuantizeOptions, out: Path) -> dict[str, Any]:
    """Static int8 in QDQ format: int8 symmetric weights, activation ranges from calibration inputs.

    Activations are uint8 asymmetric by default (the most accurate on CPU); `symmetric_activations` gives int8
    symmetric activations, which TensorRT requires.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    calibration = load_calibration(ws.package, options.calibration)
    source = ws.preprocessed()
    exclude = ws.node_names(options.exclude)
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    op_types = list(options.op_types or STATIC_OP_TYPES)
    ws.say(
        f"calibrating on {len(calibration.feeds)} samples ({calibration.source}, {options.calibration.method})"
    )
    try:
        with routed_ort_logging():
            quantize_static(
                str(source),
                str(out),
                FeedReader(calibration.feeds),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=op_types,
                per_channel=options.per_channel,
                reduce_range=options.reduce_range,
                activation_type=QuantType.QInt8 if options.symmetric_activations else QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=exclude,
                calibrate_method=methods[options.calibration.method],
                calibration_providers=["CPUExecutionProvider"],
                extra_options={"ActivationSymmetric": options.symmetric_activations, "WeightSymmetric": True},
            )
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises bare Exception/RuntimeError; reported as one line
        raise _quantizer_failure("static int8", exc) from None
    return {
        "format": "QDQ",
        "per_channel": options.per_channel,
        "weight_type": "int7 (reduce_range)" if options.reduce_range else "int8",
        "activation_type": "int8 symmetric" if options.symmetric_activations else "uint8 asymmetric",
        "op_types": op_types,
        "excluded_nodes": exclude,
        "calibration_method": options.calibration.method,
        "calibration_source": calibration.source,
        "samples": len(calibration.feeds),
        "preprocess": ws.preprocess_mode,
        "_calibration_texts": list(calibration.texts),
    }


@register("fp16", "fp16", "fp16", "float16 weights and compute, fp32 inputs/outputs (GPU format)")
def fp16(ws: Workspace, options: QuantizeOptions, out: Path) -> dict[str, Any]:
    """float16 weights and compute with fp32 inputs and outputs, but for the state the task keeps in float16 (a
    generator's in-place KV cache); overflow-prone ops stay fp32."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    block = sorted({*DEFAULT_OP_BLOCK_LIST, *FP16_OP_BLOCK_LIST, *options.fp16_op_block_list})
    nodes = ws.node_names(options.exclude, ws.source)
    state = task_for(ws.package).float16_state()
    model = onnx.load(str(ws.source))
    keep: bool | list[str] = True
    if state:
        floats = [
            t.name
            for t in (*model.graph.input, *model.graph.output)
            if t.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        ]
        keep = [name for name in floats if name not in state]
    ws.say("converting to float16" + (f", {len(state)} state tensors in float16" if state else ""))
    try:
        with routed_ort_logging():
            converted = convert_float_to_float16(
                model, keep_io_types=keep, op_block_list=block, node_block_list=nodes
            )
    except Exception as exc:  # noqa: BLE001 - the converter raises assorted errors; reported as one line
        raise _quantizer_failure("fp16", exc) from None
    onnx.save(converted, str(out))
    return {
        "keep_io_types": keep,
        **({"float16_state": sorted(state)} if state else {}),
        "op_block_list": [op for op in block if op in {n.op_type for n in ws.model.graph.node}] or "default",
        "excluded_nodes": nodes,
    }


DEFAULT_INT4_BLOCK = 32


def _int4_file(ws: Workspace, options: QuantizeOptions, block: int, level: int, out: Path) -> None:
    """Every MatMul with constant weights (the LM head included) as MatMulNBits, 4-bit symmetric blocks."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    ws.say(f"quantizing: int4 weight-only, block size {block}, accuracy level {level}")
    try:
        with routed_ort_logging():
            quantizer = MatMulNBitsQuantizer(
                onnx.load(str(ws.source)),
                bits=4,
                block_size=block,
                is_symmetric=True,
                accuracy_level=level,
                nodes_to_exclude=ws.node_names(options.exclude, ws.source),
                op_types_to_quantize=("MatMul",),
            )
            quantizer.process()
            quantizer.model.save_model_to_file(str(out), False)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises assorted errors; reported as one line
        raise _quantizer_failure("int4", exc) from None


@register("int4", "int4", "int4", "4-bit weight-only MatMul (MatMulNBits), for transformers")
def int4(ws: Workspace, options: QuantizeOptions, out: Path) -> dict[str, Any]:
    """Weight-only 4-bit MatMul (MatMulNBits, symmetric, blockwise); for a generator with `options.block_size`
    None, block size and accuracy level (4: int8 compute, 1: fp32) chosen by measurement (`int4_search`), else
    that block (default `DEFAULT_INT4_BLOCK`) at level 4."""
    search: dict[str, Any] = {}
    # the search scores whole-model outputs: decoder-only generators; other models (an encoder-decoder's
    # several files) keep block 32 unless told otherwise
    if options.block_size is None and family_of(ws.package) is not Family.GENERATOR:
        options = replace(options, block_size=DEFAULT_INT4_BLOCK)
    if options.block_size is None:
        from converters.quantization.int4_search import search_int4

        choice = search_int4(
            ws.package,
            ws.source,
            ws.folder,
            lambda block, level, path: _int4_file(ws, options, block, level, path),
            ws.held_out.excluding().feeds,
            options.budget,
            options.threads,
            options.latency_runs,
        )
        block, level = choice.block_size, choice.accuracy_level
        choice.file.replace(out)
        ws.say(f"int4: picked block size {block}, accuracy level {level} by measurement")
        search = {
            "chosen_by": "measurement (fastest within the budget)",
            "candidates": list(choice.candidates),
        }
    else:
        block, level = options.block_size, 4
        if block < 16 or block & (block - 1):
            raise BadInputError(f"--block-size must be a power of two, at least 16; got {block}")
        _int4_file(ws, options, block, level, out)
    count = sum(
        1 for n in onnx.load(str(out), load_external_data=False).graph.node if n.op_type == "MatMulNBits"
    )
    if count == 0:
        raise BadModelError(
            f"'{ws.source.name}' has no MatMul with constant weights for int4; use --method dynamic-int8"
        )
    return {
        "bits": 4,
        "block_size": block,
        "symmetric": True,
        "accuracy_level": level,
        "quantized_matmuls": count,
        "excluded_nodes": ws.node_names(options.exclude, ws.source),
        **search,
    }


def check_budget(budget: float) -> None:
    """A budget is a similarity in (0, 1]."""
    if not (0.0 < budget <= 1.0):
        raise BadInputError(
            f"--budget must be in (0, 1] (a cosine or top-1 agreement such as 0.99), got {budget}"
        )


def open_package(package: str | Path | ModelPackage) -> ModelPackage:
    """A `ModelPackage` from a path or itself."""
    return package if isinstance(package, ModelPackage) else ModelPackage.open(package)


def install_variant(package: ModelPackage, staged: Path, variant: Variant) -> ModelPackage:
    """Rename the staged file into place and record `variant`; if the manifest cannot be written, remove the file.
    When the package's fp32 model keeps its weights in external data, the variant does too (``<file>.data``):
    onnxruntime then maps them from the file, where a single file's weights stay resident in its parsed
    protobuf beside the prepacked copies (a generate package's peak RSS)."""
    target = package.asset(variant.file, f"variant '{variant.name}' file")
    data = target.with_name(target.name + ".data")
    if _weights_apart(package.model_path(FP32_VARIANT)):
        staged_data = staged.with_name(data.name)
        onnx.save_model(onnx.load(str(staged)), str(staged), save_as_external_data=True, location=data.name)
        variant = replace(variant, size_bytes=staged.stat().st_size + staged_data.stat().st_size)
        with atomic_path(data) as tmp:
            os.replace(staged_data, tmp)
    else:
        data.unlink(missing_ok=True)  # a weights file left by an earlier variant of this name
    with atomic_path(target) as tmp:
        os.replace(staged, tmp)
    try:
        return package.save(package.manifest.with_variant(variant))
    except BaseException:
        target.unlink(missing_ok=True)
        data.unlink(missing_ok=True)
        raise


def _weights_apart(model: Path) -> bool:
    """Whether `model` keeps its weights in an external data file."""
    graph = onnx.load(str(model), load_external_data=False).graph
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.initializer)


def _measure(
    ws: Workspace, staged: Path, name: str, options: QuantizeOptions, held_out: HeldOutSet
) -> tuple[AccuracyReport, Latency]:
    ws.say(f"validating against fp32 on {held_out.source}")
    try:
        runner = Runner(staged, "cpu", threads=options.threads)
    except BadModelError as exc:
        raise BadModelError(f"the {name} variant does not load in onnxruntime on CPU ({exc})") from None
    report = compare_variant(ws.package, runner, held_out.feeds)
    ws.say("timing against fp32")
    latency = measure_latency(
        {FP32_VARIANT: ws.source, name: runner},
        latency_feeds(ws.package),
        runs=options.latency_runs,
        threads=options.threads,
    )
    return report, latency


def quantize_with(
    pkg: ModelPackage, method: str, options: QuantizeOptions, say: Progress, held_out: HeldOutSets
) -> QuantizeResult:
    """Quantize the single-graph package's fp32 model with one of `METHODS`, validate and time it against fp32 on
    `held_out` (`options.held_out`'s text or the built-in samples), and record the variant."""
    source = pkg.model_path(FP32_VARIANT)
    spec = METHODS[method]
    name = options.name or spec.variant
    if name == FP32_VARIANT or not name.replace("-", "").replace("_", "").isalnum():
        raise BadInputError(
            f"variant name '{name}' is not allowed; use letters, digits, '-' or '_' and not 'fp32'"
        )
    target = pkg.path / variant_file_name(name)
    with staging_directory(target) as folder:
        ws = Workspace(pkg, source, folder, say, held_out)
        staged = folder / "variant.onnx"
        settings = spec.build(ws, options, staged)
        measured_on = held_out.excluding(settings.pop("_calibration_texts", []))
        report, latency = _measure(ws, staged, name, options, measured_on)
        settings["latency_ms"] = {**latency.median_ms, "threads": latency.threads, "inputs": latency.shape}
        variant = Variant(
            name=name,
            file=target.name,
            precision=spec.precision,
            method=method,
            size_bytes=staged.stat().st_size,
            settings=settings,
            validation=report.to_validation(options.budget, held_out=measured_on.source),
            tool_versions=tool_versions(),
        )
        pkg = install_variant(pkg, staged, variant)
        variant = pkg.manifest.variant(name)  # its size counts external data it was given
    notes: tuple[str, ...] = ()
    if method == "fp16":
        notes = (
            "fp16 is a GPU format: onnxruntime's CPU provider has few float16 kernels, so on CPU it runs slower than fp32",
        )
    return QuantizeResult(
        package=pkg,
        method=method,
        variant=variant,
        accuracy=report,
        latency=latency,
        size_ratio=variant.size_bytes / model_size(source),
        budget=options.budget,
        notes=notes,
        host=current_host("cpu"),
    )


def with_options(options: QuantizeOptions, **changes: Any) -> QuantizeOptions:
    """`options` with `changes` applied."""
    return replace(options, **changes)
