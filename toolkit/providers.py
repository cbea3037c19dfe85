"""Execution providers: one table from short names to onnxruntime names and default options.

Session creation lives here too, because that is where providers fail: onnxruntime reports a
provider that cannot load in two ways, neither of which reaches Python as data. A CUDA provider
whose libraries are missing is logged to the process's native stderr and silently dropped; a
TensorRT provider raises, and the Python wrapper prints a banner and retries on CPU. We capture the
native stderr while the session is created, turn each dropped provider into a `ProviderFallback`
with the reason onnxruntime gave, and route the captured noise to our logger instead of the terminal.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import onnxruntime as ort

from toolkit.errors import BadInputError, BadModelError, ProviderUnavailableError

__all__ = [
    "PROVIDERS",
    "ProviderFallback",
    "ProviderSpec",
    "create_session",
    "provider_names",
    "resolve_providers",
    "short_name",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProviderSpec:
    """A short provider name, its onnxruntime name and the options we pass by default."""

    short: str
    ort_name: str
    options: Mapping[str, Any] = field(default_factory=dict)
    gpu: bool = False


PROVIDERS: dict[str, ProviderSpec] = {
    spec.short: spec
    for spec in (
        ProviderSpec("tensorrt", "TensorrtExecutionProvider", gpu=True),
        ProviderSpec("cuda", "CUDAExecutionProvider", gpu=True),
        ProviderSpec("openvino", "OpenVINOExecutionProvider"),
        ProviderSpec("dml", "DmlExecutionProvider", gpu=True),
        ProviderSpec("coreml", "CoreMLExecutionProvider"),
        ProviderSpec("cpu", "CPUExecutionProvider"),
    )
}
_BY_ORT_NAME = {spec.ort_name: spec for spec in PROVIDERS.values()}

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


@dataclass(frozen=True)
class ProviderFallback:
    """A requested provider that onnxruntime did not use, and why."""

    provider: str
    reason: str

    def message(self) -> str:
        """One line for a warning."""
        return f"execution provider '{self.provider}' is unavailable ({self.reason}); falling back"


@contextlib.contextmanager
def captured_native_stderr() -> Iterator[list[str]]:
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
    for line in lines:
        log.debug("onnxruntime: %s", line)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_LIBRARY_ERROR = re.compile(r"with error: (?P<reason>[^\n]+?)\s*$")


def _strip_ansi(text: str) -> str:
    return _ANSI.sub("", text).strip()


def _reason_from_log(spec: ProviderSpec, lines: Sequence[str]) -> str:
    """The most specific line onnxruntime logged about `spec` failing to load."""
    library = f"libonnxruntime_providers_{spec.short}"
    for line in lines:
        if library in line:
            match = _LIBRARY_ERROR.search(line)
            return match.group("reason") if match else line
    for line in lines:
        if spec.ort_name.replace("ExecutionProvider", "") in line and ("Failed" in line or "Error" in line):
            return line
    if spec.ort_name not in ort.get_available_providers():
        return f"the installed onnxruntime package was built without {spec.ort_name}"
    return "onnxruntime did not enable it for this model"


def _reason_from_exception(exc: BaseException) -> str:
    text = _strip_ansi(str(exc))
    match = re.search(r"libonnxruntime_providers_\w+\.so with error: ([^\n]+)", text)
    if match:
        return match.group(1).strip()
    tail = text.split("\n")[0]
    return tail.split(" void ")[-1].split("] ")[-1][:300]


def create_session(
    model: str | bytes,
    specs: Sequence[ProviderSpec],
    options: ort.SessionOptions,
    provider_options: Mapping[str, Mapping[str, Any]] | None = None,
    strict: bool = False,
) -> tuple[ort.InferenceSession, list[ProviderFallback]]:
    """Create a session on the first usable providers of `specs`, reporting each one that was dropped."""
    remaining = list(specs)
    fallbacks: list[ProviderFallback] = []
    origin = model if isinstance(model, str) else "<bytes>"
    while remaining:
        providers = [(s.ort_name, {**s.options, **(provider_options or {}).get(s.short, {})}) for s in remaining]
        try:
            with captured_native_stderr() as lines:
                session = ort.InferenceSession(model, options, providers=providers, enable_fallback=0)
        except Exception as exc:  # noqa: BLE001 - classified below; never swallowed
            failed = _provider_in_error(exc, remaining)
            if failed is None:
                raise BadModelError(_model_load_message(origin, exc)) from None
            fallbacks.append(ProviderFallback(failed.short, _reason_from_exception(exc)))
            remaining.remove(failed)
            continue
        used = set(session.get_providers())
        fallbacks.extend(
            ProviderFallback(s.short, _reason_from_log(s, lines)) for s in remaining if s.ort_name not in used
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
    detail = _strip_ansi(str(exc)).splitlines()[0] if str(exc) else type(exc).__name__
    detail = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", detail)
    return f"model '{origin}' could not be loaded by onnxruntime ({detail}); check the file is a complete ONNX model or re-export it"
