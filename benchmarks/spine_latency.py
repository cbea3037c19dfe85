"""MiniLM, batch 1, sequence 128, fp32, 2 threads: PyTorch eager vs `Runner`, and `embed()` vs a raw session.

Run:  .venv/bin/python benchmarks/spine_latency.py  [--package out/minilm] [--runs 200]

Every timing is interleaved round by round in one process, so the ratios compare like with like.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
from minilm_package import open_or_convert_minilm

from toolkit import Runner, TextEmbedding
from toolkit.preprocess import TextTokenizer

THREADS = 2
SEQUENCE = 128


def text_of_exactly(tokens: int, tokenizer: TextTokenizer) -> str:
    """A sentence that tokenizes to exactly `tokens` ids, [CLS] and [SEP] included."""
    words: list[str] = []
    vocabulary = [
        "edge",
        "devices",
        "run",
        "small",
        "models",
        "quickly",
        "while",
        "the",
        "cloud",
        "handles",
        "training",
        "at",
        "scale",
    ]
    while len(tokenizer.encode([" ".join(words)])[0][0]) < tokens:
        words.append(vocabulary[len(words) % len(vocabulary)])
    assert len(tokenizer.encode([" ".join(words)])[0][0]) == tokens
    return " ".join(words)


def interleaved(candidates: dict[str, Callable[[], object]], runs: int, rounds: int = 10) -> dict[str, float]:
    """Median milliseconds per call, measured in alternating rounds after a warm-up."""
    for call in candidates.values():
        for _ in range(10):
            call()
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, call in candidates.items():
            for _ in range(runs // rounds):
                started = time.perf_counter()
                call()
                samples[name].append((time.perf_counter() - started) * 1e3)
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--package", type=Path, default=Path("out/minilm"))
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()

    import torch

    from converters.export_tasks import TASKS
    from converters.hf import load_hf_model
    from converters.recipes import load_recipe

    package = open_or_convert_minilm(args.package)
    torch.set_num_threads(THREADS)

    pipeline = TextEmbedding.load(package.path, threads=THREADS)
    text = text_of_exactly(SEQUENCE, pipeline.tokenizer)
    feeds = pipeline.tokenizer([text])
    assert feeds["input_ids"].shape == (1, SEQUENCE)

    runner = Runner(package.path, threads=THREADS)
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    raw = ort.InferenceSession(str(package.model_path()), options, providers=["CPUExecutionProvider"])

    model_dir = load_recipe("minilm").source.local_dir()
    assert model_dir is not None
    model = load_hf_model(model_dir, TASKS["features"])
    torch_feeds = {k: torch.from_numpy(v) for k, v in feeds.items()}

    def torch_eager() -> object:
        with torch.inference_mode():
            return model(**torch_feeds)

    medians = interleaved(
        {
            "pytorch eager": torch_eager,
            "Runner.run": lambda: runner.run(feeds),
            "raw InferenceSession.run": lambda: raw.run(None, feeds),
            "embed() end to end": lambda: pipeline.embed([text]),
        },
        args.runs,
    )
    want = model(**torch_feeds).last_hidden_state.detach().numpy()
    got = runner.run(feeds)["last_hidden_state"]

    print(
        f"MiniLM fp32, batch 1, sequence {SEQUENCE}, {THREADS} threads, median of {args.runs} interleaved runs"
    )
    print(
        f"onnxruntime {ort.__version__}, torch {torch.__version__}; max abs diff ONNX vs PyTorch {np.abs(got - want).max():.2e}"
    )
    for name, ms in medians.items():
        print(f"  {name:<26} {ms:8.3f} ms")
    print(
        f"PyTorch eager / Runner latency ratio:         {medians['pytorch eager'] / medians['Runner.run']:.2f}x"
    )
    overhead = medians["embed() end to end"] / medians["raw InferenceSession.run"] - 1
    print(f"embed() overhead over raw InferenceSession.run: {overhead * 100:+.1f}% (target < 10%)")


if __name__ == "__main__":
    main()
