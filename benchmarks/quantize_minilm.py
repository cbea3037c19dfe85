"""Quantization benchmark: `auto --budget 0.99` on all-MiniLM-L6-v2, and static int8 QDQ on a tiny ViT.

Run from the repo root:  python benchmarks/quantize_minilm.py [--out out/quantize-bench] [--runs 100]
                         [--emulate-avx2] [--portable]

Prints, from one run on this machine: the host (CPU and its int8 kernel path: int8 accuracy and speed depend on
it), the candidates `auto` tried, then fp32 and the picked variant side by side (batch 1, sequence 128, 2
threads, interleaved, median of --runs), mean/min cosine on the held-out sentences, and the size ratio; then
the static int8 QDQ image variant's top-1 agreement with fp32.

--emulate-avx2 (x86 hosts with Debian's qemu-user): re-scores the picked variant and plain / reduced-range
per-channel int8 as an AVX2 CPU without VNNI would compute them, by running onnxruntime under
``qemu-x86_64 -cpu Haswell`` (MLAS then takes its saturating AVX2 u8s8 kernels; a probe checks that). The fp32
reference outputs come from this host (fp32 is slow under emulation, and does not depend on the int8 path).
Accuracy only: emulated timings mean nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
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


EMULATED_CPU = ("qemu-x86_64", "-cpu", "Haswell")


def u8s8_saturates() -> bool:
    """Whether this onnxruntime's uint8 x int8 MatMulInteger saturates (AVX2 / AVX-512BW kernels without VNNI)."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    depth = 64
    weights = numpy_helper.from_array(np.full((depth, 1), 127, np.int8), "b")
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [1, depth])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [1, 1])],
        [weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=10)
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = int(session.run(None, {"a": np.full((1, depth), 255, np.uint8)})[0].item())
    return got != 255 * 127 * depth


def score_variants(package_dir: Path, reference: Path, names: list[str]) -> dict[str, tuple[float, float]]:
    """(mean, min) cosine against the saved fp32 reference outputs, per variant, on this (maybe emulated) CPU."""
    import numpy as np

    from converters.accuracy import compare_variant, held_out_feeds
    from toolkit.manifest import ModelPackage
    from toolkit.runner import Runner

    package = ModelPackage.open(package_dir)
    saved = np.load(reference)
    wanted = [{"last_hidden_state": saved[f"row{i}"]} for i in range(len(saved.files))]
    feeds = held_out_feeds(package)[: len(wanted)]
    scores = {}
    for name in names:
        report = compare_variant(package, Runner(package_dir, "cpu", variant=name, threads=1), feeds, wanted)
        scores[name] = (report.score, report.worst)
    return scores


def emulated_avx2_scores(package_dir: Path, names: list[str]) -> tuple[bool, dict[str, tuple[float, float]]]:
    """Score `names` under qemu's Haswell CPU (AVX2, no VNNI): (the probe saw saturation, scores)."""
    import numpy as np

    from converters.accuracy import held_out_feeds
    from toolkit.manifest import ModelPackage
    from toolkit.runner import Runner

    if shutil.which(EMULATED_CPU[0]) is None:
        raise SystemExit("--emulate-avx2 needs qemu-x86_64: apt-get install qemu-user")
    package = ModelPackage.open(package_dir)
    reference = Runner(package_dir, "cpu", threads=2)
    outputs = [reference.run(f)["last_hidden_state"] for f in held_out_feeds(package)]
    ref_file = package_dir / "fp32-reference.npz"
    np.savez(ref_file, **{f"row{i}": o for i, o in enumerate(outputs)})
    command = [
        *EMULATED_CPU,
        sys.executable,
        __file__,
        "--score",
        str(package_dir),
        "--reference",
        str(ref_file),
    ]
    done = subprocess.run([*command, *names], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"emulated scoring failed: {done.stderr.strip().splitlines()[-1:]}")
    data = json.loads(done.stdout.strip().splitlines()[-1])
    return data["saturates"], {k: tuple(v) for k, v in data["scores"].items()}


def main() -> None:
    """Run both parts and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/quantize-bench"))
    parser.add_argument("--emulate-avx2", action="store_true", help="also score int8 as an AVX2 CPU would")
    parser.add_argument("--portable", action="store_true", help="auto keeps portable candidates only")
    parser.add_argument("--skip-vit", action="store_true", help="only the MiniLM part")
    parser.add_argument("--score", type=Path, help=argparse.SUPPRESS)  # the emulated child's mode
    parser.add_argument("--reference", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("names", nargs="*", help=argparse.SUPPRESS)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--budget", type=float, default=0.99)
    parser.add_argument("--max-size", type=float, default=0.30, help="largest file auto may keep, vs fp32")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.score:
        scores = score_variants(args.score, args.reference, args.names)
        print(json.dumps({"saturates": u8s8_saturates(), "scores": scores}))
        return

    from toolkit.host import current_host

    host = current_host()
    print(f"host: {host.describe()}; u8s8 int8 kernels saturate here: {'yes' if u8s8_saturates() else 'no'}")

    from converters import ConvertOptions, QuantizeOptions, convert, quantize
    from converters.accuracy import latency_feeds, measure_latency
    from toolkit.manifest import ModelPackage

    args.out.mkdir(parents=True, exist_ok=True)
    minilm = args.out / "minilm"
    started = time.perf_counter()
    convert("minilm", minilm, ConvertOptions(force=True))
    print(f"converted minilm in {time.perf_counter() - started:.0f} s")

    started = time.perf_counter()
    result = quantize(
        minilm,
        "auto",
        QuantizeOptions(budget=args.budget, max_size=args.max_size, portable_only=args.portable),
    )
    print(f"auto took {time.perf_counter() - started:.0f} s\n")
    print(f"candidates measured on {host.int8_path}")
    print(
        f"{'candidate':<48} {'mean cos':>8} {'min cos':>8} {'ms':>7} {'speed-up':>8} {'size':>6} portable  verdict"
    )
    fp32_size = ModelPackage.open(minilm).manifest.variant("fp32").size_bytes
    for c in result.candidates:
        acc = c.accuracy
        print(
            f"{c.name:<48} {acc.score if acc else float('nan'):>8.4f} {acc.worst if acc else float('nan'):>8.4f} "
            f"{f'{c.latency_ms:.1f}' if c.latency_ms else '-':>7} {f'{c.speedup:.2f}x' if c.speedup else '-':>8} "
            f"{c.size_bytes / fp32_size:>6.1%} "
            f"{'yes' if c.portable else 'no':>8}  "
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
    if args.emulate_avx2:
        names = ["auto"] if result.variant is not None else []
        quantize(minilm, "dynamic-int8", QuantizeOptions(name="int8-pc", latency_runs=5))
        quantize(
            minilm, "dynamic-int8", QuantizeOptions(name="int8-pc-rr", reduce_range=True, latency_runs=5)
        )
        names += ["int8-pc", "int8-pc-rr"]
        started = time.perf_counter()
        saturates, emulated = emulated_avx2_scores(minilm, names)
        native = score_variants(minilm, minilm / "fp32-reference.npz", names)
        print(
            f"\nheld-out cosine, {host.int8_path} (this host) vs emulated AVX2 without VNNI "
            f"(qemu -cpu Haswell, u8s8 saturates there: {'yes' if saturates else 'NO - not emulated'}; "
            f"{time.perf_counter() - started:.0f} s):"
        )
        for name in names:
            (mean, low), (emu_mean, emu_low) = native[name], emulated[name]
            print(
                f"  {name:<12} here mean {mean:.4f} min {low:.4f}   avx2 mean {emu_mean:.4f} min {emu_low:.4f}"
            )
    if args.skip_vit:
        return

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
