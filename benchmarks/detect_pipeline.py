"""`ObjectDetector.detect()` end to end (decode, resize, normalise, onnxruntime, post-processing) against
transformers' ``pipeline("object-detection")`` (PyTorch) on the same model and the same image files.

Run:  .venv/bin/python benchmarks/detect_pipeline.py [--source HF_DIR] [--images 8] [--rounds 5] [--threads 2]

Without --source it builds a random DETR (ResNet backbone [32, 64, 128, 256], d_model 128, 3 encoder and
3 decoder layers, 100 queries, shortest edge 480 / longest 640) in out/bench-detect/hf, since the hub cannot be
reached here; pass a local checkpoint (e.g. facebook/detr-resnet-50 saved with save_pretrained) to time that.
Both sides run the same 640x480 synthetic photos, one image per call, on `--threads` threads; rounds
alternate so background load hits both alike. Prints each side's median seconds per image over the rounds,
their ratio, and how many of transformers' detections ours matches (IoU >= 0.5, same label).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from pathlib import Path

import numpy as np


def build_detr(folder: Path) -> Path:
    """A random mid-size DETR with transformers' own ResNet backbone, saved with its image processor."""
    import torch
    import transformers as tf

    if (folder / "config.json").is_file():
        return folder
    torch.manual_seed(0)
    config = tf.DetrConfig(
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        backbone_config=tf.ResNetConfig(
            embedding_size=32, hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 2, 1], out_features=["stage4"]
        ),
        d_model=128,
        encoder_layers=3,
        decoder_layers=3,
        encoder_ffn_dim=512,
        decoder_ffn_dim=512,
        num_queries=100,
        id2label={i: f"class{i}" for i in range(10)},
        label2id={f"class{i}": i for i in range(10)},
    )
    model = tf.DetrForObjectDetection(config).eval()
    with torch.no_grad():
        model.class_labels_classifier.weight.normal_(0, 0.5)
    model.save_pretrained(folder)
    tf.DetrImageProcessor(size={"shortest_edge": 480, "longest_edge": 640}).save_pretrained(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("out/bench-detect"))
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--threshold", type=float, default=0.5)
    args = parser.parse_args()

    import torch
    from PIL import Image
    from transformers import pipeline

    from converters import ConvertOptions, convert
    from converters.samples import synthetic_photo
    from toolkit.tasks.detect import Detection, ObjectDetector, match_detections

    warnings.simplefilter("ignore")
    torch.set_num_threads(args.threads)
    source = args.source or build_detr(args.out / "hf")
    package_dir = args.out / "pkg"
    if not (package_dir / "edge.json").is_file():
        convert(str(source), package_dir, ConvertOptions(force=True))
    rng = np.random.default_rng(0)
    files = []
    for i in range(args.images):
        path = args.out / f"photo{i}.png"
        Image.fromarray(synthetic_photo(480, 640, rng)).save(path)
        files.append(str(path))

    detector = ObjectDetector.load(package_dir, threads=args.threads)
    theirs = pipeline("object-detection", model=str(source), image_processor=str(source), device="cpu")

    def ours_once() -> list[list[Detection]]:
        return [detector.detect([f], threshold=args.threshold)[0] for f in files]

    def theirs_once() -> list[list[dict[str, object]]]:
        return [theirs(f, threshold=args.threshold) for f in files]

    ours_once(), theirs_once()  # warm-up
    ours_s, theirs_s = [], []
    for _ in range(args.rounds):
        started = time.perf_counter()
        found = ours_once()
        ours_s.append((time.perf_counter() - started) / len(files))
        started = time.perf_counter()
        reference = theirs_once()
        theirs_s.append((time.perf_counter() - started) / len(files))
    ids = {name: i for i, name in enumerate(detector.package.manifest.labels or ())}
    matched = total = 0
    for got, want in zip(found, reference, strict=True):
        expected = [
            Detection(
                str(d["label"]),
                float(d["score"]),  # type: ignore[arg-type]
                tuple(float(d["box"][k]) for k in ("xmin", "ymin", "xmax", "ymax")),  # type: ignore[index,misc]
                ids.get(str(d["label"]), -1),
            )
            for d in want
        ]
        matched += match_detections(got, expected)
        total += len(expected)
    ours_p50, theirs_p50 = statistics.median(ours_s), statistics.median(theirs_s)
    print(f"model: {source}  images: {len(files)} x 640x480  threads: {args.threads}  rounds: {args.rounds}")
    print(f"{'':32}{'s / image':>12}")
    print(f"{'edge-toolkit detect()':32}{ours_p50:12.4f}")
    print(f"{'transformers pipeline (torch)':32}{theirs_p50:12.4f}")
    print(f"speed-up (transformers / ours): {theirs_p50 / ours_p50:.2f}x")
    print(f"transformers' detections matched by ours (IoU >= 0.5, same label): {matched}/{total}")


if __name__ == "__main__":
    main()
