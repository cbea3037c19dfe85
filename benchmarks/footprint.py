"""Footprint of the runtime on a package: install size, `import toolkit` time, load time and peak RSS, with and
without the low-memory profile (`--low-memory`).

Run from the repo root:  python benchmarks/footprint.py out/minilm [--variants fp32,int8] [--repeats 3]
                         [--texts 8] [--threads 2]

Each cell (variant x profile) runs in a fresh Python process, so its import time is cold-ish (the OS file cache
is warm after the first) and its peak RSS (Linux VmHWM) is its own; the cells are interleaved across repeats and
the median of each figure printed. A cell: `import toolkit`, load the package's pipeline for the variant on the
CPU (2 threads), then embed --texts sentences at the package's max length five times. The install size is that
of the runtime-only dependency set (edge-toolkit's requirements and theirs, no torch or transformers): read from
the prepared aarch64 target's site folder when there is one (`edge target prepare linux-aarch64`), which is what
an ARM device installs, and for the same distributions in this Python.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

_CELL = r"""
import json, sys, time
started = time.perf_counter()
import toolkit
imported = time.perf_counter()
from toolkit.providers import ProviderConfig
package, variant, low_memory, texts, threads = sys.argv[1], sys.argv[2], sys.argv[3] == "1", int(sys.argv[4]), int(sys.argv[5])
pipeline = toolkit.load(package, variant=variant, threads=threads, config=ProviderConfig(providers=("cpu",), low_memory=low_memory))
loaded = time.perf_counter()
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024
rss_loaded = status("VmRSS:")
sentences = [("edge devices have little memory " * 40)[: 400 + i] for i in range(texts)]
for _ in range(5):
    pipeline.embed(sentences)
print(json.dumps({"import_s": imported - started, "load_s": loaded - imported, "rss_loaded_mb": rss_loaded,
                  "peak_mb": status("VmHWM:")}))
"""


def _distribution_bytes(dist: importlib.metadata.Distribution) -> int:
    total = 0
    for file in dist.files or ():
        path = Path(str(dist.locate_file(file)))
        if path.is_file():
            total += path.stat().st_size
    return total


def install_sizes() -> list[tuple[str, float, float | None]]:
    """(distribution, MiB in the aarch64 target, MiB here) for the runtime-only dependency set."""
    from converters.target import open_target
    from toolkit.errors import EdgeError

    try:
        site = open_target("linux-aarch64").site
    except EdgeError:
        return []
    rows = []
    for dist in sorted(
        importlib.metadata.distributions(path=[str(site)]), key=lambda d: d.metadata["Name"].lower()
    ):
        name = dist.metadata["Name"]
        here_name = "onnxruntime-gpu" if name == "onnxruntime" else name
        try:
            here: float | None = _distribution_bytes(importlib.metadata.distribution(here_name)) / 2**20
        except importlib.metadata.PackageNotFoundError:
            here = None
        rows.append((name, _distribution_bytes(dist) / 2**20, here))
    return rows


def main() -> None:
    """Measure and print the footprint table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", type=Path)
    parser.add_argument("--variants", default="fp32,int8")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--texts", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "?")
    print(f"CPU: {cpu} ({os.cpu_count()} logical), {platform.machine()}, Python {platform.python_version()}")
    variants = args.variants.split(",")
    cells = [(v, low) for v in variants for low in (False, True)]
    results: dict[tuple[str, bool], list[dict[str, float]]] = {cell: [] for cell in cells}
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    for _ in range(args.repeats):
        for variant, low in cells:
            out = subprocess.run(
                [sys.executable, "-c", _CELL, str(args.package), variant, "1" if low else "0", str(args.texts),
                 str(args.threads)],
                capture_output=True, text=True, check=True, env=env,
            )  # fmt: skip
            results[(variant, low)].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(
        f"\nmedian of {args.repeats} fresh processes per cell, interleaved; {args.texts} texts x 5 embeds, "
        f"{args.threads} threads"
    )
    print(
        f"{'variant':<8} {'profile':<11} {'import toolkit s':>16} {'load s':>7} {'RSS loaded MB':>14} {'peak RSS MB':>12}"
    )
    for variant, low in cells:
        rows = results[(variant, low)]
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        print(
            f"{variant:<8} {'low-memory' if low else 'default':<11} {med['import_s']:>16.3f} {med['load_s']:>7.3f} "
            f"{med['rss_loaded_mb']:>14.0f} {med['peak_mb']:>12.0f}"
        )
    for variant in variants:
        default = statistics.median(r["peak_mb"] for r in results[(variant, False)])
        low = statistics.median(r["peak_mb"] for r in results[(variant, True)])
        print(f"{variant}: low-memory peak RSS / default = {low / default:.2f}")
    sizes = install_sizes()
    if sizes:
        print("\nruntime-only install (edge-toolkit's runtime requirements and theirs), MiB:")
        print(f"{'distribution':<22} {'aarch64 target':>14} {'this host':>10}")
        for name, there, here in sizes:
            print(f"{name:<22} {there:>14.1f} {'-' if here is None else f'{here:.1f}':>10}")
        print(
            f"{'total':<22} {sum(s[1] for s in sizes):>14.1f} {sum(s[2] or 0 for s in sizes):>10.1f}"
            "  (this host's onnxruntime is onnxruntime-gpu, with its CUDA provider libraries)"
        )
    package_mb = {
        v: sum(p.stat().st_size for p in args.package.glob("*") if p.is_file()) / 1e6 for v in variants
    }
    print(f"package folder: {next(iter(package_mb.values())):.1f} MB (all variants and tokenizer files)")


if __name__ == "__main__":
    main()
