"""`edge doctor`'s checks: why a GPU provider would (not) run here, each problem with its fix.

Pure checks returning frozen dataclasses; nothing is printed. The checks look at the installed
onnxruntime packages (and the CPU/GPU package conflict), the providers compiled in versus the ones
that can create a session (a tiny in-memory model per provider), the CUDA, cuDNN and TensorRT
libraries the provider libraries need (read from their ELF headers, then loaded to learn versions),
the GPU (``nvidia-smi``) and the CPU's instruction sets and what they mean for int8.
"""

from __future__ import annotations

import ctypes
import glob
import os
import platform
import shutil
import site
import struct
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import onnxruntime as ort

from toolkit.providers import (
    PROVIDERS,
    OrtPackage,
    nvidia_pip_packages,
    onnxruntime_packages,
    preload_nvidia_libraries,
    probe_provider,
)

__all__ = [
    "CpuInfo",
    "DoctorReport",
    "Finding",
    "GpuInfo",
    "LibraryStatus",
    "ProviderStatus",
    "check_cpu",
    "check_gpus",
    "check_libraries",
    "check_providers",
    "needed_libraries",
    "run_doctor",
]

Level = Literal["ok", "info", "warn", "error"]


@dataclass(frozen=True)
class Finding:
    """One line of the diagnosis: what was found and, for a problem, the fix."""

    level: Level
    topic: str
    message: str
    fix: str | None = None


@dataclass(frozen=True)
class ProviderStatus:
    """A provider of the table: compiled into the installed onnxruntime, and whether a session works."""

    name: str
    ort_name: str
    compiled: bool
    usable: bool
    reason: str | None = None


@dataclass(frozen=True)
class LibraryStatus:
    """A shared library a provider needs: where the loader found it, its version, or why it failed."""

    soname: str
    component: str
    needed_by: tuple[str, ...]
    loadable: bool
    path: str | None = None
    version: str | None = None
    error: str | None = None
    found_elsewhere: str | None = None  # on disk but not on the loader's path


@dataclass(frozen=True)
class GpuInfo:
    """One GPU as ``nvidia-smi`` reports it."""

    index: int
    name: str
    driver: str
    memory_mib: int | None
    compute_capability: str | None


@dataclass(frozen=True)
class CpuInfo:
    """The CPU, its instruction sets that matter for inference, and what they mean for int8."""

    model: str
    cores: int
    isa: tuple[str, ...]
    int8: str


@dataclass(frozen=True)
class DoctorReport:
    """Everything `edge doctor` found, and the findings (problems with fixes) derived from it."""

    onnxruntime: str
    build_cuda: str | None
    packages: tuple[OrtPackage, ...]
    nvidia_packages: tuple[OrtPackage, ...]
    providers: tuple[ProviderStatus, ...]
    libraries: tuple[LibraryStatus, ...]
    gpus: tuple[GpuInfo, ...]
    cpu: CpuInfo
    findings: tuple[Finding, ...]

    @property
    def problems(self) -> tuple[Finding, ...]:
        """Findings at warn or error level."""
        return tuple(f for f in self.findings if f.level in ("warn", "error"))


# --------------------------------------------------------------------------------------------------
# Providers


def check_providers() -> tuple[ProviderStatus, ...]:
    """Each provider of the table: compiled in, and usable (a tiny session on it alone works)."""
    compiled = set(ort.get_available_providers())
    statuses = []
    for spec in PROVIDERS.values():
        if spec.ort_name not in compiled:
            statuses.append(ProviderStatus(spec.short, spec.ort_name, False, False, None))
            continue
        reason = probe_provider(spec.short)
        statuses.append(ProviderStatus(spec.short, spec.ort_name, True, reason is None, reason))
    return tuple(statuses)


# --------------------------------------------------------------------------------------------------
# Libraries


_SYSTEM_LIBRARIES = ("libc.", "libm.", "libdl.", "librt.", "libpthread.", "libstdc++", "libgcc_s", "ld-linux")

_COMPONENTS = (
    ("libcudart", "CUDA runtime"),
    ("libcublasLt", "cuBLASLt"),
    ("libcublas", "cuBLAS"),
    ("libcurand", "cuRAND"),
    ("libcufft", "cuFFT"),
    ("libcudnn", "cuDNN"),
    ("libcuda.", "NVIDIA driver (libcuda)"),
    ("libnvinfer", "TensorRT"),
    ("libnvonnxparser", "TensorRT ONNX parser"),
)


def _component(soname: str) -> str:
    return next((name for prefix, name in _COMPONENTS if soname.startswith(prefix)), soname)


def needed_libraries(path: str | Path) -> tuple[str, ...]:
    """The DT_NEEDED entries of a 64-bit little-endian ELF shared library (empty for anything else)."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return ()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return ()
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    for section in sections:
        if section[1] != 6:  # SHT_DYNAMIC
            continue
        offset, size, link = section[4], section[5], section[6]
        strtab = sections[link][4]
        names = []
        for entry in range(offset, offset + size, 16):
            tag, value = struct.unpack_from("<qQ", data, entry)
            if tag == 0:
                break
            if tag == 1:  # DT_NEEDED
                end = data.index(b"\0", strtab + value)
                names.append(data[strtab + value : end].decode())
        return tuple(names)
    return ()


def _provider_library(short: str) -> Path | None:
    capi = Path(ort.__file__).parent / "capi"
    for pattern in (f"libonnxruntime_providers_{short}.so", f"onnxruntime_providers_{short}.dll"):
        if (capi / pattern).is_file():
            return capi / pattern
    return None


def _cuda_major() -> str | None:
    version = getattr(ort, "cuda_version", None) or ""
    return version.split(".")[0] or None


def _required_libraries() -> dict[str, list[str]]:
    """soname -> providers needing it, read from the provider libraries onnxruntime ships."""
    required: dict[str, list[str]] = {}
    for short in ("cuda", "tensorrt"):
        library = _provider_library(short)
        if library is None:
            continue
        for soname in needed_libraries(library):
            if not soname.startswith(_SYSTEM_LIBRARIES):
                required.setdefault(soname, []).append(short)
    if _provider_library("cuda") is not None:
        # The CUDA provider opens cuDNN when a model needs it (convolutions, ...), not at load time.
        cudnn = next((s for s in required if s.startswith("libcudnn")), "libcudnn.so.9")
        users = required.setdefault(cudnn, [])
        if "cuda" not in users:
            users.insert(0, "cuda")
    return required


def _search_dirs() -> list[str]:
    dirs = [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if d]
    for root in [*site.getsitepackages(), site.getusersitepackages()]:
        dirs.extend(sorted(glob.glob(os.path.join(root, "nvidia", "*", "lib"))))
        dirs.extend(sorted(glob.glob(os.path.join(root, "tensorrt_libs"))))
    dirs.extend(sorted(glob.glob("/usr/local/cuda*/lib*")))
    dirs.extend(sorted(glob.glob("/usr/lib/x86_64-linux-gnu")))
    return dirs


def _loaded_path(soname: str) -> str | None:
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            for line in maps:
                if soname in line and "/" in line:
                    return line[line.index("/") :].strip()
    except OSError:
        return None
    return None


def _int_out(library: ctypes.CDLL, function: str, *args: int) -> int | None:
    try:
        call = getattr(library, function)
    except AttributeError:
        return None
    value = ctypes.c_int(0)
    return value.value if call(*args, ctypes.byref(value)) == 0 else None


def _cuda_style(value: int | None) -> str | None:
    return f"{value // 1000}.{(value % 1000) // 10}" if value else None


def _version(soname: str, library: ctypes.CDLL) -> str | None:
    """The library's own version, from the call each NVIDIA library provides for it."""
    if soname.startswith("libcudart"):
        return _cuda_style(_int_out(library, "cudaRuntimeGetVersion"))
    if soname.startswith("libcuda."):
        driver = _cuda_style(_int_out(library, "cuDriverGetVersion"))
        return f"supports CUDA {driver}" if driver else None
    if soname.startswith("libcublas") and not soname.startswith("libcublasLt"):
        parts = [_int_out(library, "cublasGetProperty", kind) for kind in (0, 1, 2)]
        return ".".join(str(p) for p in parts) if None not in parts else None
    if soname.startswith("libcudnn"):
        library.cudnnGetVersion.restype = ctypes.c_size_t
        value = int(library.cudnnGetVersion())
        return f"{value // 10000}.{(value % 10000) // 100}.{value % 100}"
    if soname.startswith("libnvinfer"):
        library.getInferLibVersion.restype = ctypes.c_int
        value = int(library.getInferLibVersion())
        return f"{value // 10000}.{(value // 100) % 100}.{value % 100}"
    return None


def check_libraries() -> tuple[LibraryStatus, ...]:
    """Load each CUDA / cuDNN / TensorRT library the provider libraries need; report path, version, error."""
    if not sys.platform.startswith("linux"):
        return ()
    preload_nvidia_libraries()
    statuses = []
    dirs = _search_dirs()
    for soname, users in _required_libraries().items():
        try:
            library = ctypes.CDLL(soname)
        except OSError as exc:
            elsewhere = next((d for d in dirs if os.path.isfile(os.path.join(d, soname))), None)
            error = str(exc).strip()
            statuses.append(
                LibraryStatus(soname, _component(soname), tuple(users), False, None, None, error, elsewhere)
            )
            continue
        try:
            version = _version(soname, library)
        except (AttributeError, OSError, ValueError):
            version = None
        statuses.append(
            LibraryStatus(soname, _component(soname), tuple(users), True, _loaded_path(soname), version)
        )
    return tuple(statuses)


# --------------------------------------------------------------------------------------------------
# GPU and CPU


def check_gpus(
    runner: Callable[[Sequence[str]], str] | None = None,
) -> tuple[tuple[GpuInfo, ...], str | None]:
    """GPUs from ``nvidia-smi``; returns (gpus, why none were listed)."""
    if runner is None:
        if shutil.which("nvidia-smi") is None:
            return (
                (),
                "nvidia-smi not found: no NVIDIA driver is installed (or this machine has no NVIDIA GPU)",
            )

        def runner(cmd: Sequence[str]) -> str:
            return subprocess.run(list(cmd), capture_output=True, text=True, timeout=20, check=True).stdout

    query = "index,name,driver_version,memory.total,compute_cap"
    try:
        text = runner(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits"])
    except (OSError, subprocess.SubprocessError) as exc:
        return (), f"nvidia-smi failed ({exc}); the NVIDIA driver is not working"
    gpus = []
    for line in text.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 5:
            continue
        memory = int(parts[3]) if parts[3].isdigit() else None
        gpus.append(GpuInfo(int(parts[0]), parts[1], parts[2], memory, parts[4] or None))
    return tuple(gpus), None if gpus else "nvidia-smi lists no GPU"


_ISA = {
    "avx2": "AVX2",
    "avx512f": "AVX-512",
    "avx512_vnni": "AVX-512 VNNI",
    "avx_vnni": "AVX-VNNI",
    "avx512_bf16": "AVX-512 BF16",
    "amx_int8": "AMX-INT8",
    "amx_bf16": "AMX-BF16",
    "asimd": "NEON",
    "asimddp": "NEON dot product",
    "i8mm": "int8 matrix multiply (I8MM)",
    "sve": "SVE",
}


def int8_meaning(isa: Sequence[str]) -> str:
    """What the instruction sets mean for int8 models with onnxruntime on this CPU."""
    found = set(isa)
    if "AMX-INT8" in found:
        return "AMX-INT8: int8 matrix tiles; int8 models are typically several times faster than fp32"
    if found & {"AVX-512 VNNI", "AVX-VNNI"}:
        return "VNNI: int8 dot products in one instruction; int8 is typically 2-4x faster than fp32"
    if "AVX2" in found or "AVX-512" in found:
        return (
            "AVX2/AVX-512 without VNNI: int8 is faster than fp32 but u8s8 kernels can saturate; "
            "quantize with reduce_range (per onnxruntime's docs) or check accuracy"
        )
    if found & {"NEON dot product", "int8 matrix multiply (I8MM)"}:
        return "ARM dot-product/I8MM: fast int8 kernels; int8 is typically 2-3x faster than fp32"
    if "NEON" in found:
        return "NEON without dot product: int8 mostly saves memory; speed-ups are small"
    return "no SIMD int8 support detected: int8 mostly saves memory, not time"


def check_cpu(cpuinfo: str | None = None) -> CpuInfo:
    """The CPU model and the instruction sets that matter for inference (Linux /proc/cpuinfo)."""
    text = cpuinfo
    if text is None:
        try:
            text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            text = ""
    model, flags = platform.processor() or platform.machine(), set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and value.strip():
            model = value.strip()
        elif key in ("flags", "features"):
            flags.update(value.split())
    isa = tuple(label for flag, label in _ISA.items() if flag in flags)
    return CpuInfo(model, os.cpu_count() or 1, isa, int8_meaning(isa))


# --------------------------------------------------------------------------------------------------
# The diagnosis


def _findings(
    packages: Sequence[OrtPackage],
    nvidia: Sequence[OrtPackage],
    providers: Sequence[ProviderStatus],
    libraries: Sequence[LibraryStatus],
    gpus: Sequence[GpuInfo],
    gpu_note: str | None,
    cpu: CpuInfo,
) -> list[Finding]:
    findings: list[Finding] = []
    cuda = _cuda_major() or "12"
    extra = "pip install 'edge-toolkit[cuda]' (onnxruntime-gpu[cuda,cudnn]: the CUDA and cuDNN wheels)"
    names = [p.name for p in packages]
    if len(packages) > 1:
        findings.append(
            Finding(
                "error",
                "packages",
                f"{' and '.join(names)} are installed together and overwrite each other's onnxruntime module",
                f"pip uninstall -y {' '.join(names)} && pip install onnxruntime-gpu  (or onnxruntime for CPU only)",
            )
        )
    elif packages:
        findings.append(Finding("ok", "packages", f"{packages[0].name} {packages[0].version}"))
    for status in providers:
        if status.usable:
            findings.append(Finding("ok", "providers", f"{status.name}: usable"))
        elif status.compiled:
            fix = _provider_fix(status, libraries, gpus, extra)
            findings.append(
                Finding(
                    "error", "providers", f"{status.name}: compiled in but unusable: {status.reason}", fix
                )
            )
    for library in libraries:
        if library.loadable:
            version = f" {library.version}" if library.version else ""
            findings.append(
                Finding("ok", "libraries", f"{library.component}{version}: {library.path or library.soname}")
            )
            continue
        findings.append(
            Finding(
                "error",
                "libraries",
                f"{library.component} ({library.soname}, needed by {', '.join(library.needed_by)}) not found: "
                f"{library.error}",
                _library_fix(library, cuda, extra),
            )
        )
    if gpus:
        for gpu in gpus:
            memory = f", {gpu.memory_mib} MiB" if gpu.memory_mib else ""
            cc = f", compute capability {gpu.compute_capability}" if gpu.compute_capability else ""
            findings.append(
                Finding("ok", "gpu", f"GPU {gpu.index}: {gpu.name}{memory}{cc}, driver {gpu.driver}")
            )
    else:
        findings.append(
            Finding(
                "warn",
                "gpu",
                gpu_note or "no GPU found",
                "on a machine without an NVIDIA GPU use --providers cpu",
            )
        )
    isa = ", ".join(cpu.isa) or "none detected"
    findings.append(Finding("info", "cpu", f"{cpu.model}, {cpu.cores} cores; {isa}"))
    findings.append(Finding("info", "cpu", f"int8: {cpu.int8}"))
    if nvidia:
        listed = ", ".join(f"{p.name} {p.version}" for p in nvidia)
        findings.append(
            Finding("info", "libraries", f"NVIDIA pip wheels (preloaded with preload_dlls()): {listed}")
        )
    return findings


def _provider_fix(
    status: ProviderStatus, libraries: Sequence[LibraryStatus], gpus: Sequence[GpuInfo], extra: str
) -> str:
    missing = [lib.component for lib in libraries if not lib.loadable and status.name in lib.needed_by]
    if missing:
        return f"install the missing {', '.join(dict.fromkeys(missing))} (see the library lines)"
    if not gpus:
        return "this machine has no usable NVIDIA GPU; use --providers cpu"
    return "run with -vv to see onnxruntime's log for this provider"


def _library_fix(library: LibraryStatus, cuda: str, extra: str) -> str:
    if library.found_elsewhere:
        return f"it is in {library.found_elsewhere}: export LD_LIBRARY_PATH={library.found_elsewhere}:$LD_LIBRARY_PATH"
    if library.soname.startswith("libcuda."):
        return "install the NVIDIA driver (then nvidia-smi lists the GPU); without a GPU use --providers cpu"
    if library.soname.startswith(("libnvinfer", "libnvonnxparser")):
        major = library.soname.rsplit(".so.", 1)[-1]
        return (
            f"install TensorRT {major} for CUDA {cuda} (pip install 'tensorrt-cu{cuda}>={major},<{int(major) + 1}' "
            "or NVIDIA's tarball) and add its lib directory to LD_LIBRARY_PATH"
        )
    if library.soname.startswith("libcudnn"):
        return f"{extra}, or install cuDNN {library.soname.rsplit('.so.', 1)[-1]} for CUDA {cuda}"
    return f"{extra}, or install the CUDA {cuda} toolkit and add its lib directory to LD_LIBRARY_PATH"


def run_doctor() -> DoctorReport:
    """Run every check and derive the findings."""
    packages = onnxruntime_packages()
    nvidia = nvidia_pip_packages()
    providers = check_providers()  # before check_libraries loads anything into this process
    libraries = check_libraries()
    gpus, gpu_note = check_gpus()
    cpu = check_cpu()
    findings = _findings(packages, nvidia, providers, libraries, gpus, gpu_note, cpu)
    return DoctorReport(
        onnxruntime=ort.__version__,
        build_cuda=getattr(ort, "cuda_version", None) or None,
        packages=packages,
        nvidia_packages=nvidia,
        providers=providers,
        libraries=libraries,
        gpus=gpus,
        cpu=cpu,
        findings=tuple(findings),
    )
