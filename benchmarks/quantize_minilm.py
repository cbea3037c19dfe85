"""Quantization benchmark: `auto --budget 0.99` on all-MiniLM-L6-v2, and static int8 QDQ on a tiny ViT.

Run from the repo root:  python benchmarks/quantize_minilm.py [--out out/quantize-bench] [--runs 100]

Prints, from one run on this machine: the candidates `auto` tried, then fp32 and the picked variant side by
side (batch 1, sequence 128, 2 threads, interleaved, median of --runs), mean/min cosine on the held-out
sentences, and the size ratio; then the static int8 QDQ image variant's top-1 agreement with fp32.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _tiny_vit(folder: Path) -> Path:
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    labels = {i: name for i, name in enumerate(("cat", "dog", "bird", "car", "tree"))}
    config = ViTConfig(
        image_size=32, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=5, id2label=labels, label2id={v: k for k, v in labels.items()},
    )  # fmt: skip
    torch.manual_seed(2)
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def main() -> None:
    """Run both parts and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/quantize-bench"))
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--budget", type=float, default=0.99)
    parser.add_argument("--max-size", type=float, default=0.30, help="largest file auto may keep, vs fp32")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from converters import ConvertOptions, QuantizeOptions, convert, quantize
    from converters.accuracy import latency_feeds, measure_latency
    from toolkit.manifest import ModelPackage

    args.out.mkdir(parents=True, exist_ok=True)
    minilm = args.out / "minilm"
    started = time.perf_counter()
    convert("minilm", minilm, ConvertOptions(force=True))
    print(f"converted minilm in {time.perf_counter() - started:.0f} s")

    started = time.perf_counter()
    result = quantize(minilm, "auto", QuantizeOptions(budget=args.budget, max_size=args.max_size))
    print(f"auto took {time.perf_counter() - started:.0f} s\n")
    print(f"{'candidate':<48} {'mean cos':>8} {'min cos':>8} {'ms':>7} {'speed-up':>8} {'size':>6}  verdict")
    fp32_size = ModelPackage.open(minilm).manifest.variant("fp32").size_bytes
    for c in result.candidates:
        acc = c.accuracy
        print(
            f"{c.name:<48} {acc.score if acc else float('nan'):>8.4f} {acc.worst if acc else float('nan'):>8.4f} "
            f"{c.latency_ms or float('nan'):>7.1f} {c.speedup or float('nan'):>7.2f}x {c.size_bytes / fp32_size:>6.1%}  "
            f"{'meets' if c.meets_budget else (c.error or ('too big' if c.over_size_cap else 'below'))}"
        )
    if result.variant is None or result.accuracy is None:
        print(f"\nno candidate meets the budget {args.budget} within {args.max_size:.0%} of fp32's size")
    else:
        package = ModelPackage.open(minilm)
        latency = measure_latency(
            {"fp32": package.model_path("fp32"), "auto": package.model_path("auto")},
            latency_feeds(package, batch=1, seq=128),
            runs=args.runs,
            warmup=10,
            threads=2,
        )
        print(f"\nauto picked: {result.variant.settings['picked']}")
        print(
            f"side by side ({latency.shape}, {latency.threads} threads, median of {latency.runs} interleaved runs):"
        )
        print(
            f"  fp32 {latency.median_ms['fp32']:.1f} ms, auto {latency.median_ms['auto']:.1f} ms -> speed-up {latency.speedup('auto'):.2f}x"
        )
        print(
            f"  cosine vs fp32 on {result.accuracy.samples} held-out sentences: mean {result.accuracy.score:.4f}, min {result.accuracy.worst:.4f}"
        )
        print(
            f"  size {result.variant.size_bytes / 1e6:.1f} MB vs fp32 {fp32_size / 1e6:.1f} MB -> {result.variant.size_bytes / fp32_size:.1%}"
        )

    vit_dir = args.out / "tiny-vit-hf"
    shutil.rmtree(vit_dir, ignore_errors=True)
    vit_dir.mkdir(parents=True)
    vit = args.out / "tiny-vit"
    shutil.rmtree(vit, ignore_errors=True)
    convert(str(_tiny_vit(vit_dir)), vit)
    image = quantize(vit, "static-int8", QuantizeOptions(budget=0.9))
    from toolkit.runner import Runner

    runner = Runner(vit, "cpu", variant="int8-static")
    if image.accuracy is None or image.variant is None:
        raise SystemExit("static int8 produced no variant")
    print(
        f"\nstatic int8 QDQ tiny ViT: top-1 agreement with fp32 {image.accuracy.score:.1%} on {image.accuracy.samples} "
        f"held-out images, max logit diff {image.accuracy.details['max_logit_diff']:.3g}, "
        f"calibration {image.variant.settings['calibration_source']}, runs on providers {runner.providers}"
    )


if __name__ == "__main__":
    main()
