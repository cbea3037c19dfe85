"""The onnxruntime-genai leg of `generate_decode.py`, run in its own venv (it needs the CPU onnxruntime package).

Run by `generate_decode.py --genai-python VENV/bin/python`, or alone:
    VENV/bin/python benchmarks/generate_decode_genai.py MODEL_DIR --ids 1,2,3 [--long-ids 1,2,...] --new-tokens 64
        --threads 2 --rounds 3

MODEL_DIR is onnxruntime-genai's model builder output (python -m onnxruntime_genai.models.builder -i HF_DIR
-o MODEL_DIR -p fp32|int4 -e cpu). Timed like the other backends: greedy, eos ignored (min_length), time to
first token = a 1-token generation, decode tokens/s = (N - 1) / (N-token time - 1-token time), medians of
--rounds; TTFT of the --long-ids prompt too; prints one JSON line {"ttft_ms", "ttft_512_ms",
"decode_tokens_per_s", "peak_rss_mb"} (peak RSS of this process: the model and its generation).

With --edge-package DIR [--edge-variant int4] it instead times decode steps of genai and of edge's package
(edge-toolkit importable) in this one process, on this venv's onnxruntime, trials interleaved: other processes'
load hits both alike, and the fastest trial of each is the least disturbed. Prints {"edge_step_ms",
"genai_step_ms"} (best trials) and their medians.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

# a sibling script: this script's folder leads sys.path
from generate_decode import add_peer_arguments, timed_generation


def _interleaved(
    og: Any, model: Any, args: argparse.Namespace, ids: list[int], steps: int = 32
) -> dict[str, float]:
    """Decode-step times of genai and edge, `args.rounds` trials each, interleaved in this process."""
    import numpy as np

    from toolkit.decoding.decoder import DecoderStepper
    from toolkit.tasks.generate import TextGenerator

    edge = TextGenerator.load(args.edge_package, "cpu", variant=args.edge_variant, threads=args.threads)
    prompt = np.asarray([ids], dtype=np.int64)

    def edge_step() -> float:
        stepper = DecoderStepper(
            edge.runner.session, edge.spec, prompt, np.ones_like(prompt), len(ids) + steps + 1
        )
        token = np.asarray([ids[-1]], dtype=np.int64)
        started = time.perf_counter()
        for _ in range(steps):
            token = stepper.step(token).argmax(-1)
        return (time.perf_counter() - started) / steps

    def genai_step() -> float:
        params = og.GeneratorParams(model)
        length = len(ids) + steps + 1
        params.set_search_options(do_sample=False, max_length=length, min_length=length, batch_size=1)
        generator = og.Generator(model, params)
        generator.append_tokens([ids])
        started = time.perf_counter()
        for _ in range(steps):
            generator.generate_next_token()
        return (time.perf_counter() - started) / steps

    edge_step(), genai_step()  # warm-up
    edge_times, genai_times = [], []
    for _ in range(args.rounds):
        edge_times.append(edge_step())
        genai_times.append(genai_step())
    return {
        "edge_step_ms": min(edge_times) * 1e3,
        "genai_step_ms": min(genai_times) * 1e3,
        "edge_median_ms": statistics.median(edge_times) * 1e3,
        "genai_median_ms": statistics.median(genai_times) * 1e3,
    }


def main() -> None:
    """Time one genai model and print its JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_peer_arguments(parser)
    parser.add_argument("--edge-package", type=Path, default=None)
    parser.add_argument("--edge-variant", default="int4")
    args = parser.parse_args()

    import onnxruntime_genai as og

    ids = [int(i) for i in args.ids.split(",")]
    long_ids = [int(i) for i in (args.long_ids or args.ids).split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        shutil.copytree(args.model, folder, symlinks=True)
        config_file = folder / "genai_config.json"
        config = json.loads(config_file.read_text())
        options = config["model"]["decoder"]["session_options"]
        options["intra_op_num_threads"] = args.threads
        options["inter_op_num_threads"] = 1
        config_file.write_text(json.dumps(config))
        model = og.Model(str(folder))
        if args.edge_package is not None:
            print(json.dumps(_interleaved(og, model, args, ids)))
            return

        def run(prompt: list[int], n: int) -> None:
            params = og.GeneratorParams(model)
            params.set_search_options(
                do_sample=False, max_length=len(prompt) + n, min_length=len(prompt) + n, batch_size=1
            )
            generator = og.Generator(model, params)
            generator.append_tokens([prompt])
            while not generator.is_done():
                generator.generate_next_token()

        print(json.dumps(timed_generation(run, ids, long_ids, args.new_tokens, args.rounds)))


if __name__ == "__main__":
    main()
