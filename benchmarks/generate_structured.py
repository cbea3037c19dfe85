"""Decode speed with a JSON schema against without: what grammar-constrained decoding (llguidance's token mask
on every step) costs on the ~100M-parameter random Llama of generate_decode.py, at batch 1.

Run from the repo root:  python benchmarks/generate_structured.py [--out out/generate-bench] [--threads 1]
    [--new-tokens 64] [--rounds 5] [--variant fp32]

Both modes decode the same 128-token prompt greedily with eos ignored, timed as generate_decode.py times them:
decode tokens/s = (N - 1) / (time of an N-token generation - time of a 1-token one), so the prompt's prefill
and the schema's compilation (once per request) fall out; medians over --rounds, the two modes interleaved
round by round (in alternating order) in one process so a noisy neighbour slows both; the grammar's own work
per token (mask and advance) is also timed alone. The schema asks for at least 100 records, so
the document is still open after N tokens and every step is masked.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from generate_decode import _build_model  # a sibling script, found through the path above

SCHEMA = {
    "type": "object",
    "properties": {
        "records": {
            "type": "array",
            "minItems": 100,
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": 12},
                    "score": {"type": "number"},
                    "tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]}},
                },
                "required": ["name", "score", "tags"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["records"],
    "additionalProperties": False,
}


def main() -> None:
    """Build (once), convert, time both modes interleaved, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/generate-bench"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--variant", default="fp32")
    args = parser.parse_args()

    import llguidance
    import onnxruntime as ort

    from converters import ConvertOptions, convert
    from toolkit.corpus import HELD_OUT_SENTENCES
    from toolkit.host import current_host
    from toolkit.tasks.generate import TextGenerator, TokenPrompt

    source, package_dir = args.out / "hf", args.out / "package"
    if not (source / "config.json").is_file():
        _build_model(source)
    if not (package_dir / "edge.json").is_file():
        convert(str(source), package_dir, ConvertOptions(force=True))
    generator = TextGenerator.load(package_dir, "cpu", variant=args.variant, threads=args.threads)
    host = current_host("cpu")
    print(
        f"CPU: {host.cpu}, {os.cpu_count()} cores, {platform.machine()}; onnxruntime {ort.__version__}, "
        f"llguidance {llguidance.__version__}; {args.threads} thread(s)"
    )
    vocab = generator.tokenizer.get_vocab_size(with_added_tokens=True)
    print(f"model: {package_dir} ({args.variant}), vocabulary {vocab}; batch 1, greedy, eos ignored")
    ids = generator.tokenizer.encode(" ".join(HELD_OUT_SENTENCES * 8)).ids[: args.prompt_tokens]
    prompt = TokenPrompt(tuple(ids))
    modes = {"free text": {}, "json schema": {"json_schema": SCHEMA}}

    def seconds(settings: dict[str, object], n: int) -> float:
        started = time.perf_counter()
        generator.generate(prompt, max_new_tokens=n, ignore_eos=True, **settings)
        return time.perf_counter() - started

    for settings in modes.values():  # warm-up (the grammar engine's tokenizer is built here, once)
        seconds(settings, 2)
    rates: dict[str, list[float]] = {name: [] for name in modes}
    for round_ in range(args.rounds):
        order = list(modes.items())
        for name, settings in order[:: -1 if round_ % 2 else 1]:  # alternated: neither always goes first
            first = seconds(settings, 1)
            full = seconds(settings, args.new_tokens)
            rates[name].append((args.new_tokens - 1) / max(full - first, 1e-9))
    sample = generator.generate(prompt, max_new_tokens=args.new_tokens, ignore_eos=True, json_schema=SCHEMA)
    print(f"json schema text after {args.new_tokens} tokens: {sample.text[:100]!r}...")
    base = statistics.median(rates["free text"])
    print(f"{'mode':<12} {'decode tok/s':>13} {'ms/token':>9} {'vs free':>8}")
    for name, values in rates.items():
        rate = statistics.median(values)
        print(f"{name:<12} {rate:>13.1f} {1e3 / rate:>9.2f} {rate / base:>7.3f}x")
    # the grammar's own work (mask + advance) along the same tokens, timed alone: steadier than the difference
    # of two decode rates on a shared machine
    grammar = generator.grammars.row(generator.options(json_schema=SCHEMA).constraint)
    logits = np.zeros((1, vocab), dtype=np.float32)
    started = time.perf_counter()
    for token in sample.token_ids:
        grammar.mask(logits)
        grammar.advance(token)
    alone_ms = (time.perf_counter() - started) * 1e3 / len(sample.token_ids)
    print(
        f"grammar work timed alone: {alone_ms:.3f} ms/token = {alone_ms * base / 1e3 * 100:.2f}% of a free step"
    )
    constrained = statistics.median(rates["json schema"])
    print(
        f"grammar cost: {1e3 / constrained - 1e3 / base:+.3f} ms/token, decode rate "
        f"{(constrained / base - 1) * 100:+.1f}% (the issue's budget: -10%)"
    )


if __name__ == "__main__":
    main()
