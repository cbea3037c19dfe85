"""`inspect_model`: what `edge info` shows about an ONNX file or a model package."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from toolkit.dtypes import BY_ONNX
from toolkit.errors import BadInputError, BadModelError, first_line
from toolkit.manifest import MANIFEST_NAME, Manifest, ModelPackage, TensorSpec

__all__ = [
    "ModelInfo",
    "graph_inputs",
    "graph_tensor_specs",
    "inspect_model",
    "load_onnx_graph",
    "model_size",
    "op_types",
]


@dataclass(frozen=True)
class ModelInfo:
    """The graph-level facts about one ONNX file."""

    path: Path
    size_bytes: int
    opset: int
    producer: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    node_count: int
    operators: dict[str, int]
    manifest: Manifest | None


def load_onnx_graph(path: Path) -> onnx.ModelProto:
    """Load an ONNX file's graph without its external weights; a corrupt file is a BadModelError."""
    if not path.is_file():
        raise BadInputError(f"'{path}' does not exist; pass a model package directory or an .onnx file")
    if path.suffix == ".ort":
        raise BadInputError(
            f"'{path}' is in onnxruntime's ORT format, which has no ONNX graph to read; inspect the ONNX package it was "
            "exported from (`edge run`, `edge bench` and `edge serve` load it as it is)"
        )
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises several unrelated types for a corrupt file
        raise BadModelError(
            f"'{path}' is not a readable ONNX model ({type(exc).__name__}: {first_line(exc, default='truncated or corrupt')}); re-export it"
        ) from None


def model_size(path: Path) -> int:
    """Bytes of an ONNX file plus its external data file (``<name>.data``) when it has one."""
    return path.stat().st_size + sum(p.stat().st_size for p in path.parent.glob(f"{path.name}.data"))


def graph_inputs(path: Path) -> tuple[TensorSpec, ...]:
    """The model's inputs (initializers left out), read without its weights."""
    graph = load_onnx_graph(path).graph
    initializers = {i.name for i in graph.initializer}
    return graph_tensor_specs(v for v in graph.input if v.name not in initializers)


def op_types(path: Path) -> frozenset[str]:
    """The operator types the model's main graph uses, read without its weights."""
    return frozenset(node.op_type for node in load_onnx_graph(path).graph.node)


def _numpy_name(elem_type: int) -> str:
    element = BY_ONNX.get(elem_type)
    return element.numpy if element is not None else str(elem_type)


def graph_tensor_specs(values: Iterable[Any]) -> tuple[TensorSpec, ...]:
    """Specs of graph inputs or outputs: numpy dtype names, symbolic dims as strings (``?`` when unnamed)."""
    specs = []
    for value in values:
        tensor_type = value.type.tensor_type
        shape = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor_type.shape.dim
        )
        specs.append(TensorSpec(value.name, _numpy_name(tensor_type.elem_type), shape))
    return tuple(specs)


def inspect_model(target: str | Path, variant: str = "fp32") -> ModelInfo:
    """Inspect a package directory (its `variant`) or a bare .onnx file."""
    path = Path(target)
    manifest = None
    if path.is_dir() or path.name == MANIFEST_NAME:
        package = ModelPackage.open(path if path.is_dir() else path.parent)
        manifest = package.manifest
        path = package.model_path(variant)
    model = load_onnx_graph(path)
    if len(model.graph.node) == 0 and len(model.graph.input) == 0:
        raise BadModelError(f"'{path}' holds no ONNX graph (empty or not an ONNX file); re-export it")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    initializer_names = {i.name for i in model.graph.initializer}
    inputs = (i for i in model.graph.input if i.name not in initializer_names)
    return ModelInfo(
        path=path,
        size_bytes=model_size(path),
        opset=opset,
        producer=f"{model.producer_name} {model.producer_version}".strip(),
        inputs=graph_tensor_specs(inputs),
        outputs=graph_tensor_specs(model.graph.output),
        node_count=len(model.graph.node),
        operators=dict(Counter(node.op_type for node in model.graph.node).most_common()),
        manifest=manifest,
    )
