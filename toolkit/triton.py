"""`export_triton_repository`: a Triton Inference Server model repository from a model package.

Layout written (one Triton model per exported variant)::

    REPO/<name>/config.pbtxt              fp32: platform onnxruntime_onnx, I/O, batching, instances
    REPO/<name>/1/model.onnx              the package's model.onnx (+ its external data, same relative path)
    REPO/<name>_<variant>/config.pbtxt    every other variant (int8, fp16, ...) as its own model
    REPO/<name>_<variant>/1/model.onnx

Why variants are separate models and not versions of one model: all versions of a Triton model share
one ``config.pbtxt``, but variants need not agree on it (an fp16 or int8 export may change I/O data
types, and a client comparing precisions wants to address each one by name rather than by whichever
version the version policy serves). Each model therefore holds exactly one version (``--model-version``,
default 1) and Triton's default version policy (latest 1) serves it.

The ``config.pbtxt`` is rendered here from frozen dataclasses; nothing from tritonclient is needed at
runtime (the tests parse every file with Triton's own ``ModelConfig`` protobuf schema). I/O comes from
each ONNX file's own graph, not the manifest, because that is what Triton's onnxruntime backend checks.

Encoder-decoder packages (``transcribe``, ``text2text``) are refused: their decoding loop runs in the toolkit,
so a repository would hold an encoder Triton cannot decode with; ``edge serve`` serves them.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx

from toolkit.atomic import check_output_directory, replace_directory, staging_directory
from toolkit.dtypes import DTYPES
from toolkit.errors import BadInputError, BadModelError
from toolkit.inspect import graph_tensor_specs, load_onnx_graph
from toolkit.manifest import FP32_VARIANT, ModelPackage, TensorSpec
from toolkit.tasks import Family, family_of

__all__ = [
    "DEFAULT_MAX_BATCH_SIZE",
    "INSTANCE_KINDS",
    "TRITON_DATA_TYPES",
    "DynamicBatching",
    "TritonExport",
    "TritonExportOptions",
    "TritonModel",
    "TritonModelConfig",
    "TritonTensor",
    "export_triton_repository",
    "triton_data_type",
    "triton_model_config",
    "triton_model_name",
]

DEFAULT_MAX_BATCH_SIZE = 32
CONFIG_NAME = "config.pbtxt"
MODEL_FILE = "model.onnx"  # the onnxruntime backend's default_model_filename

# numpy dtype name (as the manifest and toolkit.inspect write it) -> Triton DataType enum name.
# (From the one table, toolkit.dtypes; numpy object and bytes arrays hold strings.)
TRITON_DATA_TYPES: dict[str, str] = {
    **{t.numpy: t.triton for t in DTYPES},
    "object": "TYPE_STRING",
    "bytes": "TYPE_STRING",
}

# --kind -> Triton instance_group kind; KIND_AUTO is GPU when Triton sees one, else CPU.
INSTANCE_KINDS: dict[str, str] = {"auto": "KIND_AUTO", "cpu": "KIND_CPU", "gpu": "KIND_GPU"}

_INVALID_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True)
class TritonExportOptions:
    """How to configure each exported model.

    `max_batch_size=None` derives it: 32 when the first axis of every input and output is symbolic
    (a dynamic batch axis), else 0 (no Triton batching, full dims). `variants=None` exports every
    variant of the package. The TensorRT fp16 accelerator applies to GPU instances only.
    """

    max_batch_size: int | None = None
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_microseconds: int = 100
    instance_count: int = 1
    instance_kind: str = "auto"
    tensorrt_fp16: bool = False
    variants: tuple[str, ...] | None = None
    version: int = 1


@dataclass(frozen=True)
class TritonTensor:
    """One config input or output: name, Triton data type, dims without the batch axis, optional reshape."""

    name: str
    data_type: str
    dims: tuple[int, ...]
    reshape: tuple[int, ...] | None = None


@dataclass(frozen=True)
class DynamicBatching:
    """Triton's dynamic batcher settings."""

    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_microseconds: int = 0


@dataclass(frozen=True)
class TritonModelConfig:
    """The content of one ``config.pbtxt``."""

    name: str
    max_batch_size: int
    inputs: tuple[TritonTensor, ...]
    outputs: tuple[TritonTensor, ...]
    dynamic_batching: DynamicBatching | None
    instance_count: int
    instance_kind: str
    tensorrt_fp16: bool
    platform: str = "onnxruntime_onnx"

    def to_pbtxt(self) -> str:
        """Render as protobuf text format (Triton's ``ModelConfig``)."""
        lines = [
            f"name: {_quote(self.name)}",
            f"platform: {_quote(self.platform)}",
            f"max_batch_size: {self.max_batch_size}",
        ]
        for field_name, tensors in (("input", self.inputs), ("output", self.outputs)):
            lines.append(f"{field_name} [")
            lines.append(",\n".join(_tensor_block(t) for t in tensors))
            lines.append("]")
        if self.dynamic_batching is not None:
            lines.append("dynamic_batching {")
            if self.dynamic_batching.preferred_batch_sizes:
                lines.append(
                    f"  preferred_batch_size: {_int_list(self.dynamic_batching.preferred_batch_sizes)}"
                )
            lines.append(
                f"  max_queue_delay_microseconds: {self.dynamic_batching.max_queue_delay_microseconds}"
            )
            lines.append("}")
        lines += [
            "instance_group [",
            "  {",
            f"    count: {self.instance_count}",
            f"    kind: {self.instance_kind}",
            "  }",
            "]",
        ]
        if self.tensorrt_fp16:
            # The form documented in the onnxruntime_backend README, "ONNX Runtime with TensorRT optimization".
            lines += [
                "optimization {",
                "  execution_accelerators {",
                "    gpu_execution_accelerator [",
                "      {",
                '        name: "tensorrt"',
                '        parameters { key: "precision_mode" value: "FP16" }',
                "      }",
                "    ]",
                "  }",
                "}",
            ]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class TritonModel:
    """One model written into the repository."""

    name: str
    variant: str
    version: int
    max_batch_size: int
    batching: str
    config_path: Path
    model_path: Path
    extra_files: tuple[Path, ...]
    config: TritonModelConfig


@dataclass(frozen=True)
class TritonExport:
    """What `export_triton_repository` wrote, and how to serve it."""

    repository: Path
    package: Path
    models: tuple[TritonModel, ...]
    command: str


def _quote(text: str) -> str:
    out = []
    for ch in text:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\{ord(ch):03o}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _int_list(values: Sequence[int]) -> str:
    return "[ " + ", ".join(str(v) for v in values) + " ]"


def _tensor_block(tensor: TritonTensor) -> str:
    lines = [
        "  {",
        f"    name: {_quote(tensor.name)}",
        f"    data_type: {tensor.data_type}",
        f"    dims: {_int_list(tensor.dims)}",
    ]
    if tensor.reshape is not None:
        lines.append(f"    reshape {{ shape: {_int_list(tensor.reshape)} }}")
    lines.append("  }")
    return "\n".join(lines)


def triton_model_name(text: str) -> str:
    """`text` made a valid Triton model name: characters outside [A-Za-z0-9_.-] become '_', no leading dot."""
    name = _INVALID_NAME_CHARS.sub("_", text)
    if name.startswith("."):
        name = "_" + name[1:]  # a dot-directory would be hidden, and "." / ".." are not names
    return name or "model"


def triton_data_type(dtype: str, where: str) -> str:
    """The Triton data type for numpy dtype name `dtype`; `where` names the tensor in the error."""
    try:
        return TRITON_DATA_TYPES[dtype]
    except KeyError:
        raise BadModelError(
            f"{where} has dtype {dtype}, which Triton has no data type for; "
            f"export the model with one of: {', '.join(sorted(TRITON_DATA_TYPES))}"
        ) from None


@dataclass(frozen=True)
class _BatchAxis:
    dynamic: bool  # every first axis symbolic, and the named ones share one name
    fixed: bool  # some tensor has no first axis or a fixed one: Triton cannot batch it at all
    why: str


def _batch_axis(tensors: Sequence[TensorSpec], model: str) -> _BatchAxis:
    """Whether the first axis of every tensor is one dynamic batch axis, and why (or why not)."""
    names = set()
    for spec in tensors:
        if not spec.shape:
            return _BatchAxis(False, True, f"{model} tensor '{spec.name}' is a scalar (no batch axis)")
        first = spec.shape[0]
        if not isinstance(first, str):
            return _BatchAxis(False, True, f"{model} tensor '{spec.name}' has a fixed first dim {first}")
        if first != "?":
            names.add(first)
    if len(names) > 1:
        # Differently named first axes need not be the same size, so they are not one batch axis.
        return _BatchAxis(
            False, False, f"{model} first axes have different names ({', '.join(sorted(names))})"
        )
    return _BatchAxis(True, False, f"axis '{next(iter(names), '?')}'")


def _dims(shape: Sequence[int | str]) -> tuple[int, ...]:
    # Unknown and symbolic dims are -1 in Triton; a dim_value of 0 in ONNX also means "not fixed".
    return tuple(d if isinstance(d, int) and d > 0 else -1 for d in shape)


def _triton_tensor(spec: TensorSpec, batched: bool, where: str) -> TritonTensor:
    data_type = triton_data_type(spec.dtype, f"{where} tensor '{spec.name}'")
    dims = _dims(spec.shape[1:] if batched else spec.shape)
    if not dims:
        # Triton needs at least one dim; a per-item scalar is declared [1] and reshaped to [] for the model.
        return TritonTensor(spec.name, data_type, (1,), reshape=())
    return TritonTensor(spec.name, data_type, dims)


def triton_model_config(
    name: str,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    options: TritonExportOptions,
) -> TritonModelConfig:
    """The Triton config for a model with these graph inputs and outputs, under `options`."""
    _check_options(options)
    where = f"model '{name}'"
    axis = _batch_axis((*inputs, *outputs), where)
    if options.max_batch_size is None:
        max_batch = DEFAULT_MAX_BATCH_SIZE if axis.dynamic else 0
    else:
        max_batch = options.max_batch_size
        if max_batch > 0 and axis.fixed:
            raise BadInputError(
                f"--max-batch-size {max_batch}: {axis.why}, so Triton cannot batch it; use --max-batch-size 0"
            )
    too_big = [size for size in options.preferred_batch_sizes if size > max_batch]
    if too_big:
        raise BadInputError(
            f"preferred batch size {too_big[0]} is over max_batch_size {max_batch} of {where}; "
            "pick sizes up to --max-batch-size"
        )
    batched = max_batch > 0
    return TritonModelConfig(
        name=name,
        max_batch_size=max_batch,
        inputs=tuple(_triton_tensor(spec, batched, where) for spec in inputs),
        outputs=tuple(_triton_tensor(spec, batched, where) for spec in outputs),
        dynamic_batching=(
            DynamicBatching(options.preferred_batch_sizes, options.max_queue_delay_microseconds)
            if batched
            else None
        ),
        instance_count=options.instance_count,
        instance_kind=INSTANCE_KINDS[options.instance_kind],
        tensorrt_fp16=options.tensorrt_fp16,
    )


def _check_options(options: TritonExportOptions) -> None:
    if options.instance_kind not in INSTANCE_KINDS:
        raise BadInputError(
            f"instance kind '{options.instance_kind}' is unknown; pick one of {', '.join(INSTANCE_KINDS)}"
        )
    if options.tensorrt_fp16 and options.instance_kind == "cpu":
        raise BadInputError("--tensorrt-fp16 needs GPU instances but --kind is cpu; use --kind gpu (or auto)")
    if options.instance_count < 1:
        raise BadInputError(f"--instances must be 1 or more, got {options.instance_count}")
    if options.version < 1:
        raise BadInputError(f"model version must be 1 or more, got {options.version}")
    if options.max_batch_size is not None and options.max_batch_size < 0:
        raise BadInputError(f"--max-batch-size must be 0 or more, got {options.max_batch_size}")
    if options.max_queue_delay_microseconds < 0:
        raise BadInputError(
            f"--max-queue-delay-us must be 0 or more, got {options.max_queue_delay_microseconds}"
        )
    if any(size < 1 for size in options.preferred_batch_sizes):
        raise BadInputError(
            f"preferred batch sizes must be 1 or more, got {list(options.preferred_batch_sizes)}"
        )


def _graph_specs(model: onnx.ModelProto) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    initializers = {i.name for i in model.graph.initializer}
    inputs = graph_tensor_specs([i for i in model.graph.input if i.name not in initializers])
    outputs = graph_tensor_specs(model.graph.output)
    return _numpy_names(inputs), _numpy_names(outputs)


def _numpy_names(specs: tuple[TensorSpec, ...]) -> tuple[TensorSpec, ...]:
    # toolkit.inspect names common types and leaves others as the ONNX enum number; name those via onnx.
    fixed = []
    for spec in specs:
        dtype = spec.dtype
        if dtype.isdigit():
            try:
                dtype = onnx.helper.tensor_dtype_to_np_dtype(int(dtype)).name
            except (KeyError, ValueError):
                dtype = onnx.TensorProto.DataType.Name(int(dtype)).lower()
        fixed.append(TensorSpec(spec.name, dtype, spec.shape, spec.value_range))
    return tuple(fixed)


def _walk_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _walk_tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _walk_tensors(subgraph)


def _external_data_files(model: onnx.ModelProto, model_path: Path) -> tuple[str, ...]:
    """Relative paths of the external data files `model` refers to, checked to stay beside it."""
    locations = []
    for tensor in _walk_tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), None)
        if location is None or location in locations:
            continue
        relative = Path(location)
        if relative.is_absolute() or ".." in relative.parts:
            raise BadModelError(
                f"'{model_path}' keeps external data at '{location}', outside its directory; "
                "re-save it with the data file beside the model"
            )
        if not (model_path.parent / relative).is_file():
            raise BadModelError(
                f"'{model_path}' refers to external data '{location}', which is missing; "
                "copy it beside the model or re-export the package"
            )
        locations.append(location)
    return tuple(locations)


def _place(source: Path, target: Path) -> None:
    """Hard-link `source` to `target` (same filesystem), else copy it; the package's files never move."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def export_triton_repository(
    package_dir: str | Path,
    repo_dir: str | Path,
    options: TritonExportOptions | None = None,
    force: bool = False,
) -> TritonExport:
    """Write a Triton model repository for the package at `package_dir` into `repo_dir`, atomically."""
    options = options or TritonExportOptions()
    _check_options(options)
    package = ModelPackage.open(package_dir)
    manifest = package.manifest
    if family_of(package) is Family.ENCODER_DECODER:
        raise BadInputError(
            f"package '{package.path}' is an encoder-decoder (task '{manifest.task}'): Triton's onnxruntime backend "
            f"would serve its encoder alone, without the decoding loop; serve it with `edge serve {package.path}`, "
            "which decodes"
        )
    repo = Path(repo_dir)
    check_output_directory(repo, package.path, force, "Triton repository")
    variants = options.variants if options.variants is not None else tuple(manifest.variants)
    if not variants:
        raise BadInputError("no variants selected; pass --variants with at least one, e.g. fp32")
    for variant in variants:
        manifest.variant(variant)  # an unknown name is a BadInputError listing the known ones
    base = triton_model_name(manifest.name)

    models = []
    with staging_directory(repo) as staging:
        # A subdirectory, not `staging` itself: mkdtemp makes 0700 directories and Triton may run as another user.
        tree = staging / "repository"
        tree.mkdir()
        for variant in dict.fromkeys(variants):
            name = base if variant == FP32_VARIANT else triton_model_name(f"{manifest.name}_{variant}")
            source = package.model_path(variant)
            graph = load_onnx_graph(source)
            inputs, outputs = _graph_specs(graph)
            config = triton_model_config(name, inputs, outputs, options)
            extra = _external_data_files(graph, source)
            model_dir = tree / name
            version_dir = model_dir / str(options.version)
            _place(source, version_dir / MODEL_FILE)
            for location in extra:
                _place(source.parent / location, version_dir / location)
            (model_dir / CONFIG_NAME).write_text(config.to_pbtxt(), encoding="utf-8")
            final_dir = repo / name
            models.append(
                TritonModel(
                    name=name,
                    variant=variant,
                    version=options.version,
                    max_batch_size=config.max_batch_size,
                    batching=_batching_note(config, inputs, outputs, where=f"model '{name}'"),
                    config_path=final_dir / CONFIG_NAME,
                    model_path=final_dir / str(options.version) / MODEL_FILE,
                    extra_files=tuple(final_dir / str(options.version) / loc for loc in extra),
                    config=config,
                )
            )
        replace_directory(tree, repo)
    return TritonExport(
        repository=repo,
        package=package.path,
        models=tuple(models),
        command=f"tritonserver --model-repository {repo.resolve()}",
    )


def _batching_note(
    config: TritonModelConfig, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], where: str
) -> str:
    axis = _batch_axis((*inputs, *outputs), where)
    if config.max_batch_size > 0:
        where = axis.why if axis.dynamic else f"the first axes, as asked ({axis.why})"
        return f"dynamic, up to {config.max_batch_size} on {where}"
    return "no batching: --max-batch-size 0" if axis.dynamic else f"no batching: {axis.why}"
