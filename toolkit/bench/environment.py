"""The machine and software a benchmark ran on: CPU, instruction sets, onnxruntime build, threads."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

__all__ = ["ISA_FLAGS", "Environment", "collect_environment", "cpu_info"]

# /proc/cpuinfo flag -> how we print it.
ISA_FLAGS = {
    "avx2": "AVX2",
    "fma": "FMA",
    "avx512f": "AVX-512F",
    "avx512_vnni": "AVX-512 VNNI",
    "avx_vnni": "AVX-VNNI",
    "avx512_bf16": "AVX-512 BF16",
    "avx512_fp16": "AVX-512 FP16",
    "amx_tile": "AMX",
    "amx_int8": "AMX-INT8",
    "amx_bf16": "AMX-BF16",
    "asimd": "NEON",
    "asimddp": "NEON dot-product",
}

_ORT_DISTRIBUTIONS = (
    "onnxruntime-gpu",
    "onnxruntime",
    "onnxruntime-openvino",
    "onnxruntime-directml",
    "onnxruntime-silicon",
    "onnxruntime-qnn",
)


@dataclass(frozen=True)
class Environment:
    """Everything a reader needs to reproduce or discount a benchmark's numbers."""

    cpu_model: str
    logical_cores: int
    physical_cores: int | None
    isa: tuple[str, ...]
    machine: str
    os: str
    python: str
    numpy: str
    onnxruntime: str
    onnxruntime_package: str
    available_providers: tuple[str, ...]
    intra_op_threads: str
    inter_op_threads: str
    graph_optimization: str
    thread_env: tuple[tuple[str, str], ...] = ()
    torch: str | None = None
    torch_threads: int | None = None


def cpu_info(path: Path = Path("/proc/cpuinfo")) -> tuple[str, int | None, tuple[str, ...]]:
    """CPU model name, physical core count and the instruction sets of interest, from /proc/cpuinfo."""
    model = platform.processor() or platform.machine()
    flags: set[str] = set()
    cores: set[tuple[str, str]] = set()
    if path.is_file():
        physical = core = ""
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = (part.strip() for part in line.partition(":"))
            if key in ("model name", "Model", "cpu model") and value:
                model = value
            elif key in ("flags", "Features"):
                flags.update(value.split())
            elif key == "physical id":
                physical = value
            elif key == "core id":
                core = value
                cores.add((physical, core))
    isa = tuple(label for flag, label in ISA_FLAGS.items() if flag in flags)
    return model, (len(cores) or None), isa


def _ort_package() -> str:
    for name in _ORT_DISTRIBUTIONS:
        try:
            return f"{name} {importlib.metadata.version(name)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown"


def collect_environment(
    threads: int | None, graph_optimization: str, torch_threads: int | None = None
) -> Environment:
    """Describe this machine, the installed onnxruntime and the session settings the benchmark used."""
    model, physical, isa = cpu_info()
    logical = os.cpu_count() or 1
    torch_version = None
    if torch_threads is not None:
        try:
            torch_version = importlib.metadata.version("torch")
        except importlib.metadata.PackageNotFoundError:
            torch_version = None
    return Environment(
        cpu_model=model,
        logical_cores=logical,
        physical_cores=physical,
        isa=isa,
        machine=platform.machine(),
        os=f"{platform.system()} {platform.release()}",
        python=platform.python_version(),
        numpy=importlib.metadata.version("numpy"),
        onnxruntime=ort.__version__,
        onnxruntime_package=_ort_package(),
        available_providers=tuple(ort.get_available_providers()),
        intra_op_threads=str(threads)
        if threads
        else f"onnxruntime default ({physical or logical} physical cores)",
        inter_op_threads="1" if threads else "onnxruntime default",
        graph_optimization=graph_optimization,
        thread_env=tuple(
            (name, os.environ[name])
            for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
            if name in os.environ
        ),
        torch=torch_version,
        torch_threads=torch_threads,
    )
