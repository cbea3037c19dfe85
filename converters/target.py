"""Emulated device targets: an aarch64 Linux userland run through qemu-user, built once from registry packages.

`prepare("linux-aarch64")` assembles, in a cache folder, everything `edge verify --target` needs to run a
package on an emulated ARM CPU without the device and without root:

- Debian's ``qemu-user-static`` (its ``qemu-aarch64-static`` binary, unpacked from the .deb);
- an arm64 Python with the libraries it loads, unpacked from Debian's arm64 packages (no chroot, no binfmt:
  the interpreter runs as ``qemu-aarch64-static -L <root> <python>``);
- PyPI's aarch64 wheels of the toolkit's runtime dependencies (onnxruntime's CPU package, numpy, tokenizers, ...),
  at the versions installed on this host, and a copy of `toolkit` itself.

Debian's packages come through a private apt configuration in the cache (its own lists and state, the host's
sources), so the host's dpkg architectures and apt lists are left alone. The folder is built beside its final
name and renamed into place, so a target is whole or absent.

qemu 7.2 (Debian 12) passes the host's x86 ``/proc/cpuinfo`` through to the guest, and onnxruntime's CPU
detection crashes on it. qemu's ``-L`` prefix is searched before the host for every absolute path the guest
opens, so each emulated CPU gets a root of its own (symlinks to the shared one) holding a ``/proc/cpuinfo``
whose ``Features`` line is decoded from the hardware capabilities qemu gives that ``-cpu`` (``asimddp``:
dot-product, ``i8mm``), which is what `toolkit.host` then reads.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from toolkit.atomic import atomic_write_text, replace_directory, staging_directory
from toolkit.errors import BadInputError, TargetError
from toolkit.manifest import Host, ModelPackage
from toolkit.target_worker import load_samples, save_samples

__all__ = [
    "CPUS",
    "TARGETS",
    "EmulatedCpu",
    "EmulatedRun",
    "Emulation",
    "PreparedTarget",
    "TargetSpec",
    "cache_root",
    "open_target",
    "prepare",
    "run_variants",
]

log = logging.getLogger(__name__)

Say = Callable[[str], None]


@dataclass(frozen=True)
class TargetSpec:
    """What one emulated target is made of: the Debian architecture, qemu binary and Python ABI of its wheels."""

    name: str
    debian_arch: str
    qemu_binary: str
    machine: str  # platform.machine() inside the target, for dependency markers
    wheel_platforms: tuple[str, ...]
    debian_packages: tuple[str, ...]


# Python 3.11 and the shared libraries its standard library, onnxruntime (libstdc++) and numpy load.
_BOOKWORM_PYTHON = (
    "python3.11-minimal",
    "libpython3.11-minimal",
    "libpython3.11-stdlib",
    "libc6",
    "libgcc-s1",
    "libstdc++6",
    "zlib1g",
    "libexpat1",
    "libffi8",
    "libssl3",
    "libbz2-1.0",
    "liblzma5",
    "libuuid1",
    "libcrypt1",
    "libzstd1",
    "libsqlite3-0",
    "libncursesw6",
    "libtinfo6",
)

TARGETS: dict[str, TargetSpec] = {
    "linux-aarch64": TargetSpec(
        name="linux-aarch64",
        debian_arch="arm64",
        qemu_binary="qemu-aarch64-static",
        machine="aarch64",
        # pip matches these tags literally: onnxruntime ships manylinux_2_28, numpy and tokenizers 2014 (2_17) wheels
        wheel_platforms=("manylinux_2_28_aarch64", "manylinux_2_27_aarch64", "manylinux2014_aarch64"),
        debian_packages=_BOOKWORM_PYTHON,
    ),
}


@dataclass(frozen=True)
class EmulatedCpu:
    """A qemu ``-cpu`` model and the MIDR fields its generated ``/proc/cpuinfo`` shows."""

    qemu_name: str
    implementer: int
    part: int
    variant: int = 0
    revision: int = 0


CPUS: dict[str, EmulatedCpu] = {
    "cortex-a53": EmulatedCpu(
        "cortex-a53", 0x41, 0xD03, 0x0, 4
    ),  # Raspberry Pi 3, most cheap boards: NEON only
    "cortex-a76": EmulatedCpu("cortex-a76", 0x41, 0xD0B, 0x4, 1),  # Raspberry Pi 5: dot-product
    "neoverse-n1": EmulatedCpu("neoverse-n1", 0x41, 0xD0C, 0x3, 1),  # Graviton2, Ampere Altra: dot-product
    "max-no-sme": EmulatedCpu(
        "max,sme=off", 0x00, 0x051, 0x0, 0
    ),  # i8mm and SVE2 without SME: Graviton3/4-like
    "max": EmulatedCpu("max", 0x00, 0x051, 0x0, 0),  # every feature qemu emulates (i8mm, SVE2, SME)
}

# Linux arm64 hwcap bit names (arch/arm64/include/uapi/asm/hwcap.h), in bit order, as /proc/cpuinfo prints them.
_HWCAP = (  # noqa: SIM905 - the names as one line reads like /proc/cpuinfo
    "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc dcpop "
    "sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs sb paca pacg"
).split()
_HWCAP2 = (  # noqa: SIM905
    "dcpodp sve2 sveaes svepmull svebitperm svesha3 svesm4 flagm2 frint svei8mm svef32mm svef64mm svebf16 i8mm "
    "bf16 dgh rng bti mte ecv afp rpres mte3 sme sme_i16i64 sme_f64f64 sme_i8i32 sme_f16f32 sme_b16f32 "
    "sme_f32f32 sme_fa64 wfxt ebf16 sve_ebf16 cssc rprfm sve2p1"
).split()
_AT_HWCAP, _AT_HWCAP2 = 16, 26

_HWCAP_PROBE = (
    "import ctypes; f = ctypes.CDLL(None).getauxval; f.restype = ctypes.c_ulong; "
    f"print(f({_AT_HWCAP}), f({_AT_HWCAP2}))"
)


def feature_names(hwcap: int, hwcap2: int) -> list[str]:
    """The ``Features`` words Linux prints for the arm64 hardware-capability words `hwcap` and `hwcap2`."""
    return [n for i, n in enumerate(_HWCAP) if hwcap >> i & 1] + [
        n for i, n in enumerate(_HWCAP2) if hwcap2 >> i & 1
    ]


def cpuinfo_text(cpu: EmulatedCpu, features: Sequence[str], processors: int) -> str:
    """A ``/proc/cpuinfo`` as an arm64 Linux kernel writes it, one block per processor."""
    block = (
        "processor\t: {i}\nBogoMIPS\t: 50.00\nFeatures\t: {features}\nCPU implementer\t: {imp:#04x}\n"
        "CPU architecture: 8\nCPU variant\t: {var:#x}\nCPU part\t: {part:#05x}\nCPU revision\t: {rev}\n"
    )
    return "\n".join(
        block.format(
            i=i,
            features=" ".join(features),
            imp=cpu.implementer,
            var=cpu.variant,
            part=cpu.part,
            rev=cpu.revision,
        )
        for i in range(processors)
    )


def cache_root(override: Path | None = None) -> Path:
    """Where targets are built: `override`, else ``$EDGE_TOOLKIT_CACHE``, else ``$XDG_CACHE_HOME/edge-toolkit``."""
    if override is not None:
        return override
    if os.environ.get("EDGE_TOOLKIT_CACHE"):
        return Path(os.environ["EDGE_TOOLKIT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edge-toolkit"


def _spec(name: str) -> TargetSpec:
    if name not in TARGETS:
        raise BadInputError(f"unknown target '{name}'; choose one of: {', '.join(TARGETS)}")
    return TARGETS[name]


def _run(command: Sequence[str], what: str, env: Mapping[str, str] | None = None) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False, timeout=1800)
    except FileNotFoundError as exc:
        raise TargetError(f"{what}: {command[0]} is not on PATH; install it") from exc
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise TargetError(f"{what} failed: {detail[-1] if detail else f'exit {done.returncode}'}")
    return done.stdout


def _apt_config(root: Path, spec: TargetSpec) -> Path:
    """A private apt configuration: the host's sources, its own lists and state, the target's architecture."""
    sources = root / "etc" / "sources.list.d"
    for folder in (
        sources,
        root / "etc" / "apt.conf.d",
        root / "etc" / "preferences.d",
        root / "lists" / "partial",
    ):
        folder.mkdir(parents=True, exist_ok=True)
    for source in Path("/etc/apt/sources.list.d").glob("*.sources"):
        shutil.copy(source, sources / source.name)
    if Path("/etc/apt/sources.list").is_file():
        shutil.copy("/etc/apt/sources.list", sources / "host.list")
    (root / "status").touch()
    host_arch = _run(["dpkg", "--print-architecture"], "reading the host's Debian architecture").strip()
    config = root / "apt.conf"
    config.write_text(
        f'Dir::State "{root}";\nDir::State::Lists "{root}/lists";\nDir::State::status "{root}/status";\n'
        f'Dir::Cache "{root}/cache";\nDir::Etc::SourceList "/dev/null";\nDir::Etc::SourceParts "{sources}";\n'
        f'Dir::Etc::Parts "{root}/etc/apt.conf.d";\nDir::Etc::PreferencesParts "{root}/etc/preferences.d";\n'
        f'APT::Architectures {{ "{spec.debian_arch}"; "{host_arch}"; }};\nAcquire::Languages "none";\n'
        'APT::Sandbox::User "root";\n',
        encoding="utf-8",
    )
    return config


def _download_debs(staging: Path, spec: TargetSpec, say: Say) -> list[Path]:
    apt_root = staging / "apt"
    env = {**os.environ, "APT_CONFIG": str(_apt_config(apt_root, spec))}
    say("reading Debian's package lists")
    _run(["apt-get", "update", "-q"], "apt-get update (private lists)", env)
    debs = staging / "debs"
    debs.mkdir()
    wanted = [f"{p}:{spec.debian_arch}" for p in spec.debian_packages] + ["qemu-user-static"]
    say(f"downloading {len(wanted)} Debian packages")
    done = subprocess.run(
        ["apt-get", "download", "-q", *wanted], cwd=debs, env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise TargetError(f"apt-get download failed: {(done.stderr or done.stdout).strip().splitlines()[-1]}")
    shutil.rmtree(apt_root)  # the lists are 200 MB and only needed to resolve these names
    return sorted(debs.glob("*.deb"))


def _unpack(debs: Sequence[Path], staging: Path, spec: TargetSpec) -> None:
    sysroot = staging / "sysroot"
    unpacked = staging / "qemu-deb"
    for deb in debs:
        into = unpacked if deb.name.startswith("qemu-user-static_") else sysroot
        _run(["dpkg-deb", "-x", str(deb), str(into)], f"unpacking {deb.name}")
    shutil.move(unpacked / "usr" / "bin" / spec.qemu_binary, staging / spec.qemu_binary)
    shutil.rmtree(unpacked)  # the other architectures' emulators (about 350 MB)
    for deb in debs:
        deb.unlink()


def _python_version(sysroot: Path) -> str:
    found = sorted(
        p.name for p in (sysroot / "usr" / "bin").glob("python3.*") if re.fullmatch(r"python3\.\d+", p.name)
    )
    if not found:
        raise TargetError(
            f"no python3.X interpreter in {sysroot / 'usr' / 'bin'}; remove it and prepare again"
        )
    return found[-1].removeprefix("python")


def _installed_version(*names: str) -> str | None:
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def runtime_requirements(spec: TargetSpec, python_version: str) -> list[str]:
    """The toolkit's runtime dependencies that apply on `spec` (markers evaluated for it), pinned to the versions
    installed here (onnxruntime to onnxruntime-gpu's) so the target runs what this host runs."""
    from packaging.requirements import Requirement

    environment = {
        "platform_machine": spec.machine,
        "sys_platform": "linux",
        "platform_system": "Linux",
        "os_name": "posix",
        "python_version": python_version,
        "python_full_version": f"{python_version}.0",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "extra": "",
    }
    try:
        declared = importlib.metadata.requires("edge-toolkit") or []
    except importlib.metadata.PackageNotFoundError:
        raise TargetError(
            "edge-toolkit is not installed, so its runtime requirements are unknown; pip install it (-e . here)"
        ) from None
    pins = []
    for text in declared:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate(environment):
            continue
        same_as = (
            ("onnxruntime-gpu", "onnxruntime") if requirement.name == "onnxruntime" else (requirement.name,)
        )
        version = _installed_version(*same_as)
        pins.append(f"{requirement.name}=={version}" if version else str(requirement).split(";")[0].strip())
    return pins


def _install_wheels(staging: Path, spec: TargetSpec, python_version: str, say: Say) -> tuple[list[str], int]:
    """Download the aarch64 wheels, install them into ``site``; returns the requirements and the bytes downloaded."""
    requirements = runtime_requirements(spec, python_version)
    say(f"downloading aarch64 wheels: {', '.join(requirements)}")
    platforms = [arg for tag in spec.wheel_platforms for arg in ("--platform", tag)]
    abi = "cp" + python_version.replace(".", "")
    wheels = staging / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    target = ["--only-binary=:all:", *platforms, "--python-version", python_version, "--implementation", "cp"]
    _run(
        [*pip, "download", "-d", str(wheels), *target, "--abi", abi, *requirements], "pip download (aarch64)"
    )
    _run(
        [*pip, "install", "--no-compile", "--no-index", "--find-links", str(wheels), "--target", str(staging / "site"),
         *target, "--abi", abi, *requirements],
        "pip install --target of the aarch64 wheels",
    )  # fmt: skip
    downloaded = _folder_bytes(wheels)
    shutil.rmtree(wheels)
    return requirements, downloaded


def _toolkit_digest(source: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(source.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(source)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _copy_toolkit(site: Path) -> None:
    """Copy this `toolkit` (the runtime, pure Python) into the target's site folder, replacing an older copy."""
    import toolkit

    source = Path(toolkit.__file__).parent
    stamp = site / ".toolkit-digest"
    digest = _toolkit_digest(source)
    if stamp.is_file() and stamp.read_text("utf-8") == digest and (site / "toolkit").is_dir():
        return
    with staging_directory(site / "toolkit") as staging:
        shutil.copytree(source, staging / "toolkit", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        replace_directory(staging / "toolkit", site / "toolkit")
    atomic_write_text(stamp, digest)


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


@dataclass(frozen=True)
class TargetRecord:
    """What `prepare` built: versions, downloads and sizes, and how long it took (``target.json``)."""

    name: str
    python: str
    qemu: str
    debian_packages: dict[str, int]  # .deb file name -> bytes downloaded
    wheels: tuple[str, ...]
    download_bytes: int
    sysroot_bytes: int
    site_bytes: int
    qemu_bytes: int
    seconds: float


@dataclass(frozen=True)
class PreparedTarget:
    """A built target folder and how to run its Python under an emulated CPU."""

    root: Path
    record: TargetRecord
    spec: TargetSpec

    @property
    def qemu(self) -> Path:
        """The qemu user-mode emulator binary."""
        return self.root / self.spec.qemu_binary

    @property
    def python(self) -> Path:
        """The target's Python interpreter (an aarch64 executable: run it through `command`)."""
        return self.root / "sysroot" / "usr" / "bin" / f"python{self.record.python}"

    @property
    def site(self) -> Path:
        """The folder holding the wheels and the toolkit copy (on the target's PYTHONPATH)."""
        return self.root / "site"

    def cpu_root(self, cpu: str) -> Path:
        """The ``-L`` prefix for `cpu`: the shared userland plus that CPU's ``/proc/cpuinfo``; made on first use."""
        if cpu not in CPUS:
            raise BadInputError(
                f"unknown CPU '{cpu}' for target {self.spec.name}; choose one of: {', '.join(CPUS)}"
            )
        root = self.root / "cpus" / cpu
        if (root / "proc" / "cpuinfo").is_file():
            return root
        probe = subprocess.run(
            [*self._qemu(self.root / "sysroot", cpu), "-S", "-c", _HWCAP_PROBE],
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        if probe.returncode != 0:
            raise TargetError(f"probing CPU '{cpu}' under qemu failed: {probe.stderr.strip()[-300:]}")
        hwcap, hwcap2 = (int(v) for v in probe.stdout.split())
        text = cpuinfo_text(CPUS[cpu], feature_names(hwcap, hwcap2), os.cpu_count() or 1)
        with staging_directory(root) as staging:
            for entry in (self.root / "sysroot").iterdir():
                (staging / entry.name).symlink_to(Path("..", "..", "sysroot", entry.name))
            (staging / "proc").mkdir()
            (staging / "proc" / "cpuinfo").write_text(text + "\n", "utf-8")
            replace_directory(staging, root)
        return root

    def command(self, cpu: str, args: Sequence[str]) -> list[str]:
        """The command line that runs the target's Python with `args` on the emulated `cpu`."""
        return [*self._qemu(self.cpu_root(cpu), cpu), *args]

    def _qemu(self, prefix: Path, cpu: str) -> list[str]:
        return [str(self.qemu), "-L", str(prefix), "-cpu", CPUS[cpu].qemu_name, str(self.python)]

    def environment(self) -> dict[str, str]:
        """The environment for `command`: the target's site folder first, nothing of the host's Python."""
        _copy_toolkit(self.site)  # the toolkit running here is the one that runs there
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON") and k != "VIRTUAL_ENV"}
        return {**env, "PYTHONPATH": str(self.site), "PYTHONNOUSERSITE": "1", "OMP_NUM_THREADS": "1"}


def _target_dir(name: str, cache_dir: Path | None) -> Path:
    return cache_root(cache_dir) / "targets" / name


def open_target(name: str, cache_dir: Path | None = None) -> PreparedTarget:
    """The prepared target `name`; an error naming `edge target prepare` when it is not built yet."""
    spec = _spec(name)
    root = _target_dir(name, cache_dir)
    record_path = root / "target.json"
    if not record_path.is_file():
        raise BadInputError(
            f"target {name} is not prepared in {root.parent}; run `edge target prepare {name}` first (once)"
        )
    try:
        data = json.loads(record_path.read_text("utf-8"))
        data["wheels"] = tuple(data["wheels"])
        record = TargetRecord(**data)
    except (ValueError, TypeError, KeyError) as exc:
        raise BadInputError(
            f"target {name} in {root} has an unreadable target.json ({exc}); run `edge target prepare {name} --force`"
        ) from None
    return PreparedTarget(root, record, spec)


def _check_host_tools() -> None:
    if platform.system() != "Linux":
        raise TargetError("emulated targets are built with Debian's apt and qemu-user: run this on Linux")
    for tool in ("apt-get", "dpkg-deb", "dpkg"):
        if shutil.which(tool) is None:
            raise TargetError(f"{tool} is not on PATH: preparing a target needs a Debian-based host")


def prepare(
    name: str, cache_dir: Path | None = None, *, force: bool = False, say: Say = log.info
) -> PreparedTarget:
    """Build target `name` in the cache (once; `force` rebuilds): qemu, an arm64 Python, the runtime wheels."""
    spec = _spec(name)
    target = _target_dir(name, cache_dir)
    if (target / "target.json").is_file() and not force:
        try:
            prepared = open_target(name, cache_dir)
        except BadInputError as exc:
            say(f"rebuilding {name}: {exc}")
        else:
            wanted = tuple(runtime_requirements(spec, prepared.record.python))
            if prepared.record.wheels == wanted:
                _copy_toolkit(prepared.site)
                return prepared
            say(f"rebuilding {name}: it has {', '.join(prepared.record.wheels)}, wanted {', '.join(wanted)}")
    _check_host_tools()
    started = time.perf_counter()
    with staging_directory(target) as staging:
        debs = _download_debs(staging, spec, say)
        sizes = {d.name: d.stat().st_size for d in debs}
        say("unpacking")
        _unpack(debs, staging, spec)
        python = _python_version(staging / "sysroot")
        wheels, wheel_bytes = _install_wheels(staging, spec, python, say)
        _copy_toolkit(staging / "site")
        qemu = _run([str(staging / spec.qemu_binary), "--version"], "qemu --version").splitlines()[0]
        say("compiling the target's Python files")
        _compile(staging, python)
        record = TargetRecord(
            name=name,
            python=python,
            qemu=qemu.removeprefix("qemu-aarch64 version ").strip(),
            debian_packages=sizes,
            wheels=tuple(wheels),
            download_bytes=sum(sizes.values()) + wheel_bytes,
            sysroot_bytes=_folder_bytes(staging / "sysroot"),
            site_bytes=_folder_bytes(staging / "site"),
            qemu_bytes=(staging / spec.qemu_binary).stat().st_size,
            seconds=round(time.perf_counter() - started, 1),
        )
        shutil.rmtree(staging / "debs")
        (staging / "target.json").write_text(json.dumps(asdict(record), indent=2), "utf-8")
        replace_directory(staging, target)
    return open_target(name, cache_dir)


def _compile(staging: Path, python: str) -> None:
    """Byte-compile the target's Python files with this interpreter when it is the same minor version (bytecode
    is architecture-independent), so the emulated interpreter does not compile them at every start."""
    if f"{sys.version_info.major}.{sys.version_info.minor}" != python:
        return
    for folder in (staging / "sysroot" / "usr" / "lib" / f"python{python}", staging / "site"):
        subprocess.run(
            [sys.executable, "-m", "compileall", "-q", "-j", "0", str(folder)],
            capture_output=True,
            check=False,
        )


@dataclass(frozen=True)
class Emulation:
    """Where `edge verify --target` runs: a target name, an emulated CPU, and the cache it was prepared in."""

    target: str = "linux-aarch64"
    cpu: str = "cortex-a53"
    cache_dir: Path | None = None

    def __post_init__(self) -> None:
        _spec(self.target)
        if self.cpu not in CPUS:
            raise BadInputError(
                f"unknown CPU '{self.cpu}' for target {self.target}; choose one of: {', '.join(CPUS)}"
            )


@dataclass(frozen=True)
class EmulatedRun:
    """Each variant's outputs on the feeds, computed on the emulated CPU, and that host as it saw itself."""

    outputs: dict[str, list[dict[str, np.ndarray]]]
    host: Host
    providers: tuple[str, ...]


def run_variants(
    target: PreparedTarget,
    cpu: str,
    package: ModelPackage,
    variants: Sequence[str],
    feeds: list[dict[str, np.ndarray]],
    threads: int = 1,
) -> EmulatedRun:
    """Run `variants` of `package` on `feeds` inside `target` on the emulated `cpu` (`toolkit.target_worker`)."""
    command = target.command(cpu, ["-m", "toolkit.target_worker"])
    with tempfile.TemporaryDirectory(prefix="edge-target-") as tmp:
        workdir = Path(tmp)
        request = {"package": str(package.path.resolve()), "variants": list(variants), "threads": threads}
        (workdir / "request.json").write_text(json.dumps(request), "utf-8")
        save_samples(workdir / "feeds.npz", feeds)
        done = subprocess.run(
            [*command, str(workdir)], env=target.environment(), capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            tail = done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"]
            raise TargetError(f"running {package.manifest.name} on emulated {cpu} failed: {tail[0]}")
        seen = json.loads((workdir / "host.json").read_text("utf-8"))
        outputs = {name: load_samples(workdir / f"{name}.npz") for name in variants}
    host = Host(**seen["host"])
    emulated = replace(host, cpu=f"{host.cpu} (emulated: qemu {target.record.qemu.split()[0]} -cpu {cpu})")
    return EmulatedRun(outputs, emulated, tuple(seen["providers"]))
