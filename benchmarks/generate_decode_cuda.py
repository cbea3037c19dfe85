"""Decode on a GPU: edge's in-place graph in fp16 on CUDA (its KV cache on the device, IO binding) against
transformers' own generate() in fp16 on the same GPU, with edge fp32 on CUDA and on every CPU core beside them, on
generate_decode.py's ~100M-parameter random Llama-layout model.

Run from the repo root:  python benchmarks/generate_decode_cuda.py [--out out/generate-bench]
    [--hf HF_DIR]  (another Llama-layout folder instead of the random 100M model)
    [--prompt-tokens 128] [--new-tokens 64] [--runs 5] [--batch 8] [--skip-torch]

Timed as generate_decode.py times every backend (`timed_generation`): greedy, eos ignored, time to first token =
a 1-token generation (prompts of 128 and 512 tokens), decode tokens/s = (N - 1) / (N-token time - 1-token time),
medians of --runs after a warm-up; edge fp16 also decodes --batch rows at once through step-level batching. A row
whose provider cannot run here says why instead of a figure (onnxruntime's reason), so the script runs anywhere.
The greedy tokens of each row are compared with edge fp32 on the CPU: fp16 drifts from fp32 on a random model's
near-flat logits, so the first differing position is printed, not asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

# a sibling script: this script's folder leads sys.path
from generate_decode import CONFIG, _build_model, batched_tokens_per_s, prepared_package, timed_generation

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CHECK_TOKENS = 32


def _edge_row(
    package: Path, variant: str, device: str, args: argparse.Namespace, ids: list[int], long_ids: list[int]
) -> dict[str, Any]:
    from toolkit.tasks.generate import TextGenerator
    from toolkit.tasks.generate.generator import TokenPrompt

    threads = os.cpu_count() if device == "cpu" else None
    generator = TextGenerator.load(package, device, variant=variant, threads=threads, strict=True)

    def run(prompt: list[int], n: int) -> Any:
        return generator.generate(TokenPrompt(tuple(prompt)), max_new_tokens=n, ignore_eos=True)

    row: dict[str, Any] = timed_generation(run, ids, long_ids, args.new_tokens, args.runs)
    row["tokens"] = list(run(ids, CHECK_TOKENS).token_ids)
    if args.batch > 1 and device != "cpu":
        rates = [batched_tokens_per_s(generator, ids, args.batch, args.new_tokens) for _ in range(args.runs)]
        row[f"batch{args.batch}_tokens_per_s"] = statistics.median(rates)
    return row


def _torch_row(source: Path, args: argparse.Namespace, ids: list[int], long_ids: list[int]) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    if not torch.cuda.is_available():
        raise RuntimeError("torch sees no CUDA device")
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float16).cuda().eval()

    def run(prompt: list[int], n: int) -> Any:
        tensor = torch.tensor([prompt], device="cuda")
        with torch.inference_mode():
            out = model.generate(
                tensor,
                attention_mask=torch.ones_like(tensor),
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
            )
        torch.cuda.synchronize()
        return out[0, len(prompt) :].tolist()

    torch.cuda.reset_peak_memory_stats()
    row: dict[str, Any] = timed_generation(run, ids, long_ids, args.new_tokens, args.runs)
    row["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    row["tokens"] = run(ids, CHECK_TOKENS)
    return row


def _torch_versions() -> str:
    import torch
    import transformers

    return f"torch {torch.__version__} (CUDA {torch.version.cuda}), transformers {transformers.__version__}"


def _first_difference(tokens: list[int], reference: list[int]) -> str:
    for position, (a, b) in enumerate(zip(tokens, reference, strict=False)):
        if a != b:
            return f"first differs at token {position}"
    return f"all {min(len(tokens), len(reference))} equal"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("out/generate-bench"))
    parser.add_argument(
        "--hf", type=Path, default=None, help="a Llama-layout HF folder (default: the random 100M model)"
    )
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--skip-torch", action="store_true")
    args = parser.parse_args()

    import onnxruntime as ort

    from converters import QuantizeOptions
    from toolkit.corpus import HELD_OUT_SENTENCES
    from toolkit.host import current_host
    from toolkit.providers import probe_provider

    source = args.hf or args.out / "hf"
    package_dir = args.out / ("package" if args.hf is None else f"package-{args.hf.name}")
    if not (source / "config.json").is_file():
        _build_model(source)
    fp16 = (
        prepared_package(source, package_dir, {"fp16": ("fp16", QuantizeOptions(budget=0.5))})
        .manifest.variants["fp16"]
        .validation
    )
    cuda_reason = probe_provider("cuda")
    gpu = "none"
    if cuda_reason is None:
        import subprocess

        gpu = (
            subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.strip()
            or "unknown"
        )
    host = current_host("cpu")
    print(f"GPU: {gpu}; CPU: {host.cpu} ({host.int8_path}), {os.cpu_count()} cores, {platform.machine()}")
    print(
        f"onnxruntime {ort.__version__} ({', '.join(ort.get_available_providers())}); python {sys.version.split()[0]}"
        + ("" if args.skip_torch else f"; the transformers row: {_torch_versions()}")
    )
    print(f"model: {'random Llama layout ' + json.dumps(CONFIG) if args.hf is None else source}")
    if fp16 is not None:
        print(f"edge fp16 vs fp32 (edge quantize): {fp16.metric} {fp16.value:.4g} (limit {fp16.threshold:g})")

    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(package_dir / "tokenizer.json"))
    corpus_ids = tokenizer.encode(" ".join(HELD_OUT_SENTENCES * 8)).ids
    ids, long_ids = corpus_ids[: args.prompt_tokens], corpus_ids[:512]
    print(
        f"prompt {len(ids)} tokens (TTFT also for {len(long_ids)}), {args.new_tokens} new, greedy, eos ignored; medians of {args.runs}"
    )

    rows: dict[str, dict[str, Any] | str] = {}
    plan = [
        ("edge fp32 cpu", "fp32", "cpu"),
        ("edge fp16 cuda", "fp16", "cuda"),
        ("edge fp32 cuda", "fp32", "cuda"),
    ]
    for name, variant, device in plan:
        if device == "cuda" and cuda_reason is not None:
            rows[name] = f"cuda cannot create a session here: {cuda_reason}"
            continue
        try:
            rows[name] = _edge_row(package_dir, variant, device, args, ids, long_ids)
        except Exception as error:  # noqa: BLE001 - a row that cannot run says why; the others still run
            rows[name] = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
    if not args.skip_torch:
        try:
            rows["transformers fp16 cuda"] = _torch_row(source, args, ids, long_ids)
        except Exception as error:  # noqa: BLE001 - as above
            rows["transformers fp16 cuda"] = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"

    batch_column = f"batch {args.batch} tok/s"
    print(
        f"\n{'backend':<24} {'decode tok/s':>12} {'TTFT128 ms':>11} {'TTFT512 ms':>11} {batch_column:>15}  greedy vs edge fp32 cpu"
    )
    reference = rows.get("edge fp32 cpu")
    for name, row in rows.items():
        if isinstance(row, str):
            print(f"{name:<24} {row}")
            continue
        batch = row.get(f"batch{args.batch}_tokens_per_s")
        batch_text = f"{batch:.1f} ({batch / row['decode_tokens_per_s']:.1f}x)" if batch else "-"
        agreement = (
            _first_difference(row["tokens"], reference["tokens"]) if isinstance(reference, dict) else "-"
        )
        extra = f"; GPU peak {row['gpu_peak_mb']:.0f} MB" if "gpu_peak_mb" in row else ""
        print(
            f"{name:<24} {row['decode_tokens_per_s']:>12.1f} {row['ttft_ms']:>11.2f} {row['ttft_512_ms']:>11.2f} "
            f"{batch_text:>15}  {agreement}{extra}"
        )
    edge, peer = rows.get("edge fp16 cuda"), rows.get("transformers fp16 cuda")
    if isinstance(edge, dict) and isinstance(peer, dict):
        print(
            f"  edge fp16 cuda / transformers fp16 cuda: decode {edge['decode_tokens_per_s'] / peer['decode_tokens_per_s']:.2f}x, "
            f"TTFT512 {edge['ttft_512_ms'] / peer['ttft_512_ms']:.2f}x"
        )


if __name__ == "__main__":
    main()
