"""Grammar engines for constrained decoding, measured side by side: llguidance against outlines-core (xgrammar
needs torch and triton, which `toolkit` must not depend on) on a byte-level BPE of ~32k tokens trained here.

Run from the repo root:  python benchmarks/grammar_engines.py [--vocab 32000] [--rounds 3]
with both engines importable, e.g. kept apart from the project's venv:
    pip install --no-deps --target /tmp/engines llguidance==1.9.1 outlines-core==0.2.14
    PYTHONPATH=$PWD:/tmp/engines python benchmarks/grammar_engines.py

For one JSON schema: the time to compile it for the vocabulary (once per request), and the time per token of
the token mask along a valid answer (the tokenizer's own tokens of a JSON instance), medians over --rounds.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "age", "tags", "address"],
    "additionalProperties": False,
}
INSTANCE = {
    "name": "Ada Lovelace, the first programmer",
    "age": 36,
    "tags": ["mathematics", "analytical engine", "notes"],
    "address": {"city": "London", "zip": "W1"},
}


def _texts() -> list[str]:
    """English (pydoc's topics) and code (the standard library's sources): enough text for ~32k merges."""
    import sysconfig
    from pydoc_data.topics import topics

    sources = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    return [*topics.values(), *(p.read_text(encoding="utf-8", errors="replace") for p in sources)]


def _tokenizer(vocab: int) -> Any:
    """generate_decode.py's byte-level BPE, trained here on `_texts` to `vocab` tokens (``tokenizers``)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from generate_decode import _tokenizer as byte_level_bpe  # a sibling script, found through the path above

    return byte_level_bpe(_texts(), vocab, vocab).backend_tokenizer


def _llguidance(tokenizer_json: str, ids: list[int], vocab: int) -> tuple[float, float]:
    import llguidance
    import llguidance.numpy as llnp

    started = time.perf_counter()
    lltok = llguidance.LLTokenizer(tokenizer_json, eos_token=2)
    matcher = llguidance.LLMatcher(lltok, llguidance.LLMatcher.grammar_from_json_schema(SCHEMA))
    compile_s = time.perf_counter() - started
    assert not matcher.is_error(), matcher.get_error()
    mask = llnp.allocate_token_bitmask(1, lltok.vocab_size)
    started = time.perf_counter()
    for token in ids:
        llnp.fill_next_token_bitmask(matcher, mask)
        assert matcher.consume_token(token), matcher.get_error()
    return compile_s, (time.perf_counter() - started) / len(ids)


def _outlines(tokenizer: Any, ids: list[int], vocab: int) -> tuple[float, float]:
    import outlines_core
    from tokenizers import decoders

    byte_decoder = decoders.ByteLevel()
    started = time.perf_counter()
    tokens: dict[bytes, list[int]] = {}
    for text, token in tokenizer.get_vocab().items():
        if token < 3:
            continue
        tokens.setdefault(byte_decoder.decode([text]).encode("utf-8", "surrogatepass"), []).append(token)
    vocabulary = outlines_core.Vocabulary(2, tokens)
    regex = outlines_core.json_schema.build_regex_from_schema(json.dumps(SCHEMA))
    guide = outlines_core.Guide(outlines_core.Index(regex, vocabulary))
    compile_s = time.perf_counter() - started
    mask = np.zeros((1, (vocab + 31) // 32), dtype=np.int32)
    started = time.perf_counter()
    for token in ids:
        guide.write_mask_into(mask.ctypes.data, mask.size, 4)
        guide.advance(token)
    return compile_s, (time.perf_counter() - started) / len(ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    tokenizer = _tokenizer(args.vocab)
    vocab = tokenizer.get_vocab_size()
    ids = tokenizer.encode(json.dumps(INSTANCE, separators=(",", ":"))).ids
    from toolkit.host import current_host

    print(f"CPU: {current_host('cpu').cpu}, {platform.machine()}; vocab {vocab}; {len(ids)} tokens of JSON")
    engines = {
        "llguidance": lambda: _llguidance(tokenizer.to_str(), ids, vocab),
        "outlines-core": lambda: _outlines(tokenizer, ids, vocab),
    }
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in engines}
    for _ in range(args.rounds):  # interleaved, so a noisy neighbour slows both
        for name, run in engines.items():
            results[name].append(run())
    print(f"{'engine':<14} {'compile ms':>11} {'mask us/token':>14}")
    for name, runs in results.items():
        compile_ms = statistics.median(r[0] for r in runs) * 1e3
        per_token_us = statistics.median(r[1] for r in runs) * 1e6
        print(f"{name:<14} {compile_ms:>11.1f} {per_token_us:>14.1f}")


if __name__ == "__main__":
    main()
