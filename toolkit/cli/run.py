"""`edge run`: run a package on text, images or audio (through its pipeline) or on .npy inputs (the raw runner)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import numpy as np

from toolkit.cli.common import common_options, emit_json, progress, stdout
from toolkit.cli.generate import run_prompts
from toolkit.cli.provider_options import placement_line, provider_options
from toolkit.errors import BadInputError
from toolkit.manifest import ModelPackage
from toolkit.pipelines import (
    AudioClassifier,
    AudioEncoder,
    Classification,
    ImageClassifier,
    ModelPipeline,
    TextClassifier,
    TextEmbedding,
    pipeline_class,
)
from toolkit.providers import ProviderConfig
from toolkit.runner import Runner

__all__ = ["run_command"]


def _read_inputs(pairs: tuple[str, ...]) -> dict[str, np.ndarray]:
    feeds = {}
    for pair in pairs:
        name, sep, file = pair.partition("=")
        if not sep or not name or not file:
            raise BadInputError(f"--input '{pair}' must look like NAME=FILE.npy")
        path = Path(file)
        if not path.is_file():
            raise BadInputError(f"--input {name}: file '{file}' does not exist")
        try:
            feeds[name] = np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise BadInputError(f"--input {name}: '{file}' is not a .npy array ({exc})") from None
    return feeds


def _time(call: Callable[[], Any], repeat: int) -> dict[str, float]:
    call()  # warm-up: first run allocates and may compile kernels
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1e3)
    return {
        "runs": repeat,
        "p50_ms": statistics.median(samples),
        "min_ms": min(samples),
        "mean_ms": statistics.fmean(samples),
    }


@click.command("run")
@click.argument("target", type=click.Path())
@click.option(
    "--text", "texts", multiple=True, help="A text to run through the package's pipeline (repeatable)."
)
@click.option(
    "--image",
    "images",
    multiple=True,
    metavar="FILE",
    help="An image to classify with an image-classify package, top 5 printed (repeatable).",
)
@click.option(
    "--audio",
    "clips",
    multiple=True,
    metavar="FILE.wav",
    help="A PCM WAV clip for an audio package: top 5 labels, or the encoder's frames (repeatable).",
)
@click.option(
    "--input", "inputs", multiple=True, metavar="NAME=FILE.npy", help="A raw input tensor (repeatable)."
)
# --- issue 15: generation (toolkit/cli/generate.py)
@click.option(
    "--prompt", "prompts", multiple=True, help="A prompt for a generate package (repeatable: one batch)."
)
@click.option("--max-new-tokens", type=int, default=None, help="With --prompt: new tokens at most.")
@click.option("--temperature", type=float, default=None, help="With --prompt: sample at this temperature.")
@click.option("--stream", is_flag=True, help="With --prompt: print the text as it is generated.")
@click.option("--variant", default="fp32", show_default=True, help="Package variant to run.")
@provider_options
@click.option("--threads", type=click.IntRange(min=1), default=None, help="onnxruntime intra-op threads.")
@click.option(
    "--repeat", type=click.IntRange(min=0), default=0, help="Also time this many runs and print the latency."
)
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON.")
@common_options
def run_command(
    target: str,
    texts: tuple[str, ...],
    images: tuple[str, ...],
    clips: tuple[str, ...],
    inputs: tuple[str, ...],
    prompts: tuple[str, ...],
    max_new_tokens: int | None,
    temperature: float | None,
    stream: bool,
    variant: str,
    provider_config: ProviderConfig,
    threads: int | None,
    repeat: int,
    as_json: bool,
) -> None:
    """Run TARGET (a package directory, or an .onnx file with --input) and print the result."""
    if prompts:
        if texts or images or clips or inputs:
            raise BadInputError(
                "--prompt generates text; pass it without --text, --image, --audio or --input"
            )
        if repeat:
            raise BadInputError(
                "--repeat does not time generation; use `edge bench DIR --new-tokens N` instead"
            )
        settings: dict[str, Any] = {"max_new_tokens": max_new_tokens}
        if temperature is not None:
            settings.update(do_sample=True, temperature=temperature)
        run_prompts(target, list(prompts), variant, provider_config, threads, settings, stream, as_json)
        return
    if sum(map(bool, (texts, images, clips, inputs))) != 1:
        raise BadInputError(
            "pass one of --text (a text pipeline), --image FILE (an image classifier), --audio FILE.wav "
            "(an audio package), --prompt (a generate package) or --input NAME=FILE.npy"
        )
    result: dict[str, Any]
    call: Callable[[], Any]
    if texts or images or clips:
        package = ModelPackage.open(target)
        with progress(not as_json) as say:
            runner = Runner(
                package.model_path(variant), config=provider_config, threads=threads, progress=say
            )
        pipeline = pipeline_class(package)(package, runner)
        if texts:
            call, result = _run_text(pipeline, list(texts))
        elif images:
            call, result = _run_images(pipeline, list(images))
        else:
            call, result = _run_audio(pipeline, list(clips))
    else:
        with progress(not as_json) as say:
            runner = Runner(target, variant=variant, config=provider_config, threads=threads, progress=say)
        feeds = _read_inputs(inputs)
        outputs = runner.run(feeds)
        call = lambda: runner.run(feeds)  # noqa: E731
        result = {"outputs": outputs}
    result = {
        "model": str(runner.path),
        "providers": list(runner.providers),
        "node_placement": runner.node_placement(),
        **result,
    }
    if repeat:
        result["latency"] = _time(call, repeat)
    if as_json:
        emit_json(result)
        return
    _print(result)


def _run_text(pipeline: ModelPipeline, texts: list[str]) -> tuple[Callable[[], Any], dict[str, Any]]:
    if isinstance(pipeline, TextEmbedding):
        embeddings = pipeline.embed(texts)
        return (lambda: pipeline.embed(texts)), {"task": "embed", "texts": texts, "embeddings": embeddings}
    if isinstance(pipeline, TextClassifier):
        return (lambda: pipeline.classify(texts)), {
            "task": "classify",
            "texts": texts,
            "classifications": pipeline.classify(texts),
        }
    raise BadInputError(
        f"package task '{pipeline.package.manifest.task}' has no text pipeline; run it with --input NAME=FILE.npy"
        + (" (or --prompt: it generates)" if pipeline.package.manifest.task == "generate" else "")
    )


def _top5(ranked: list[list[Classification]]) -> list[list[dict[str, Any]]]:
    return [[{"label": c.label, "score": c.score} for c in labels] for labels in ranked]


def _run_images(pipeline: ModelPipeline, images: list[str]) -> tuple[Callable[[], Any], dict[str, Any]]:
    if not isinstance(pipeline, ImageClassifier):
        raise BadInputError(
            f"package task '{pipeline.package.manifest.task}' has no image pipeline (image-classify has); "
            "run it with --input NAME=FILE.npy"
        )
    return (lambda: pipeline.classify(images, top_k=5)), {
        "task": "image-classify",
        "images": images,
        "top5": _top5(pipeline.classify(images, top_k=5)),
    }


def _run_audio(pipeline: ModelPipeline, clips: list[str]) -> tuple[Callable[[], Any], dict[str, Any]]:
    if isinstance(pipeline, AudioClassifier):
        return (lambda: pipeline.classify(clips, top_k=5)), {
            "task": "audio-classify",
            "clips": clips,
            "top5": _top5(pipeline.classify(clips, top_k=5)),
        }
    if isinstance(pipeline, AudioEncoder):
        return (lambda: pipeline.encode(clips)), {
            "task": "audio-features",
            "clips": clips,
            "features": pipeline.encode(clips),
        }
    raise BadInputError(
        f"package '{pipeline.package.manifest.name}' (task {pipeline.package.manifest.task}) takes no waveform: "
        "only audio-features and audio-classify packages with a wav2vec 2.0-style front end do; "
        "run it with --input NAME=FILE.npy"
    )


def _print(result: dict[str, Any]) -> None:
    stdout.print(f"{result['model']} on {', '.join(result['providers'])}")
    stdout.print(placement_line(result["node_placement"]))
    if "embeddings" in result:
        for text, vector in zip(result["texts"], result["embeddings"], strict=True):
            head = " ".join(f"{v:+.4f}" for v in vector[:6])
            stdout.print(
                f"{text[:50]!r}: dim {vector.shape[0]}, norm {np.linalg.norm(vector):.4f}, [{head} ...]"
            )
    if "classifications" in result:
        for text, c in zip(result["texts"], result["classifications"], strict=True):
            stdout.print(f"{text[:50]!r}: {c.label} ({c.score:.3f})")
    for file, ranked in zip(
        result.get("images", result.get("clips", ())), result.get("top5", ()), strict=False
    ):
        stdout.print(f"{file}:", markup=False)  # paths and labels may hold [brackets]
        for place, entry in enumerate(ranked, 1):
            stdout.print(f"  {place}. {entry['score']:.4f}  {entry['label']}", markup=False)
    for clip, frames in zip(result.get("clips", ()), result.get("features", ()), strict=False):
        stdout.print(f"{clip}:", markup=False)
        stdout.print(
            f"  {frames.shape[0]} frames x {frames.shape[1]}, mean {frames.mean():.4g}, std {frames.std():.4g}"
        )
    for name, array in result.get("outputs", {}).items():
        stdout.print(
            f"{name}: {array.dtype} {list(array.shape)} min {array.min():.4g} max {array.max():.4g} mean {array.mean():.4g}"
        )
    if "latency" in result:
        latency = result["latency"]
        stdout.print(
            f"latency over {latency['runs']} runs: p50 {latency['p50_ms']:.2f} ms, min {latency['min_ms']:.2f} ms"
        )
