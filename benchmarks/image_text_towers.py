"""CLIP text embedding time: the text tower alone against the joint graph (a blank image beside each batch).

Run:  python benchmarks/image_text_towers.py [--texts 256] [--batch 32] [--threads 2] [--rounds 5] [--work out/clip]

Builds a CLIP with ViT-B/32's configuration (`transformers.CLIPConfig()`, 151M parameters, random weights: the
graph's cost is the real model's), converts it once, and makes a copy of the package as packages looked before
the towers were split (no ``subgraphs``, no tower files). In one process, rounds alternate `embed_texts` over
the same texts on the copy (before) and on the package (after), so background load hits both alike; the table
gives each round's seconds and the ratio of the medians, with the CPU.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

from toolkit.host import current_host
from toolkit.tasks.image_text import ImageTextEmbedding

WORDS = [
    "a",
    "photo",
    "of",
    "the",
    "cat",
    "dog",
    "car",
    "tree",
    "house",
    "river",
    "on",
    "in",
    "with",
    "small",
    "large",
    "red",
    "blue",
    "green",
    "old",
    "new",
]


def build(work: Path) -> tuple[Path, Path]:
    """(the package with towers, its copy without them); converted once into `work`."""
    package, old = work / "package", work / "joint-only"
    if not package.is_dir():
        import torch
        from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

        from converters import ConvertOptions, convert
        from tests.conftest import build_offline_model

        # the recipe's offline stand-in (tokenizer and all), its model and processor replaced by full-size ones
        source = build_offline_model("clip-vit-b32", work / "hf")
        torch.manual_seed(0)
        text = {"vocab_size": 1000, "eos_token_id": 3, "pad_token_id": 0}
        CLIPModel(CLIPConfig(text_config=text)).eval().save_pretrained(source)
        CLIPImageProcessor().save_pretrained(source)
        convert(str(source), package, ConvertOptions(recipe="clip-vit-b32", force=True))
    if not old.is_dir():
        shutil.copytree(package, old)
        record = json.loads((old / "edge.json").read_text())
        for file in record["variants"]["fp32"].pop("subgraphs").values():
            (old / file).unlink()
        (old / "edge.json").write_text(json.dumps(record))
    return package, old


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--work", type=Path, default=Path("out/bench-clip-towers"))
    args = parser.parse_args()
    package, old = build(args.work)
    texts = [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(3 + i % 9)) for i in range(args.texts)]
    models = {
        "before (joint graph)": ImageTextEmbedding.load(old, threads=args.threads),
        "after (text tower)": ImageTextEmbedding.load(package, threads=args.threads),
    }
    for model in models.values():
        model.embed_texts(texts[: args.batch], batch_size=args.batch)  # warm-up
    seconds: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            started = time.perf_counter()
            model.embed_texts(texts, batch_size=args.batch)
            seconds[name].append(time.perf_counter() - started)
    host = current_host()
    print(f"CPU: {host.cpu} ({host.int8_path}), onnxruntime {host.onnxruntime}, {args.threads} threads")
    print(f"embed_texts of {args.texts} texts in batches of {args.batch}, CLIP ViT-B/32 configuration")
    medians = {}
    for name, values in seconds.items():
        medians[name] = statistics.median(values)
        print(f"{name:<22} median {medians[name]:.3f} s   rounds: {', '.join(f'{v:.3f}' for v in values)}")
    before, after = medians.values()
    print(f"before / after: {before / after:.2f}x")


if __name__ == "__main__":
    main()
