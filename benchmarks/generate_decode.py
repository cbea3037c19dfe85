"""Decode benchmark: edge (its in-place GroupQueryAttention graph, fp32 and int4) against edge on optimum-onnx's
graph (the export it replaced), onnxruntime-genai (fp32 and int4, its model builder's graph from the same
Hugging Face folder) and llama.cpp (Q4_0 and f32, GGUF converted from that folder) on a ~100M-parameter random
Llama-layout model, at 1 and 2 threads; then int4/int8 quality on a small Llama trained here.

Run from the repo root:  python benchmarks/generate_decode.py [--out out/generate-bench]
    [--genai-python GENAI_VENV/bin/python]   (adds onnxruntime-genai, see generate_decode_genai.py)
    [--edge-python GENAI_VENV/bin/python]    (adds edge's in-place graph on that venv's onnxruntime)
    [--llamacpp-python LLAMACPP_VENV/bin/python]  (adds llama.cpp, see generate_decode_llamacpp.py)
    [--skip-optimum]                         (leaves out edge on optimum's graph)
    [--threads 1,2] [--rounds 2] [--runs 3] [--int4-blocks 128] [--train-seconds 180]
    [--profile]                              (an edge int4 decode step per op type, batch 1 and 8)

Every backend runs in its own fresh process (so peak RSS is its own), gets the same prompt ids, generates
greedily with eos ignored and is timed the same way: time to first token = wall time of a 1-token generation
(for a 128- and a 512-token prompt); decode tokens/s = (N - 1) / (time of an N-token generation - time of the
1-token one), batch 1; each process reports the median of --runs such measurements and the table the median over
--rounds processes per backend, backends interleaved round by round. Edge int4 also decodes 8 rows
at once through step-level batching (`ContinuousBatch`). The bandwidth bound is this machine's measured read
bandwidth (numpy, one thread) over the weight bytes a token reads (every weight once, one embedding row; for
llama.cpp its GGUF's tensors): the fraction of it a backend reaches shows how far it is from the physical limit.

Block size: edge's and genai's int4 use blocks of 32 weights by default, as llama.cpp's Q4_0 does, and those
rows compare like with like. --int4-blocks adds edge and genai int4 at larger blocks (fewer scale bytes per
weight, faster kernels; rows "int4 b128"), compared with each other and with the block-32 peers, and the quality
table gives each block size's cost on the trained model: which larger block still meets the int4 targets.

Quality: a Llama-layout model (4 layers, hidden 256) trained for --train-seconds on the standard library's
`pydoc_data.topics` text; int4 (block size and accuracy level picked by measurement on the first half of the
held-out topics, given as `held_out=` as a user's own text would be, and at each --int4-blocks size), int8 (a
generator's default: 8-bit blockwise weight-only) and per-tensor dynamic int8 against fp32 on windows of the
second half, which the search never sees: next-token agreement and perplexity ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from converters import ConvertOptions, QuantizeOptions
    from toolkit.manifest import ModelPackage

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

VOCAB = 16000
CONFIG = {
    "hidden_size": 768,
    "intermediate_size": 2048,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "num_key_value_heads": 4,
    "max_position_embeddings": 1024,
    "vocab_size": VOCAB,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
}
TRAINED = {
    "hidden_size": 256,
    "intermediate_size": 768,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
}
TRAINED_VOCAB = 2048
WINDOW = 128
# llama.cpp's file types -> the backend names the table prints
LLAMACPP_TYPES = {"q4_0": "llama.cpp Q4_0", "f32": "llama.cpp f32"}
# the precision each llama.cpp row is compared at (Q4_0: 4-bit blocks of 32, as edge's and genai's int4)
LLAMACPP_PRECISION = {"llama.cpp Q4_0": "int4", "llama.cpp f32": "fp32"}
GENAI = "onnxruntime-genai"


def precision_of(backend: str) -> str:
    """The precision a row compares at: "fp32", "int4" (blocks of 32) or e.g. "int4 b128" (blocks of 128)."""
    return LLAMACPP_PRECISION.get(backend) or backend.split(" (")[0].split(" ", 1)[1]


def edge_variant(precision: str) -> str:
    """Edge's package variant for a precision: "int4 b128" is variant "int4b128"."""
    return precision.replace(" ", "")


def _tokenizer(texts: list[str], vocab: int, total: int) -> Any:
    """A byte-level BPE of `vocab` merges-learned tokens trained on `texts`, padded with filler up to `total`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(texts, trainer)
    if total > tokenizer.get_vocab_size():
        tokenizer.add_tokens([f"<x{i}>" for i in range(total - tokenizer.get_vocab_size())])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def _build_model(folder: Path) -> int:
    """Save the random model and a byte-level BPE tokenizer covering its whole vocabulary; returns parameters."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from toolkit.corpus import CALIBRATION_SENTENCES, HELD_OUT_SENTENCES

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**CONFIG))
    model.save_pretrained(folder)
    _tokenizer([*CALIBRATION_SENTENCES, *HELD_OUT_SENTENCES], 1000, VOCAB).save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def prepared_package(
    source: Path,
    package_dir: Path,
    plans: Mapping[str, tuple[str, QuantizeOptions]],
    convert_options: ConvertOptions | None = None,
) -> ModelPackage:
    """`package_dir` converted from the HF folder `source` (made by the caller), holding each planned variant
    (name: its method and options). Only what is missing is made, or a variant recorded on other held-out text
    than its plan names, so a rerun reuses the rest."""
    from converters import ConvertOptions, convert, quantize
    from toolkit.manifest import ModelPackage

    if not (package_dir / "edge.json").is_file():
        convert(str(source), package_dir, convert_options or ConvertOptions(force=True))
    for name, (method, options) in plans.items():
        recorded = ModelPackage.open(package_dir).manifest.variants.get(name)
        measured_on = (recorded.validation.held_out if recorded and recorded.validation else None) or ""
        if recorded is None or (options.held_out is not None and options.held_out.name not in measured_on):
            quantize(package_dir, method, options)
    return ModelPackage.open(package_dir)


def _corpus() -> tuple[str, str]:
    """(training text, held-out text): pydoc_data.topics, every tenth topic held out."""
    from pydoc_data.topics import topics

    names = sorted(topics)
    held = [topics[n] for i, n in enumerate(names) if i % 10 == 0]
    train = [topics[n] for i, n in enumerate(names) if i % 10 != 0]
    return "\n".join(train), "\n".join(held)


def _train_model(folder: Path, seconds: float, threads: int) -> str:
    """Train the small Llama on the training text for `seconds`; returns a line on how it went."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    train_text, _ = _corpus()
    tokenizer = _tokenizer([train_text], TRAINED_VOCAB, TRAINED_VOCAB)
    ids = torch.tensor(tokenizer(train_text).input_ids)
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), **TRAINED))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    started, steps, loss = time.perf_counter(), 0, torch.tensor(0.0)
    generator = torch.Generator().manual_seed(0)
    while time.perf_counter() - started < seconds:
        starts = torch.randint(0, ids.numel() - WINDOW - 1, (16,), generator=generator)
        batch = torch.stack([ids[s : s + WINDOW] for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        steps += 1
    model.eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return f"trained {steps} steps in {seconds:.0f} s on {ids.numel()} tokens, last loss {loss.item():.2f}"


# --- one backend in its own process -------------------------------------------------------------------------


def add_peer_arguments(parser: argparse.ArgumentParser) -> None:
    """A peer's worker's command line (genai's, llama.cpp's): its model, the prompt ids, threads and rounds."""
    parser.add_argument("model", type=Path)
    parser.add_argument("--ids", required=True, help="prompt token ids, comma-separated")
    parser.add_argument("--long-ids", default="", help="a longer prompt for a second TTFT (default: --ids)")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)


def timed_generation(
    run: Any, ids: list[int], long_ids: list[int], new_tokens: int, rounds: int = 1
) -> dict[str, float]:
    """Every backend's timing (the peers' workers import it): `run(prompt, n)` generates n tokens greedily, eos
    ignored; after a warm-up, medians over `rounds` of TTFT (a 1-token generation, of `ids` and of `long_ids`) and
    decode tokens/s ((n - 1) / (n-token time - 1-token time)); with this process's peak RSS."""
    run(ids, 2)  # warm-up
    first, full, long_first = [], [], []
    for _ in range(rounds):
        for prompt, n, times in ((ids, 1, first), (ids, new_tokens, full), (long_ids, 1, long_first)):
            started = time.perf_counter()
            run(prompt, n)
            times.append(time.perf_counter() - started)
    ttft = statistics.median(first)
    return {
        "ttft_ms": ttft * 1e3,
        "ttft_512_ms": statistics.median(long_first) * 1e3,
        "decode_tokens_per_s": (new_tokens - 1) / max(statistics.median(full) - ttft, 1e-9),
        "peak_rss_mb": peak_rss_mb(),
    }


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM: ru_maxrss carries the parent's peak across exec on Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _edge_worker(args: argparse.Namespace) -> None:
    """Time one edge variant; prints one JSON line."""
    from toolkit.tasks.generate import TextGenerator
    from toolkit.tasks.generate.generator import TokenPrompt

    generator = TextGenerator.load(args.package, "cpu", variant=args.variant, threads=args.threads)
    ids = [int(i) for i in args.ids.split(",")]
    long_ids = [int(i) for i in args.long_ids.split(",")]

    def run(prompt: list[int], n: int) -> None:
        generator.generate(TokenPrompt(tuple(prompt)), max_new_tokens=n, ignore_eos=True)

    result = timed_generation(run, ids, long_ids, args.new_tokens, args.runs)
    if args.batch > 1:
        result[f"batch{args.batch}_tokens_per_s"] = batched_tokens_per_s(
            generator, ids, args.batch, args.new_tokens
        )
    print(json.dumps(result))


def batched_tokens_per_s(generator: Any, ids: list[int], rows: int, new_tokens: int) -> float:
    """Tokens/s of `rows` copies of the prompt decoded together through step-level batching (`ContinuousBatch`)."""
    from toolkit.decoding.continuous import ContinuousBatch
    from toolkit.tasks.generate.generator import TokenPrompt

    batch = ContinuousBatch(generator)
    for row in range(rows):
        batch.add(row, TokenPrompt(tuple(ids)), generator.options(max_new_tokens=new_tokens, ignore_eos=True))
    steps, started = 0, time.perf_counter()
    while batch.size:
        batch.step()
        steps += 1
    return rows * steps / (time.perf_counter() - started)


def _worker(command: list[str]) -> dict[str, Any]:
    # this checkout's toolkit, whichever interpreter runs the worker
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    out = subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


# --- the run ---------------------------------------------------------------------------------------------------


def _read_bandwidth() -> float:
    """Bytes/s numpy reads a 256 MB array at (best of 5, one thread)."""
    import numpy as np

    data = np.ones(32 * 2**20, dtype=np.float64)
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - started)
    return data.nbytes / best


def _bytes_per_token(onnx_file: Path) -> int:
    """Weight bytes one decode step reads: every initializer once, but one row of the embedding table."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_file))
    total = 0
    gathered = {n.input[0] for n in model.graph.node if n.op_type == "Gather"}
    for tensor in model.graph.initializer:
        array = numpy_helper.to_array(tensor)
        total += (
            array.nbytes // array.shape[0] if tensor.name in gathered and array.ndim == 2 else array.nbytes
        )
    return total


def _profile_step(onnx_file: Path, spec: Any, threads: int, batch: int, steps: int = 24) -> None:
    """Where an edge decode step's time goes: onnxruntime's profile of `steps` steps, per op type (each node's
    fastest run, so other processes' load counts least), against the whole run's best wall time."""
    import collections

    import numpy as np
    import onnxruntime as ort

    from toolkit.decoding.decoder import DecoderStepper

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.enable_profiling = True
    options.profile_file_prefix = str(onnx_file.parent / "step-profile")
    session = ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
    ids = np.tile(np.arange(5, 133, dtype=np.int64), (batch, 1))
    stepper = DecoderStepper(session, spec, ids, np.ones_like(ids), ids.shape[1] + steps + 4)
    tokens = np.full(batch, 7, dtype=np.int64)
    for _ in range(4):
        stepper.step(tokens)
    walls = []
    for _ in range(steps):
        started = time.perf_counter()
        stepper.step(tokens)
        walls.append(time.perf_counter() - started)
    profile = Path(session.end_profiling())
    events = json.loads(profile.read_text())
    profile.unlink()
    runs = [e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"][-steps:]
    per_node: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= runs[0]["ts"]:
            per_node[(e["args"]["op_name"], e["name"])].append(e["dur"])
    by_op: collections.Counter[str] = collections.Counter()
    for (op, _), durations in per_node.items():
        by_op[op] += min(durations)
    kernels = sum(by_op.values())
    print(
        f"  profile, int4 batch {batch}: best step {min(walls) * 1e3:.2f} ms wall, best run "
        f"{min(r['dur'] for r in runs) / 1e3:.2f} ms, kernels {kernels / 1e3:.2f} ms over {len(per_node)} nodes: "
        + ", ".join(f"{op} {us / 1e3:.2f} ms ({us / kernels:.0%})" for op, us in by_op.most_common(6))
    )


def _genai_models(args: argparse.Namespace, source: Path) -> dict[str, Path]:
    """onnxruntime-genai's model builder output for fp32, int4 (its default block, 32) and int4 at each
    --int4-blocks size (built once into --out)."""
    builds = {
        "fp32": [],
        "int4": [],
        **{f"int4 b{b}": ["--extra_options", f"block_size={b}"] for b in args.int4_blocks},
    }
    models = {}
    for precision, extra in builds.items():
        folder = args.out / f"genai-{edge_variant(precision)}"
        if not (folder / "genai_config.json").is_file():
            command = [str(args.genai_python), "-m", "onnxruntime_genai.models.builder", "-i", str(source)]
            command += ["-o", str(folder), "-p", precision.split()[0], "-e", "cpu", *extra]
            subprocess.run(command, check=True, capture_output=True)
        models[f"{GENAI} {precision}"] = folder
    return models


def _llamacpp_models(args: argparse.Namespace, source: Path) -> dict[str, dict[str, Any]]:
    """llama.cpp's GGUF of the same folder, f32 and Q4_0 (built once into --out); prints its version and build."""
    worker = Path(__file__).resolve().with_name("generate_decode_llamacpp.py")
    command = [str(args.llamacpp_python), str(worker), "prepare", str(source), str(args.out / "llamacpp")]
    prepared = _worker([*command, "--types", ",".join(LLAMACPP_TYPES)])
    models = prepared["models"]
    print(
        f"llama.cpp {prepared['version']} (llama-cpp-python, built here; {prepared['system_info']}); "
        + ", ".join(f"{LLAMACPP_TYPES[t]} tensors {models[t]['tensor_types']}" for t in LLAMACPP_TYPES)
    )
    return {LLAMACPP_TYPES[t]: models[t] for t in LLAMACPP_TYPES}


def _quality(args: argparse.Namespace) -> None:
    """int4 and int8 of the trained model against its fp32 on held-out windows of the corpus."""
    import numpy as np

    from converters import QuantizeOptions
    from toolkit.runner import Runner
    from toolkit.tasks.generate import GenerateTask

    source, package_dir = args.out / "trained-hf", args.out / "trained-package"
    if not (source / "config.json").is_file():
        print(_train_model(source, args.train_seconds, max(args.threads_list)))
    # the held-out topics in two halves: int4's block search measures on the first (`held_out=`, the user's own
    # text), the table on the second, which the search never sees
    _, held_text = _corpus()
    cut = held_text.index("\n", len(held_text) // 2)
    search_text = args.out / "held-out-first-half.txt"
    search_text.write_text(held_text[:cut], encoding="utf-8")
    # int8 twice: a generator's default (8-bit blockwise weight-only MatMulNBits, int8 activations per block) and
    # per-tensor dynamic int8 (MatMulInteger) for comparison
    plans = {
        "int4": ("int4", QuantizeOptions(budget=0.9, held_out=search_text)),
        **{
            f"int4b{b}": ("int4", QuantizeOptions(budget=0.9, block_size=b, name=f"int4b{b}"))
            for b in args.int4_blocks
        },
        "int8": ("dynamic-int8", QuantizeOptions(budget=0.9)),
        "int8-dynamic": ("dynamic-int8", QuantizeOptions(budget=0.9, blockwise=(), name="int8-dynamic")),
    }
    package = prepared_package(source, package_dir, plans)
    task = GenerateTask(package)
    ids = task.tokenizer.encode(held_text[cut + 1 :]).ids
    feeds = [task.prompt_feeds(ids[s : s + WINDOW]) for s in range(0, len(ids) - WINDOW, len(ids) // 40)][:40]
    runners = {
        v: Runner(package_dir / package.manifest.variants[v].file, "cpu", threads=2)
        for v in package.manifest.variants
    }
    outputs = {name: [runner.run(f) for f in feeds] for name, runner in runners.items()}
    fp32_nll = []
    for feed, out in zip(feeds, outputs["fp32"], strict=True):
        logits = np.asarray(out["logits"])[0, :-1].astype(np.float64)
        logits -= logits.max(-1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        fp32_nll.extend(-logp[np.arange(WINDOW - 1), feed["input_ids"][0, 1:]])
    searched = package.manifest.variants["int4"].validation
    print(
        f"\ntrained model ({json.dumps(TRAINED)}, vocab {len(task.tokenizer.get_vocab())}): fp32 perplexity "
        f"{np.exp(np.mean(fp32_nll)):.2f} on {len(feeds)} held-out windows of {WINDOW} tokens from the second "
        f"half of the held-out topics (uniform: {len(task.tokenizer.get_vocab())}); int4's block search measured "
        f"on the first half ({searched.held_out if searched else search_text.name})"
    )
    print(f"{'variant':<14} {'agreement':>10} {'ppl ratio':>10} {'target':>22} {'size MB':>8}")
    targets = {"int4": (0.90, 1.05), "dynamic-int8": (0.97, 1.02)}
    for name, (method, _) in plans.items():
        agreement, _, details, _ = task.next_token_agreement(outputs[name], outputs["fp32"], feeds)
        want = targets[method]
        met = agreement >= want[0] and details["perplexity_ratio"] <= want[1]
        settings = package.manifest.variants[name].settings
        extra = (
            f" (block {settings['block_size']}, level {settings['accuracy_level']})"
            if method == "int4"
            else ""
        )
        print(
            f"{name:<14} {agreement:>10.4f} {details['perplexity_ratio']:>10.4f} "
            f"{f'>={want[0]}, <={want[1]}: ' + ('met' if met else 'NOT met'):>22} "
            f"{package.manifest.variants[name].size_bytes / 1e6:>8.1f}{extra}"
        )


def main() -> None:
    """Build, convert, quantize, time, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/generate-bench"))
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="processes per backend (medians over them)")
    parser.add_argument("--runs", type=int, default=3, help="measurements per process (medians over them)")
    parser.add_argument(
        "--int4-blocks",
        default="128",
        help="comma-separated larger int4 block sizes also timed (edge and genai) and scored; '' for none",
    )
    parser.add_argument("--train-seconds", type=float, default=180)
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--profile", action="store_true", help="also profile an edge int4 decode step per op")
    parser.add_argument(
        "--interleaved-trials",
        type=int,
        default=8,
        help="with --edge-python: edge and genai decode steps timed in one process, trials interleaved",
    )
    parser.add_argument("--genai-python", type=Path, default=None)
    parser.add_argument(
        "--edge-python",
        type=Path,
        default=None,
        help="also time edge's in-place graph under this interpreter (e.g. genai's venv: same onnxruntime)",
    )
    parser.add_argument(
        "--llamacpp-python",
        type=Path,
        default=None,
        help="also time llama.cpp Q4_0 and f32 under this interpreter (llama-cpp-python's venv)",
    )
    parser.add_argument(
        "--skip-optimum", action="store_true", help="leave out edge on optimum-onnx's graph (the old default)"
    )
    # worker mode: one edge variant, in its own process
    parser.add_argument("--worker-package", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="fp32", help=argparse.SUPPRESS)
    parser.add_argument("--ids", default="", help=argparse.SUPPRESS)
    parser.add_argument("--long-ids", default="", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.threads_list = [int(t) for t in args.threads.split(",")]
    args.int4_blocks = [int(b) for b in args.int4_blocks.split(",") if b]
    if args.worker_package is not None:
        args.package, args.threads = args.worker_package, args.threads_list[0]
        _edge_worker(args)
        return

    import onnxruntime as ort

    from converters import ConvertOptions, QuantizeOptions
    from toolkit.corpus import HELD_OUT_SENTENCES
    from toolkit.host import current_host
    from toolkit.manifest import ModelPackage

    source, package_dir = args.out / "hf", args.out / "package"
    if not (source / "config.json").is_file():
        _build_model(source)
    plans = {
        "int4": ("int4", QuantizeOptions(budget=0.5)),
        **{
            f"int4b{b}": ("int4", QuantizeOptions(budget=0.5, block_size=b, name=f"int4b{b}"))
            for b in args.int4_blocks
        },
    }
    manifest = prepared_package(source, package_dir, plans).manifest
    assert manifest.generation is not None
    int4_settings = manifest.variants["int4"].settings
    # the same folder through optimum-onnx's graph, its int4 at the block the in-place graph's search picked
    optimum_dir = args.out / "package-optimum"
    if not args.skip_optimum:
        block = int(int4_settings["block_size"])
        prepared_package(
            source,
            optimum_dir,
            {"int4": ("int4", QuantizeOptions(budget=0.5, block_size=block))},
            ConvertOptions(force=True, decoder_graph="optimum"),
        )
    host = current_host("cpu")
    print(
        f"CPU: {host.cpu} ({host.int8_path}), {os.cpu_count()} cores, {platform.machine()}; edge onnxruntime {ort.__version__}"
    )
    genai = _genai_models(args, source) if args.genai_python else {}
    if args.genai_python:
        version = subprocess.run(
            [
                str(args.genai_python),
                "-c",
                "import onnxruntime as o, onnxruntime_genai as g; print(o.__version__, g.__version__)",
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        print(f"onnxruntime-genai {version[1]} (its venv's onnxruntime {version[0]})")
    llamacpp = _llamacpp_models(args, source) if args.llamacpp_python else {}
    print(f"model: random Llama layout, {json.dumps(CONFIG)}; edge graph {manifest.generation.graph}")
    how = "picked by measurement" if "candidates" in int4_settings else "as given"
    print(
        f"edge int4: block {int4_settings['block_size']}, accuracy level {int4_settings['accuracy_level']} ({how})"
    )
    fp32_check = manifest.variants["fp32"].validation
    assert fp32_check is not None
    worst = max(check.max_abs_diff for check in fp32_check.outputs)
    print(
        f"edge fp32 vs PyTorch: max abs diff {worst:.2e}, {fp32_check.metric} ratio {fp32_check.value:.3g} "
        f"(limit {fp32_check.threshold:g}; {'; '.join(fp32_check.cases)})"
    )

    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(package_dir / "tokenizer.json"))
    corpus_ids = tokenizer.encode(" ".join(HELD_OUT_SENTENCES * 8)).ids
    ids, long_ids = corpus_ids[: args.prompt_tokens], corpus_ids[:512]
    common = ["--ids", ",".join(map(str, ids)), "--long-ids", ",".join(map(str, long_ids))]
    common += ["--new-tokens", str(args.new_tokens)]
    bandwidth = _read_bandwidth()
    script = Path(__file__).resolve()
    # edge backends: name -> (interpreter, package, variant); "edge" alone is the in-place graph on this venv
    precisions = ["fp32", "int4", *(f"int4 b{b}" for b in args.int4_blocks)]
    edge_backends = {f"edge {p}": (Path(sys.executable), package_dir, edge_variant(p)) for p in precisions}
    if args.edge_python:
        edge_version = subprocess.run(
            [str(args.edge_python), "-c", "import onnxruntime as o; print(o.__version__)"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        for v in ("fp32", "int4"):
            edge_backends[f"edge {v} (ort {edge_version})"] = (args.edge_python, package_dir, v)
    if not args.skip_optimum:
        optimum = ModelPackage.open(optimum_dir).manifest
        for v in ("fp32", "int4"):
            edge_backends[f"edge optimum-graph {v}"] = (Path(sys.executable), optimum_dir, v)
        print(
            f"edge optimum-graph: optimum-onnx's export of the same folder, int4 block "
            f"{optimum.variants['int4'].settings['block_size']}, level {optimum.variants['int4'].settings['accuracy_level']}"
        )
    weights = {
        **{
            name: _bytes_per_token(package / ModelPackage.open(package).manifest.variants[v].file)
            for name, (_, package, v) in edge_backends.items()
        },
        **{name: _bytes_per_token(folder / "model.onnx") for name, folder in genai.items()},
        **{name: model["bytes_per_token"] for name, model in llamacpp.items()},
    }
    print(
        f"prompt {len(ids)} tokens (TTFT also for {len(long_ids)}), {args.new_tokens} new, greedy, eos ignored; "
        f"medians of {args.rounds} processes per backend (each the median of {args.runs} runs); "
        f"read bandwidth {bandwidth / 1e9:.1f} GB/s"
    )
    genai_script = script.with_name("generate_decode_genai.py")
    llamacpp_script = script.with_name("generate_decode_llamacpp.py")

    def genai_command(folder: Path, threads: int, rounds: int, *extra: str) -> list[str]:
        """The genai worker's command line (it runs in genai's venv)."""
        return [
            str(args.genai_python),
            str(genai_script),
            str(folder),
            "--threads",
            str(threads),
            "--rounds",
            str(rounds),
            *extra,
            *common,
        ]

    for threads in args.threads_list:
        commands = {
            name: [
                str(python),
                str(script),
                "--worker-package",
                str(package),
                "--variant",
                v,
                "--threads",
                str(threads),
                "--runs",
                str(args.runs),
                *common,
                *(["--batch", "8"] if name == "edge int4" else []),
            ]
            for name, (python, package, v) in edge_backends.items()
        }

        for name, folder in genai.items():
            commands[name] = genai_command(folder, threads, args.runs)
        for name, model in llamacpp.items():
            commands[name] = [str(args.llamacpp_python), str(llamacpp_script), "time", model["path"]]
            commands[name] += ["--threads", str(threads), "--rounds", str(args.runs), *common]
        measured: dict[str, list[dict[str, float]]] = {name: [] for name in commands}
        for _ in range(args.rounds):
            for name, command in commands.items():
                measured[name].append(_worker(command))
        print(
            f"\n{threads} thread(s)\n{'backend':<28} {'decode tok/s':>12} {'TTFT128 ms':>11} {'TTFT512 ms':>11} "
            f"{'peak RSS MB':>12} {'MB/token':>9} {'of bw bound':>12} {'batch 8 tok/s':>14}"
        )
        medians = {
            name: {key: statistics.median(r[key] for r in rows) for key in rows[0]}
            for name, rows in measured.items()
        }
        for name, med in medians.items():
            bound = bandwidth / weights[name]
            batch8 = med.get("batch8_tokens_per_s")
            batch_text = f"{batch8:.1f} ({batch8 / med['decode_tokens_per_s']:.1f}x)" if batch8 else "-"
            print(
                f"{name:<28} {med['decode_tokens_per_s']:>12.1f} {med['ttft_ms']:>11.1f} {med['ttft_512_ms']:>11.1f} "
                f"{med['peak_rss_mb']:>12.0f} {weights[name] / 1e6:>9.1f} {med['decode_tokens_per_s'] / bound:>11.0%} "
                f"{batch_text:>14}"
            )
        peers = {n: m for n, m in medians.items() if not n.startswith("edge")}
        for name, med in medians.items():
            if not name.startswith("edge") or "optimum" in name:
                continue
            precision = precision_of(name)
            # a larger int4 block also against the block-32 peers (genai's default, llama.cpp's Q4_0)
            compared = {precision, "int4"} if precision.startswith("int4") else {precision}
            for peer_name, peer in peers.items():
                if precision_of(peer_name) in compared:
                    print(
                        f"  {name} / {peer_name.replace(GENAI, 'genai')}: decode "
                        f"{med['decode_tokens_per_s'] / peer['decode_tokens_per_s']:.2f}x, "
                        f"TTFT512 {med['ttft_512_ms'] / peer['ttft_512_ms']:.2f}x, "
                        f"peak RSS {med['peak_rss_mb'] / peer['peak_rss_mb']:.2f}x"
                    )
        for genai_name, folder in genai.items() if args.edge_python else ():
            precision = precision_of(genai_name)
            ab = _worker(
                genai_command(
                    folder,
                    threads,
                    args.interleaved_trials,
                    "--edge-package",
                    str(package_dir),
                    "--edge-variant",
                    edge_variant(precision),
                )
            )
            print(
                f"  one process, {args.interleaved_trials} interleaved trials of 32 steps (genai venv's onnxruntime): "
                f"edge {precision} / genai {precision} decode {ab['genai_step_ms'] / ab['edge_step_ms']:.2f}x "
                f"best ({ab['edge_step_ms']:.2f} vs {ab['genai_step_ms']:.2f} ms/step), "
                f"{ab['genai_median_ms'] / ab['edge_median_ms']:.2f}x median"
            )
        if args.profile:
            for batch in (1, 8):
                _profile_step(
                    package_dir / manifest.variants["int4"].file, manifest.generation, threads, batch
                )
    if not args.llamacpp_python:
        print(
            "\nllama.cpp: not run (add --llamacpp-python VENV/bin/python; its venv: generate_decode_llamacpp.py)"
        )
    if not args.skip_quality:
        _quality(args)


if __name__ == "__main__":
    main()
