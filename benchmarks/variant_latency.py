"""fp32 and any ONNX files of the same model, timed side by side on one package's latency inputs.

Run from the repo root:  python benchmarks/variant_latency.py PACKAGE FILE.onnx [FILE.onnx ...] [--runs 100]

For comparing variants that live in different packages (e.g. the picks of two `quantize_minilm.py` runs):
interleaved runs in one process, median latency and speed-up over the package's fp32, and the host's int8 path.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    """Time and print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", type=Path)
    parser.add_argument("files", type=Path, nargs="+")
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from converters.accuracy import latency_feeds, measure_latency
    from toolkit.host import current_host
    from toolkit.manifest import ModelPackage

    package = ModelPackage.open(args.package)
    models = {"fp32": package.model_path(), **{str(f): f for f in args.files}}
    latency = measure_latency(models, latency_feeds(package), runs=args.runs, warmup=10, threads=args.threads)
    print(
        f"host: {current_host().describe()}; {latency.shape}; {latency.threads} threads, median of {latency.runs}"
    )
    for name, ms in latency.median_ms.items():
        print(f"  {name:<60} {ms:8.2f} ms  {latency.speedup(name):.2f}x")


if __name__ == "__main__":
    main()
