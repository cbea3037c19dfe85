"""Tensor element types under every name edge-toolkit meets: the one table.

Each row is one element type as numpy names it (the manifest's and `TensorSpec`'s dtype; ``str`` for ONNX
string tensors), ONNX's ``TensorProto`` number, onnxruntime's type string, the Open Inference Protocol
(KServe v2) datatype and Triton's model-config data type. A name with no counterpart is None (numpy has no
bfloat16, so the protocol refuses BF16).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BY_NUMPY", "BY_ONNX", "BY_ORT", "DTYPES", "ElementType"]


@dataclass(frozen=True)
class ElementType:
    """One element type: numpy name, ONNX TensorProto number, onnxruntime type, KServe v2 and Triton names."""

    numpy: str
    onnx: int
    ort: str
    kserve: str | None
    triton: str


# In the protocol's own order (its error messages list the datatypes so).
DTYPES: tuple[ElementType, ...] = (
    ElementType("bool", 9, "tensor(bool)", "BOOL", "TYPE_BOOL"),
    ElementType("int8", 3, "tensor(int8)", "INT8", "TYPE_INT8"),
    ElementType("int16", 5, "tensor(int16)", "INT16", "TYPE_INT16"),
    ElementType("int32", 6, "tensor(int32)", "INT32", "TYPE_INT32"),
    ElementType("int64", 7, "tensor(int64)", "INT64", "TYPE_INT64"),
    ElementType("uint8", 2, "tensor(uint8)", "UINT8", "TYPE_UINT8"),
    ElementType("uint16", 4, "tensor(uint16)", "UINT16", "TYPE_UINT16"),
    ElementType("uint32", 12, "tensor(uint32)", "UINT32", "TYPE_UINT32"),
    ElementType("uint64", 13, "tensor(uint64)", "UINT64", "TYPE_UINT64"),
    ElementType("float16", 10, "tensor(float16)", "FP16", "TYPE_FP16"),
    ElementType("float32", 1, "tensor(float)", "FP32", "TYPE_FP32"),
    ElementType("float64", 11, "tensor(double)", "FP64", "TYPE_FP64"),
    ElementType("str", 8, "tensor(string)", "BYTES", "TYPE_STRING"),
    ElementType("bfloat16", 16, "tensor(bfloat16)", None, "TYPE_BF16"),
)

# lookups by each name; numpy object and bytes arrays hold strings
BY_NUMPY: dict[str, ElementType] = {t.numpy: t for t in DTYPES} | {
    alias: t for t in DTYPES if t.numpy == "str" for alias in ("object", "bytes")
}
BY_ONNX: dict[int, ElementType] = {t.onnx: t for t in DTYPES}
BY_ORT: dict[str, ElementType] = {t.ort: t for t in DTYPES}
