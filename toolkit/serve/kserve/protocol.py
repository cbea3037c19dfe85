"""Open Inference Protocol (KServe v2) REST messages, with Triton's binary tensor data extension.

A request body is a JSON object, optionally followed by raw tensor bytes. When bytes follow, the
``Inference-Header-Content-Length`` header gives the JSON part's length and every binary input says its
byte count in ``parameters.binary_data_size``; the bytes follow in input order. A response mirrors this:
an output travels as binary when its requested output says ``parameters.binary_data`` (failing that,
when the request says ``parameters.binary_data_output``), otherwise as a flat row-major JSON ``data`` list.

Binary layout (Triton's): little-endian, row-major, no padding; BOOL is one byte; each BYTES element is a
4-byte little-endian unsigned length followed by the bytes. BYTES tensors are numpy object arrays of
``bytes`` here; JSON carries them as strings (UTF-8).

Both sides live here: `decode_request` / `encode_response` for the server, `encode_request` /
`decode_response` for clients without tritonclient (the tests and the benchmark).
"""

from __future__ import annotations

import json
import math
import struct
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from toolkit.dtypes import DTYPES
from toolkit.errors import BadInputError
from toolkit.serve.tensors import InferenceRequest, RequestedOutput, RequestInput, v2_datatype

__all__ = [
    "DATATYPES",
    "HEADER_LENGTH",
    "EncodedBody",
    "ResponseOutput",
    "decode_request",
    "decode_response",
    "deserialize_bytes",
    "encode_request",
    "encode_response",
    "numpy_dtype",
    "serialize_bytes",
    "tensor_bytes",
    "triton_type",
]

HEADER_LENGTH = "Inference-Header-Content-Length"

# v2 datatype -> numpy dtype (little-endian on the wire). BF16 has no numpy dtype and is refused.
# (From the one table, toolkit.dtypes; BYTES arrays are numpy object arrays.)
DATATYPES: dict[str, str] = {
    t.kserve: "object" if t.kserve == "BYTES" else t.numpy for t in DTYPES if t.kserve is not None
}

# JSON element kinds (numpy dtype.kind of the parsed list) each datatype accepts: no silent float -> int.
_JSON_KINDS: dict[str, str] = {
    "BOOL": "b",
    **{t: "iu" for t in ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64")},
    **{t: "iuf" for t in ("FP16", "FP32", "FP64")},
}


def numpy_dtype(datatype: str, where: str) -> np.dtype[Any]:
    """The numpy dtype of a v2 datatype; `where` names the tensor in the error for an unknown one."""
    try:
        return np.dtype(DATATYPES[datatype])
    except KeyError:
        hint = " (numpy has no bfloat16; send FP32)" if datatype == "BF16" else ""
        raise BadInputError(
            f"{where}: datatype {datatype!r} is not supported{hint}; use one of {', '.join(DATATYPES)}"
        ) from None


def triton_type(datatype: str) -> str:
    """Triton's model-config name of a v2 datatype: ``FP32`` -> ``TYPE_FP32``, ``BYTES`` -> ``TYPE_STRING``."""
    return next(t.triton for t in DTYPES if t.kserve == datatype)


# -- tensors ------------------------------------------------------------------------------------


def serialize_bytes(array: np.ndarray) -> bytes:
    """A BYTES tensor in row-major order, each element as a 4-byte little-endian length and its bytes."""
    parts = []
    for item in array.reshape(-1):
        data = item if isinstance(item, bytes) else str(item).encode("utf-8")
        parts.append(struct.pack("<I", len(data)))
        parts.append(data)
    return b"".join(parts)


def deserialize_bytes(buffer: bytes | memoryview, count: int, where: str) -> np.ndarray:
    """`count` length-prefixed BYTES elements from `buffer` (which they must fill exactly), as an object array."""
    view = memoryview(buffer)
    items: list[bytes] = []
    offset = 0
    while offset < len(view):
        if offset + 4 > len(view):
            raise BadInputError(f"{where}: BYTES data ends inside an element's 4-byte length prefix")
        (length,) = struct.unpack_from("<I", view, offset)
        offset += 4
        if offset + length > len(view):
            raise BadInputError(
                f"{where}: a BYTES element says it has {length} bytes but only {len(view) - offset} remain"
            )
        items.append(bytes(view[offset : offset + length]))
        offset += length
    if len(items) != count:
        raise BadInputError(f"{where}: the shape needs {count} BYTES elements, the data holds {len(items)}")
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array


def tensor_bytes(array: np.ndarray) -> bytes:
    """A tensor's binary form: BYTES length-prefixed, everything else raw little-endian row-major."""
    if array.dtype.kind in "USO":
        return serialize_bytes(array)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def _count(shape: Sequence[int]) -> int:
    return math.prod(shape)


def _binary_tensor(where: str, datatype: str, shape: tuple[int, ...], chunk: memoryview) -> np.ndarray:
    dtype = numpy_dtype(datatype, where)
    count = _count(shape)
    if datatype == "BYTES":
        return deserialize_bytes(chunk, count, where).reshape(shape)
    need = count * dtype.itemsize
    if len(chunk) != need:
        raise BadInputError(
            f"{where}: shape {list(shape)} of {datatype} needs {need} bytes, binary_data_size is {len(chunk)}"
        )
    # A copy: frombuffer's array is read-only and would keep the whole request body alive.
    return np.frombuffer(chunk, dtype=dtype.newbyteorder("<")).astype(dtype).reshape(shape)


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _json_tensor(where: str, datatype: str, shape: tuple[int, ...], data: Any) -> np.ndarray:
    dtype = numpy_dtype(datatype, where)
    count = _count(shape)
    if datatype == "BYTES":
        flat = _flatten(data)
        bad = [type(v).__name__ for v in flat if not isinstance(v, str)]
        if bad:
            raise BadInputError(f"{where}: BYTES data must be strings in JSON, got {bad[0]}")
        array = np.empty(len(flat), dtype=object)
        try:
            array[:] = [v.encode("utf-8") for v in flat]
        except UnicodeEncodeError as exc:
            raise BadInputError(
                f"{where}: BYTES element holds a lone surrogate ({exc.object[exc.start : exc.end]!a}), "
                "which is not text; send valid Unicode"
            ) from None
    else:
        try:
            parsed = np.asarray(data)
        except (ValueError, TypeError, OverflowError):
            raise BadInputError(
                f"{where}: data is ragged or mixed; send a flat list of {count} numbers (row-major)"
            ) from None
        if parsed.size and parsed.dtype.kind not in _JSON_KINDS[datatype]:
            want = {"b": "true/false", "iu": "integers", "iuf": "numbers"}[_JSON_KINDS[datatype]]
            raise BadInputError(f"{where}: {datatype} data must be {want}, got {parsed.dtype.kind!r} values")
        if parsed.size and dtype.kind in "iu":
            info = np.iinfo(dtype)
            if parsed.min() < info.min or parsed.max() > info.max:
                raise BadInputError(f"{where}: a value is outside the range of {datatype}")
        if parsed.size and dtype.kind == "f" and parsed.dtype.kind in "iuf":
            # 1e300 sent as FP32 would silently become inf
            finite = parsed[np.isfinite(parsed)]
            if finite.size and np.abs(finite).max() > np.finfo(dtype).max:
                raise BadInputError(f"{where}: a value is outside the range of {datatype}")
        array = parsed.astype(dtype).reshape(-1)
    if array.size != count:
        raise BadInputError(
            f"{where}: shape {list(shape)} needs {count} elements, data has {array.size}; "
            "send every element, row-major"
        )
    return array.reshape(shape)


# -- requests -------------------------------------------------------------------------------------


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadInputError(f"{where} must be a JSON object, got {type(value).__name__}")
    return value


def _parameters(entry: Mapping[str, Any], where: str) -> dict[str, Any]:
    return _object(entry.get("parameters", {}), f"{where}: parameters")


def _shape(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value
    ):
        raise BadInputError(f"{where}: shape must be a list of non-negative integers, got {value!r}")
    return tuple(value)


def _reject_unsupported(params: Mapping[str, Any], where: str) -> None:
    if any(key.startswith("shared_memory") for key in params):
        raise BadInputError(
            f"{where}: the shared-memory extension is not supported; send the data in the body"
        )


def decode_request(body: bytes, header_length: int | None = None) -> InferenceRequest:
    """Parse a v2 inference request body (JSON, then binary tensors when `header_length` is given)."""
    request = _json_header(body, header_length)
    raw_inputs = request.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise BadInputError('the request needs "inputs": a non-empty list of tensors')
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadInputError(f'"id" must be a string, got {type(request_id).__name__}')
    params = _parameters(request, "the request")
    binary = memoryview(body)[header_length:] if header_length is not None else memoryview(b"")
    timeout = params.get("timeout")  # tritonclient's `timeout` argument: microseconds
    inputs = _inputs(raw_inputs, binary, header_length is not None)
    outputs = _outputs(request.get("outputs", []))
    if timeout is not None and (
        not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout <= 0
    ):
        raise BadInputError(f'parameter "timeout" must be a positive number of microseconds, got {timeout!r}')
    return InferenceRequest(
        inputs=inputs,
        outputs=outputs,
        id=request_id,
        binary_output=bool(params.get("binary_data_output", False)),
        timeout_s=timeout / 1e6 if timeout is not None else None,
        parameters=params,
    )


def _json_header(body: bytes, header_length: int | None) -> dict[str, Any]:
    """The request's JSON part (the whole body, or its first `header_length` bytes) as an object."""
    if header_length is not None and not 0 <= header_length <= len(body):
        raise BadInputError(
            f"{HEADER_LENGTH} is {header_length} but the body has {len(body)} bytes; "
            "it must give the length of the JSON part"
        )
    text = body if header_length is None else body[:header_length]
    try:
        request = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        hint = "" if header_length is not None else f"; binary tensors need the {HEADER_LENGTH} header"
        raise BadInputError(f"request body is not valid JSON ({exc}){hint}") from None
    except RecursionError:
        raise BadInputError(
            f"request JSON is nested deeper than the server parses (about {sys.getrecursionlimit()} levels); "
            "send tensors as flat row-major lists"
        ) from None
    return _object(request, "the request")


def _inputs(raw_inputs: list[Any], binary: memoryview, has_header: bool) -> tuple[RequestInput, ...]:
    """Every input tensor, its data from JSON or from `binary` (in input order, each its binary_data_size)."""
    offset = 0
    inputs: list[RequestInput] = []
    for position, raw in enumerate(raw_inputs):
        entry = _object(raw, f"inputs[{position}]")
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise BadInputError(f'inputs[{position}] needs a "name" string')
        where = f"input '{name}'"
        if any(i.name == name for i in inputs):
            raise BadInputError(f"{where} appears twice in the request; send each input once")
        datatype = entry.get("datatype")
        if not isinstance(datatype, str):
            raise BadInputError(f'{where} needs a "datatype" string such as "FP32" or "INT64"')
        numpy_dtype(datatype, where)
        shape = _shape(entry.get("shape"), where)
        input_params = _parameters(entry, where)
        _reject_unsupported(input_params, where)
        size = input_params.get("binary_data_size")
        if size is not None:
            _check_binary_size(where, entry, size, has_header, len(binary) - offset)
            data = _binary_tensor(where, datatype, shape, binary[offset : offset + size])
            offset += size
        elif "data" in entry:
            data = _json_tensor(where, datatype, shape, entry["data"])
        else:
            raise BadInputError(f'{where} has no "data" and no binary_data_size parameter')
        inputs.append(RequestInput(name, datatype, shape, data))
    if offset != len(binary):
        raise BadInputError(
            f"{len(binary)} bytes of binary data follow the JSON but the inputs' binary_data_size add up to "
            f"{offset}; send exactly the bytes the inputs declare"
        )
    return tuple(inputs)


def _check_binary_size(where: str, entry: Mapping[str, Any], size: Any, has_header: bool, left: int) -> None:
    """A binary input's binary_data_size: a non-negative integer within the bytes left, without JSON data."""
    if "data" in entry:
        raise BadInputError(f'{where} has both "data" and binary_data_size; send one')
    if not has_header:
        raise BadInputError(f"{where} has binary_data_size but the request has no {HEADER_LENGTH} header")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise BadInputError(f"{where}: binary_data_size must be a non-negative integer, got {size!r}")
    if size > left:
        raise BadInputError(
            f"{where}: binary_data_size {size} runs past the end of the body ({left} bytes of binary data left)"
        )


def _outputs(raw_outputs: Any) -> tuple[RequestedOutput, ...]:
    """The outputs the request asks for, each as binary or JSON (None: as the request says)."""
    if not isinstance(raw_outputs, list):
        raise BadInputError('"outputs" must be a list of {"name": ...} objects')
    outputs = []
    for position, raw in enumerate(raw_outputs):
        entry = _object(raw, f"outputs[{position}]")
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise BadInputError(f'outputs[{position}] needs a "name" string')
        output_params = _parameters(entry, f"output '{name}'")
        _reject_unsupported(output_params, f"output '{name}'")
        if output_params.get("classification"):
            raise BadInputError(
                f"output '{name}': the classification extension is not supported; request the raw output "
                "(text classifiers' -text models return labels)"
            )
        flag = output_params.get("binary_data")
        outputs.append(RequestedOutput(name, None if flag is None else bool(flag)))
    return tuple(outputs)


# -- responses ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResponseOutput:
    """One output to send back, as binary data or as a JSON list."""

    name: str
    data: np.ndarray
    binary: bool = False


@dataclass(frozen=True)
class EncodedBody:
    """An HTTP body and, when binary tensors follow the JSON, the JSON part's length."""

    body: bytes
    header_length: int | None = None

    @property
    def content_type(self) -> str:
        """``application/json``, or ``application/octet-stream`` when binary data follows the JSON."""
        return "application/json" if self.header_length is None else "application/octet-stream"

    def headers(self) -> dict[str, str]:
        """Content-Type, plus Inference-Header-Content-Length when binary data follows."""
        headers = {"Content-Type": self.content_type}
        if self.header_length is not None:
            headers[HEADER_LENGTH] = str(self.header_length)
        return headers


def _json_data(array: np.ndarray) -> list[Any]:
    flat = array.reshape(-1)
    if array.dtype.kind in "USO":
        return [v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v) for v in flat]
    return flat.tolist()


def _tensor_entry(name: str, array: np.ndarray, binary: bool, blobs: list[bytes]) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "datatype": v2_datatype(array.dtype), "shape": list(array.shape)}
    if binary:
        blob = tensor_bytes(array)
        entry["parameters"] = {"binary_data_size": len(blob)}
        blobs.append(blob)
    else:
        entry["data"] = _json_data(array)
    return entry


def _encode(header: dict[str, Any], blobs: list[bytes]) -> EncodedBody:
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    if not blobs:
        return EncodedBody(text)
    return EncodedBody(text + b"".join(blobs), len(text))


def encode_response(
    model_name: str,
    model_version: str,
    outputs: Sequence[ResponseOutput],
    request_id: str | None = None,
) -> EncodedBody:
    """A v2 inference response: JSON with each output's data or binary_data_size, then the binary data."""
    header: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        header["id"] = request_id
    blobs: list[bytes] = []
    header["outputs"] = [_tensor_entry(o.name, o.data, o.binary, blobs) for o in outputs]
    return _encode(header, blobs)


def encode_request(
    inputs: Mapping[str, np.ndarray],
    *,
    binary: bool = True,
    outputs: Sequence[str] | None = None,
    binary_output: bool = True,
    request_id: str | None = None,
) -> EncodedBody:
    """A v2 inference request (the client's side): inputs as binary data or JSON, outputs binary or JSON."""
    header: dict[str, Any] = {}
    if request_id is not None:
        header["id"] = request_id
    blobs: list[bytes] = []
    header["inputs"] = [_tensor_entry(n, np.asarray(a), binary, blobs) for n, a in inputs.items()]
    if outputs is not None:
        header["outputs"] = [{"name": n, "parameters": {"binary_data": binary_output}} for n in outputs]
    else:
        header["parameters"] = {"binary_data_output": binary_output}
    return _encode(header, blobs)


def decode_response(
    body: bytes, header_length: int | None = None
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A v2 inference response (the client's side): its JSON, and each output as a numpy array."""
    header = json.loads(body if header_length is None else body[:header_length])
    binary = memoryview(body)[header_length:] if header_length is not None else memoryview(b"")
    offset = 0
    arrays = {}
    for entry in header.get("outputs", []):
        where = f"output '{entry['name']}'"
        shape = tuple(entry["shape"])
        size = entry.get("parameters", {}).get("binary_data_size")
        if size is not None:
            arrays[entry["name"]] = _binary_tensor(
                where, entry["datatype"], shape, binary[offset : offset + size]
            )
            offset += size
        else:
            arrays[entry["name"]] = _json_tensor(where, entry["datatype"], shape, entry["data"])
    return header, arrays
