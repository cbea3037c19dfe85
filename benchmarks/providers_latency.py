"""CPU vs CUDA vs TensorRT fp16 latency for MiniLM and an image model (ViT-S/16 shape), batch 1 and 32.

Run:  .venv/bin/python benchmarks/providers_latency.py  [--minilm out/minilm] [--image out/vit-small-random]

GPU rows are measured only where the provider can create a session; otherwise the row says why
(onnxruntime's reason, e.g. the missing CUDA library). TensorRT's engine build is reported apart
from run latency. The image model is a randomly initialised ViT-S/16 (224x224): weights do not
change latency, so no download is needed.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from toolkit import Runner
from toolkit.providers import TensorRTOptions, probe_provider

ROWS = (
    ("cpu", "cpu", None),
    ("cuda", "cuda", None),
    ("tensorrt fp16", "tensorrt", TensorRTOptions(fp16=True)),
)
SEQUENCE = 128


def ensure_image_model(out: Path) -> Path:
    """Convert a random ViT-S/16 image classifier once (needs the convert extra: torch, transformers)."""
    if (out / "edge.json").is_file():
        return out
    import tempfile

    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    from converters import convert

    config = ViTConfig(
        image_size=224, patch_size=16, hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
        intermediate_size=1536, num_labels=1000,
    )  # fmt: skip
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        ViTForImageClassification(config).save_pretrained(folder)
        ViTImageProcessor(size={"height": 224, "width": 224}).save_pretrained(folder)
        convert(folder, out)
    return out


def feeds_for(runner: Runner, batch: int) -> dict[str, np.ndarray]:
    """Text: token ids of length SEQUENCE; images: random pixels."""
    feeds = {}
    rng = np.random.default_rng(0)
    for spec in runner.inputs:
        if len(spec.shape) == 4:  # images: NCHW at the package's 224x224
            shape = [batch, 3, 224, 224]
        else:
            shape = [
                d if isinstance(d, int) else (SEQUENCE if axis else batch)
                for axis, d in enumerate(spec.shape)
            ]
            shape[0] = batch
        if spec.dtype == "int64":
            feeds[spec.name] = (
                rng.integers(1000, 5000, size=shape, dtype=np.int64)
                if spec.name == "input_ids"
                else np.ones(shape, np.int64)
            )
            if spec.name == "token_type_ids":
                feeds[spec.name] = np.zeros(shape, np.int64)
        else:
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
    return feeds


def measure(runner: Runner, feeds: dict[str, np.ndarray], seconds: float, max_runs: int) -> float:
    """Median latency in ms after three warm-up runs."""
    for _ in range(3):
        runner.run(feeds)
    samples: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(samples) < max_runs and (len(samples) < 5 or time.perf_counter() < deadline):
        started = time.perf_counter()
        runner.run(feeds)
        samples.append((time.perf_counter() - started) * 1e3)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minilm", default="out/minilm", type=Path)
    parser.add_argument("--image", default="out/vit-small-random", type=Path)
    parser.add_argument("--seconds", default=3.0, type=float, help="time budget per cell")
    parser.add_argument("--batches", default="1,32")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    models = {"MiniLM-L6 (seq 128)": args.minilm, "ViT-S/16 224px": ensure_image_model(args.image)}
    header = f"{'model':<22} {'provider':<14} {'startup':>10} " + " ".join(
        f"{'b' + str(b) + ' ms':>10}" for b in batches
    )
    print(header)
    print("-" * len(header))
    cpu_ms: dict[tuple[str, int], float] = {}
    unavailable = []
    for label, path in models.items():
        for row, provider, trt in ROWS:
            reason = probe_provider(provider)
            if reason is not None:
                print(f"{label:<22} {row:<14} {'unavailable':>10}")
                unavailable.append(f"{row}: {reason}")
                continue
            chain = provider if provider == "cpu" else f"{provider},cpu"
            runner = Runner(path, chain, tensorrt=trt, strict=True)
            cells = []
            for batch in batches:
                ms = measure(runner, feeds_for(runner, batch), args.seconds, 200)
                if provider == "cpu":
                    cpu_ms[(label, batch)] = ms
                speedup = (
                    f" x{cpu_ms[(label, batch)] / ms:.1f}"
                    if provider != "cpu" and (label, batch) in cpu_ms
                    else ""
                )
                cells.append(f"{ms:>7.2f}{speedup}")
            startup = runner.startup
            build = startup.session_s + (startup.first_run_s or 0)
            note = f" (engine {startup.engine_cache})" if startup.engine_cache else ""
            print(f"{label:<22} {row:<14} {build:>9.2f}s " + " ".join(f"{c:>10}" for c in cells) + note)
    for line in dict.fromkeys(unavailable):
        print(f"GPU row unavailable here: {line}")


if __name__ == "__main__":
    main()
