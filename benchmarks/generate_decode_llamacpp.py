"""The llama.cpp leg of `generate_decode.py`, run in its own venv (llama-cpp-python built from source).

The venv (torch first: any other torch request downloads the CUDA build; the build takes ~10 minutes on 2 cores,
with GGML_NATIVE's -march=native, so llama.cpp gets this CPU's SIMD as onnxruntime does):
    python3 -m venv VENV && VENV/bin/pip install torch==2.13.0
    VENV/bin/pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d SDIST_DIR
    CMAKE_BUILD_PARALLEL_LEVEL=2 VENV/bin/pip install SDIST_DIR/llama_cpp_python-0.3.36.tar.gz
    tar xzf SDIST_DIR/llama_cpp_python-0.3.36.tar.gz -C SDIST_DIR && mkdir VENV/llama.cpp
    cp -r SDIST_DIR/llama_cpp_python-0.3.36/vendor/llama.cpp/{convert_hf_to_gguf.py,conversion,gguf-py} VENV/llama.cpp/
    VENV/bin/pip install VENV/llama.cpp/gguf-py sentencepiece safetensors transformers==4.57.6
The converter is the sdist's own (vendor/llama.cpp, with its gguf-py: the same llama.cpp revision as the built
library), so converting needs no network; --converter points elsewhere.

Run by `generate_decode.py --llamacpp-python VENV/bin/python`, or alone:
    VENV/bin/python benchmarks/generate_decode_llamacpp.py prepare HF_DIR OUT_DIR [--types q4_0,f32]
    VENV/bin/python benchmarks/generate_decode_llamacpp.py time MODEL.gguf --ids 1,2,3 [--long-ids 1,2,...]
        --new-tokens 64 --threads 2 --rounds 3

`prepare` converts HF_DIR to OUT_DIR/model-f32.gguf (convert_hf_to_gguf.py --outtype f32) and quantizes that with
llama_model_quantize to each other type (q4_0: LLAMA_FTYPE_MOSTLY_Q4_0 with llama.cpp's defaults, which keep
the output projection at Q6_K), skipping files already there; prints one JSON line {"version", "system_info",
"models": {type: {"path", "bytes_per_token", "tensor_types"}}}. The benchmark's tokenizer is its own byte-level
BPE, unknown to the converter's table of pre-tokenizers; token ids are fed as they are, so it is recorded as
llama.cpp's "default" pre-tokenizer.

`time` is timed like the other backends, on llama.cpp's C API (no tokenizing, no BOS added: the exact ids):
one llama_decode of the prompt, then greedy argmax of the last logits and one llama_decode per new token, eos
ignored; n_threads = n_threads_batch = --threads, other context settings llama.cpp's defaults. Time to first
token = a 1-token generation, decode tokens/s = (N - 1) / (N-token time - 1-token time), medians of --rounds;
TTFT of the --long-ids prompt too; prints one JSON line {"ttft_ms", "ttft_512_ms", "decode_tokens_per_s",
"peak_rss_mb"} (peak RSS of this process: the model, mapped, and its generation). llama.cpp's OpenMP threads
spin at each barrier, so with other processes on the cores its 2-thread rate collapses (2.6 tokens/s seen here
under load, against ~300 on the same cores idle): compare its figures from a quiet host only.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import json
import os
import runpy
import sys
from pathlib import Path
from typing import Any

# a sibling script: this script's folder leads sys.path
from generate_decode import add_peer_arguments, timed_generation

# llama_model_quantize's file types by the name the benchmark uses
FILE_TYPES = {
    "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
    "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "f16": "LLAMA_FTYPE_MOSTLY_F16",
}


def _convert(converter: Path, source: Path, target: Path) -> None:
    """HF folder -> f32 GGUF by llama.cpp's converter, in this process, written atomically."""
    sys.path[:0] = [str(converter), str(converter / "gguf-py")]
    from conversion.base import TextModel

    # the benchmark tokenizer's pre-tokenizer hash is in no table; ids are fed directly, so any name will do
    TextModel.get_vocab_base_pre = lambda self, tokenizer: "default"  # type: ignore[method-assign]
    partial = target.with_suffix(".partial")
    sys.argv = ["convert_hf_to_gguf.py", str(source), "--outtype", "f32", "--outfile", str(partial)]
    runpy.run_path(str(converter / "convert_hf_to_gguf.py"), run_name="__main__")
    os.replace(partial, target)


def _quantize(llama_cpp: Any, source: Path, target: Path, file_type: str, threads: int) -> None:
    """llama_model_quantize with llama.cpp's default choices for `file_type`, written atomically."""
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, FILE_TYPES[file_type])
    params.nthread = threads
    partial = target.with_suffix(".partial")
    if llama_cpp.llama_model_quantize(str(source).encode(), str(partial).encode(), ctypes.byref(params)) != 0:
        raise SystemExit(f"llama_model_quantize to {file_type} failed for {source}")
    os.replace(partial, target)


def _weights(path: Path) -> dict[str, Any]:
    """Bytes one decode step reads (every tensor once, one row of the token embedding) and the tensor types."""
    from gguf import GGUFReader

    total, types = 0, collections.Counter[str]()
    for tensor in GGUFReader(path).tensors:
        rows = int(tensor.shape[1]) if tensor.name == "token_embd.weight" else 1
        total += int(tensor.n_bytes) // rows
        types[tensor.tensor_type.name] += 1
    return {"path": str(path.resolve()), "bytes_per_token": total, "tensor_types": dict(types)}


def prepare(args: argparse.Namespace) -> None:
    """Convert and quantize once; print versions and the models' paths and weight bytes."""
    import llama_cpp

    args.out.mkdir(parents=True, exist_ok=True)
    f32 = args.out / "model-f32.gguf"
    if not f32.is_file():
        _convert(args.converter, args.source, f32)
    models = {"f32": f32}
    for file_type in args.types.split(","):
        if file_type != "f32":
            models[file_type] = args.out / f"model-{file_type}.gguf"
            if not models[file_type].is_file():
                _quantize(llama_cpp, f32, models[file_type], file_type, os.cpu_count() or 1)
    print(
        json.dumps(
            {
                "version": llama_cpp.__version__,
                "system_info": llama_cpp.llama_print_system_info().decode().strip(),
                "models": {t: _weights(models[t]) for t in args.types.split(",")},
            }
        )
    )


def time_model(args: argparse.Namespace) -> None:
    """Time one GGUF model and print its JSON line."""
    import llama_cpp
    import numpy as np

    ids = [int(i) for i in args.ids.split(",")]
    long_ids = [int(i) for i in (args.long_ids or args.ids).split(",")]
    llama_cpp.llama_backend_init()
    model = llama_cpp.llama_model_load_from_file(
        str(args.model).encode(), llama_cpp.llama_model_default_params()
    )
    if not model:
        raise SystemExit(f"llama.cpp could not load {args.model}")
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = max(len(ids), len(long_ids)) + args.new_tokens + 1
    params.n_batch = params.n_ubatch = max(len(ids), len(long_ids))  # a prompt in one llama_decode
    params.n_threads = params.n_threads_batch = args.threads
    context = llama_cpp.llama_init_from_model(model, params)
    memory = llama_cpp.llama_get_memory(context)
    vocab_size = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model))

    def decode(tokens: list[int]) -> int:
        """Feed `tokens` after the cached ones; returns the greedy next token (only the last position's logits)."""
        array = (llama_cpp.llama_token * len(tokens))(*tokens)
        if llama_cpp.llama_decode(context, llama_cpp.llama_batch_get_one(array, len(tokens))) != 0:
            raise SystemExit("llama_decode failed")
        return int(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(context, -1), (vocab_size,)).argmax())

    def run(prompt: list[int], n: int) -> None:
        llama_cpp.llama_memory_clear(memory, True)
        token = decode(prompt)
        for _ in range(n - 1):
            token = decode([token])

    print(json.dumps(timed_generation(run, ids, long_ids, args.new_tokens, args.rounds)))


def main() -> None:
    """Prepare GGUF models or time one."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    prep = commands.add_parser("prepare", help="convert an HF folder to GGUF f32 and quantize it")
    prep.add_argument("source", type=Path)
    prep.add_argument("out", type=Path)
    prep.add_argument("--types", default="q4_0,f32", help=f"f32 and any of {', '.join(FILE_TYPES)}")
    prep.add_argument("--converter", type=Path, default=Path(sys.prefix) / "llama.cpp")
    prep.set_defaults(handler=prepare)
    timed = commands.add_parser("time", help="time one GGUF model")
    add_peer_arguments(timed)
    timed.set_defaults(handler=time_model)
    args = parser.parse_args()
    args.handler(args)


if __name__ == "__main__":
    main()
