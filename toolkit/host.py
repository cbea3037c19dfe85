"""The machine a measurement ran on, and the int8 kernel path onnxruntime takes there.

int8 accuracy is a property of the file *and* the CPU. onnxruntime's MLAS picks its u8s8 GEMM kernel by
instruction set: on AVX2 and AVX-512BW without VNNI it multiplies uint8 activations by int8 weights with
``vpmaddubsw``, which sums pairs of products into int16 *with saturation*, so the same int8 file scores lower
there than on a VNNI, AVX-VNNI or AMX host, which accumulate in int32. Every validation therefore records the
host (`Host`), and loading an int8 variant on a host whose int8 path no validation covers logs a warning that
names `edge verify`, the check to run on the device itself.

Detection reads ``/proc/cpuinfo`` (x86 ``flags``, ARM ``Features``); it is a pure function of that text so it is
tested from fixture texts, never from the test machine's own CPU.
"""

from __future__ import annotations

import functools
import importlib.metadata
import platform
from collections.abc import Iterable
from pathlib import Path

from toolkit.manifest import Host, ModelPackage, Variant

__all__ = [
    "INTEGER_PRECISIONS",
    "SATURATING_INT8_PATHS",
    "current_host",
    "int8_path",
    "parse_cpuinfo",
    "unvalidated_host_warning",
    "validated_hosts",
]

CPUINFO = Path("/proc/cpuinfo")

# Most capable first: MLAS takes the first one the CPU has. (flags that must all be present, path name)
_X86_PATHS: tuple[tuple[frozenset[str], str], ...] = (
    (frozenset({"amx_int8", "amx_tile"}), "amx"),
    (frozenset({"avx512_vnni", "avx512bw"}), "avx512-vnni"),
    (frozenset({"avx_vnni", "avx2"}), "avx-vnni"),
    (frozenset({"avx512bw"}), "avx512"),
    (frozenset({"avx2"}), "avx2"),
    (frozenset({"sse4_1"}), "sse4.1"),
)
_ARM_PATHS: tuple[tuple[frozenset[str], str], ...] = (
    (
        frozenset({"sme"}),
        "arm-sme",
    ),  # onnxruntime's KleidiAI SME kernels replace MLAS's where the CPU has SME
    (frozenset({"i8mm"}), "arm-i8mm"),
    (frozenset({"asimddp"}), "arm-dotprod"),
    (frozenset({"asimd"}), "arm-neon"),
)
# (CPU implementer, CPU part) from an arm64 /proc/cpuinfo, which names no model: the cores edge devices ship with.
_ARM_PARTS: dict[tuple[int, int], str] = {
    (0x41, 0xD03): "ARM Cortex-A53",
    (0x41, 0xD04): "ARM Cortex-A35",
    (0x41, 0xD05): "ARM Cortex-A55",
    (0x41, 0xD07): "ARM Cortex-A57",
    (0x41, 0xD08): "ARM Cortex-A72",
    (0x41, 0xD09): "ARM Cortex-A73",
    (0x41, 0xD0A): "ARM Cortex-A75",
    (0x41, 0xD0B): "ARM Cortex-A76",
    (0x41, 0xD0C): "ARM Neoverse-N1",
    (0x41, 0xD0D): "ARM Cortex-A77",
    (0x41, 0xD40): "ARM Neoverse-V1",
    (0x41, 0xD41): "ARM Cortex-A78",
    (0x41, 0xD49): "ARM Neoverse-N2",
    (0x41, 0xD4F): "ARM Neoverse-V2",
}
SATURATING_INT8_PATHS = frozenset({"avx512", "avx2", "sse4.1"})
"""Paths whose u8s8 kernels saturate int16 pair sums: full-range int8 weights lose accuracy there."""
INTEGER_PRECISIONS = frozenset({"int8", "int4"})
"""Precisions whose CPU kernels compute in int8 (int4 MatMulNBits runs at accuracy level 4, int8 compute)."""


def int8_path(flags: Iterable[str], arch: str) -> str:
    """The int8 kernel class onnxruntime's MLAS uses on a CPU with `flags` (x86) or features (ARM)."""
    present = set(flags)
    is_arm = arch.lower() in ("aarch64", "arm64") or arch.lower().startswith("arm")
    table = _ARM_PATHS if is_arm else _X86_PATHS
    for needed, name in table:
        if needed <= present:
            return name
    return "arm-generic" if is_arm else "generic"


def _field(line: str) -> tuple[str, str]:
    key, _, value = line.partition(":")
    return key.strip().lower(), value.strip()


def parse_cpuinfo(text: str, arch: str) -> tuple[str, str]:
    """(CPU model, int8 path) from the text of ``/proc/cpuinfo`` on an `arch` machine (first processor only)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # the first processor's block is enough: all cores of a host share one ISA here
            continue
        key, value = _field(line)
        fields.setdefault(key, value)
    flags = (fields.get("flags") or fields.get("features") or "").split()
    model = fields.get("model name") or fields.get("hardware") or fields.get("cpu model")
    if not model and "cpu implementer" in fields:
        model = _arm_part_name(fields["cpu implementer"], fields.get("cpu part", "?"))
    return model or platform.processor() or arch, int8_path(flags, arch)


def _arm_part_name(implementer: str, part: str) -> str:
    try:
        known = _ARM_PARTS.get((int(implementer, 16), int(part, 16)))
    except ValueError:
        known = None
    return known or f"ARM implementer {implementer} part {part}"


@functools.lru_cache(maxsize=1)
def _this_cpu() -> tuple[str, str, str]:
    arch = platform.machine() or "unknown"
    try:
        text = CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return platform.processor() or arch, arch, "unknown"  # no /proc (macOS, Windows): path not known
    model, path = parse_cpuinfo(text, arch)
    return model, arch, path


def _onnxruntime_version() -> str:
    for dist in ("onnxruntime-gpu", "onnxruntime"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown"


def current_host(provider: str = "cpu") -> Host:
    """This machine as a `Host` record, for results measured here on `provider`."""
    model, arch, path = _this_cpu()
    return Host(cpu=model, arch=arch, int8_path=path, onnxruntime=_onnxruntime_version(), provider=provider)


def unvalidated_host_warning(package: ModelPackage, file_name: str, provider: str, here: Host) -> str | None:
    """The warning to log when the integer variant in `file_name` runs on `provider` on `here`, whose int8 path no
    recorded validation covers; None when one does, the variant is not integer, or no host was recorded."""
    manifest = package.manifest
    variant = next((v for v in manifest.variants.values() if v.file == file_name), None)
    if variant is None or variant.precision not in INTEGER_PRECISIONS or provider != "cpu":
        return None
    hosts = [h for h in validated_hosts(variant) if h.provider == "cpu"]
    if not hosts or any(h.int8_path == here.int8_path for h in hosts):
        return None
    seen = ", ".join(sorted({h.int8_path for h in hosts}))
    return (
        f"variant '{variant.name}' of '{manifest.name}' was validated on {seen} CPUs only and this host's int8 path "
        f"is {here.int8_path}: int8 accuracy differs between CPUs; run `edge verify {package.path} --variant "
        f"{variant.name}` here to measure it"
    )


def validated_hosts(variant: Variant) -> list[Host]:
    """Every host `variant` has a recorded validation from."""
    return [
        v.host for v in (variant.validation, *variant.verifications) if v is not None and v.host is not None
    ]
