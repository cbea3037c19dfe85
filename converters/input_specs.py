"""Input specs for exporting a plain PyTorch module: ``name:dtype[dims]`` or ``name:dtype[dims]:lo..hi``.

``pixel_values:float32[batch,3,224,224]`` is one float input with a dynamic batch; ``input_ids:int64[batch,seq]:0..30521``
an integer input whose values lie in 0..30521 (inclusive), with dynamic batch and sequence axes. A dim is a
positive integer (fixed) or a name (dynamic); inputs that use the same name share that axis. From Python,
build `InputSpec` directly or with `InputSpec.parse`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from toolkit.errors import BadInputError
from toolkit.manifest import Dim, TensorSpec

__all__ = ["DTYPES", "InputSpec", "parse_input_specs"]

# What a user may write -> the numpy dtype name the manifest and onnxruntime use.
DTYPES: dict[str, str] = {
    "float32": "float32",
    "float": "float32",
    "fp32": "float32",
    "float16": "float16",
    "half": "float16",
    "fp16": "float16",
    "float64": "float64",
    "double": "float64",
    "int64": "int64",
    "long": "int64",
    "int32": "int32",
    "int": "int32",
    "int16": "int16",
    "int8": "int8",
    "uint8": "uint8",
    "bool": "bool",
}

_EXAMPLE = "e.g. pixel_values:float32[batch,3,224,224] or input_ids:int64[batch,seq]:0..30521"
_SPEC = re.compile(r"^(?P<name>[^:\[\]]*):(?P<dtype>[^:\[\]]*)\[(?P<dims>[^\[\]]*)\]\s*(?::(?P<range>.*))?$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_RANGE = re.compile(r"^\s*(-?\d+)\s*\.\.\s*(-?\d+)\s*$")


def _bad(text: str, problem: str) -> BadInputError:
    return BadInputError(
        f"--input '{text}': {problem}; write NAME:DTYPE[DIM,...] or NAME:DTYPE[DIM,...]:LO..HI, {_EXAMPLE}"
    )


@dataclass(frozen=True)
class InputSpec:
    """One model input: its name (a `forward` parameter), numpy dtype name, dims (ints fixed, names dynamic) and,
    for integer inputs, the inclusive range of valid values."""

    name: str
    dtype: str
    shape: tuple[Dim, ...]
    value_range: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        text = str(self)
        if not _IDENTIFIER.match(self.name):
            raise _bad(
                text, f"name '{self.name}' must be a Python identifier (it is passed as a keyword argument)"
            )
        if self.dtype not in DTYPES.values():
            raise _bad(
                text, f"unknown dtype '{self.dtype}' (use one of: {', '.join(sorted(set(DTYPES.values())))})"
            )
        for dim in self.shape:
            if isinstance(dim, bool) or not isinstance(dim, int | str):
                raise _bad(text, f"dim {dim!r} must be a positive integer or a name")
            if isinstance(dim, int) and dim < 1:
                raise _bad(text, f"dim {dim} must be a positive integer or a name")
            if isinstance(dim, str) and not _IDENTIFIER.match(dim):
                raise _bad(text, f"dim '{dim}' must be a positive integer or a name like batch or seq")
        if self.value_range is not None:
            low, high = self.value_range
            if not self.dtype.startswith(("int", "uint")):
                raise _bad(text, f"a value range applies to integer inputs only, not {self.dtype}")
            if low > high:
                raise _bad(text, f"value range {low}..{high} is empty (low > high)")

    @classmethod
    def parse(cls, text: str) -> InputSpec:
        """Parse ``name:dtype[dims]`` or ``name:dtype[dims]:lo..hi``; a bad spec is a one-line BadInputError."""
        match = _SPEC.match(text.strip())
        if match is None:
            raise _bad(text, _why_unparsable(text))
        name = match["name"].strip()
        dtype_text = match["dtype"].strip().lower()
        if dtype_text not in DTYPES:
            raise _bad(text, f"unknown dtype '{dtype_text}' (use one of: {', '.join(DTYPES)})")
        dims_text = match["dims"].strip()
        dims = tuple(_dim(text, part.strip()) for part in dims_text.split(",")) if dims_text else ()
        value_range = None
        if match["range"] is not None:
            bounds = _RANGE.match(match["range"])
            if bounds is None:
                raise _bad(
                    text, f"value range '{match['range']}' must be LO..HI with integers, like 0..30521"
                )
            value_range = (int(bounds[1]), int(bounds[2]))
        return cls(name, DTYPES[dtype_text], dims, value_range)

    def __str__(self) -> str:
        dims = ",".join(str(d) for d in self.shape)
        bounds = f":{self.value_range[0]}..{self.value_range[1]}" if self.value_range is not None else ""
        return f"{self.name}:{self.dtype}[{dims}]{bounds}"

    @property
    def dynamic_dims(self) -> dict[int, str]:
        """Axis -> name of every dynamic dim."""
        return {axis: dim for axis, dim in enumerate(self.shape) if isinstance(dim, str)}

    def to_tensor_spec(self) -> TensorSpec:
        """As the manifest's `TensorSpec` (value range included)."""
        return TensorSpec(self.name, self.dtype, self.shape, self.value_range)


def _why_unparsable(text: str) -> str:
    if ":" not in text:
        return "no ':' between the name and the dtype"
    if "[" not in text:
        return "no [dims] after the dtype"
    if text.count("[") != 1 or text.count("]") != 1 or text.index("[") > text.index("]"):
        return "the dims need exactly one [ and one ]"
    return "it does not have the form NAME:DTYPE[DIMS]"


def _dim(text: str, part: str) -> Dim:
    if not part:
        raise _bad(text, "an empty dim (two commas in a row, or a trailing comma)")
    if part.lstrip("-").isdigit():
        value = int(part)
        if value < 1:
            raise _bad(text, f"dim {value} must be a positive integer or a name")
        return value
    if not _IDENTIFIER.match(part):
        raise _bad(text, f"dim '{part}' must be a positive integer or a name like batch or seq")
    return part


def parse_input_specs(items: Iterable[InputSpec | str]) -> tuple[InputSpec, ...]:
    """Specs from strings (parsed) or `InputSpec`s; names must be unique."""
    specs = tuple(item if isinstance(item, InputSpec) else InputSpec.parse(item) for item in items)
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise BadInputError(f"--input '{spec.name}' is given twice; declare each input once")
        seen.add(spec.name)
    return specs
