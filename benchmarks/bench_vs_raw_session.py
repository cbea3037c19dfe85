"""Does `edge bench` report the model's latency? Its p50 against an independent loop over a raw InferenceSession.

Run:  .venv/bin/python benchmarks/bench_vs_raw_session.py [--package out/minilm] [--batch 1] [--seq 128]
      [--threads 2] [--runs 50] [--rounds 12]

In one process, rounds alternate: `toolkit.bench.run_bench` (exactly what `edge bench` runs: a fresh
session, warm-up, timed loop) and a hand-written loop over an `onnxruntime.InferenceSession` built here
with the same thread settings and its own feeds of the same shape. Alternating rounds lets background load
hit both alike. The target: the two medians of per-round p50s agree within 5%.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from minilm_package import open_or_convert_minilm

from toolkit.bench import BenchOptions, Budget, TimingPlan, plan_bench, run_bench


def raw_p50(session: ort.InferenceSession, feeds: dict[str, np.ndarray], runs: int, warmup: int) -> float:
    """Median ms of `runs` calls of session.run after `warmup` untimed calls."""
    for _ in range(warmup):
        session.run(None, feeds)
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        session.run(None, feeds)
        samples.append((time.perf_counter() - started) * 1e3)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--package", type=Path, default=Path("out/minilm"))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=12)
    args = parser.parse_args()

    package = open_or_convert_minilm(args.package)

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(package.model_path()), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(123)
    shape = (args.batch, args.seq)
    feeds = {
        "input_ids": rng.integers(1000, 20000, size=shape, dtype=np.int64),
        "attention_mask": np.ones(shape, dtype=np.int64),
        "token_type_ids": np.zeros(shape, dtype=np.int64),
    }
    feeds = {i.name: feeds[i.name] for i in session.get_inputs()}

    plan = plan_bench(
        args.package,
        BenchOptions(
            variants=("fp32",),
            batches=(args.batch,),
            seqs=(args.seq,),
            threads=args.threads,
            timing=TimingPlan(warmup=Budget(runs=args.warmup), measure=Budget(runs=args.runs)),
        ),
    )
    bench_p50s, raw_p50s = [], []
    for index in range(args.rounds):  # alternate which goes first, so drift in background load cancels
        if index % 2 == 0:
            bench_p50s.append(run_bench(plan).cells[0].latency.p50_ms)
            raw_p50s.append(raw_p50(session, feeds, args.runs, args.warmup))
        else:
            raw_p50s.append(raw_p50(session, feeds, args.runs, args.warmup))
            bench_p50s.append(run_bench(plan).cells[0].latency.p50_ms)

    bench, raw = statistics.median(bench_p50s), statistics.median(raw_p50s)
    print(
        f"{package.manifest.name} fp32, batch {args.batch}, seq {args.seq}, {args.threads} intra-op threads, "
        f"onnxruntime {ort.__version__}; {args.rounds} alternating rounds of {args.runs} timed runs "
        f"(+{args.warmup} warm-up) each"
    )
    print("round   edge bench p50 ms   raw session p50 ms   ratio")
    for index, (b, r) in enumerate(zip(bench_p50s, raw_p50s, strict=True), start=1):
        print(f"{index:>5}   {b:17.3f}   {r:18.3f}   {b / r:5.3f}")
    ratio = bench / raw
    print(f"median  {bench:17.3f}   {raw:18.3f}   {ratio:5.3f}")
    paired = statistics.median(b / r for b, r in zip(bench_p50s, raw_p50s, strict=True))
    for label, value in (("ratio of the medians", ratio), ("median of per-round ratios", paired)):
        verdict = "within" if abs(value - 1) <= 0.05 else "NOT within"
        print(
            f"edge bench p50 / raw InferenceSession p50, {label}: {value:.3f} ({(value - 1) * 100:+.1f}%): "
            f"{verdict} 5%"
        )


if __name__ == "__main__":
    main()
