"""The request every served model takes (`ServedModel.prepare`): named input tensors as numpy arrays, the outputs
asked for, and parameters. It is the Open Inference Protocol's (KServe v2) message, which `toolkit.serve.kserve`
parses from the wire; datatypes are v2's names (``FP32``, ``INT64``, ``BYTES`` ...).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from toolkit.dtypes import BY_NUMPY
from toolkit.errors import BadInputError

__all__ = ["InferenceRequest", "RequestInput", "RequestedOutput", "v2_datatype"]


def v2_datatype(dtype: str | np.dtype[Any]) -> str:
    """``float32`` -> ``FP32``; the runner's ``str`` and numpy string/bytes/object dtypes map to BYTES."""
    name = dtype if isinstance(dtype, str) else dtype.name
    element = BY_NUMPY.get(name)
    if element is not None and element.kserve is not None:
        return element.kserve
    try:
        kind: str = np.dtype(dtype).kind
    except TypeError:
        kind = ""
    if kind in ("U", "S", "O"):
        return "BYTES"
    raise BadInputError(
        f"dtype {name} has no Open Inference Protocol datatype; cast it to one numpy supports"
    )


@dataclass(frozen=True)
class RequestInput:
    """One decoded input tensor: numpy data shaped as the request said (BYTES: object array of bytes)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray


@dataclass(frozen=True)
class RequestedOutput:
    """An output the request asks for; `binary` None means "as the request's binary_data_output says"."""

    name: str
    binary: bool | None = None


@dataclass(frozen=True)
class InferenceRequest:
    """A decoded inference request. No `outputs` means every output of the model."""

    inputs: tuple[RequestInput, ...]
    outputs: tuple[RequestedOutput, ...] = ()
    id: str | None = None
    binary_output: bool = False
    timeout_s: float | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)

    def wants_binary(self, output: str) -> bool:
        """Whether `output` goes back as binary data."""
        for requested in self.outputs:
            if requested.name == output and requested.binary is not None:
                return requested.binary
        return self.binary_output
