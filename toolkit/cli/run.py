"""`edge run`: run a package on text, images or audio (through its pipeline) or on .npy inputs (the raw runner)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import click
import numpy as np

from toolkit.bench.measure import Budget, TimingPlan, latency_stats, time_calls
from toolkit.cli.common import CommaList, common_options, emit_json, progress, stdout
from toolkit.cli.generate import JSON_SCHEMA_HELP, read_json_schema, run_prompts
from toolkit.cli.provider_options import placement_line, provider_options
from toolkit.errors import BadInputError
from toolkit.manifest import ModelPackage
from toolkit.providers import ProviderConfig
from toolkit.runner import Runner
from toolkit.tasks import Pipeline, pipeline_class, pipelines, tasks
from toolkit.tasks.encoder_decoder import Seq2SeqPipeline

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
    # one warm-up run (the first allocates and may compile kernels), then `repeat` timed ones: bench's loop
    plan = TimingPlan(warmup=Budget(runs=1), measure=Budget(runs=repeat), min_runs=repeat)
    stats = latency_stats(time_calls(call, plan))
    return {"runs": stats.runs, "p50_ms": stats.p50_ms, "min_ms": stats.min_ms, "mean_ms": stats.mean_ms}


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
    help="An image for an image package: image-classify prints the top 5, segment the largest classes (repeatable).",
)
@click.option(
    "--audio",
    "clips",
    multiple=True,
    metavar="FILE.wav",
    help="A PCM WAV clip for an audio package: top 5 labels, or the encoder's frames (repeatable).",
)
@click.option("--query", default=None, help="rerank: the query to rank the --doc texts for.")
@click.option("--doc", "docs", multiple=True, help="rerank: a document to rank for --query (repeatable).")
@click.option(
    "--input", "inputs", multiple=True, metavar="NAME=FILE.npy", help="A raw input tensor (repeatable)."
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default=None,
    metavar="FILE.png",
    help="detect: draw the detections on the (one) --image and save it here.",
)
@click.option(
    "--labels",
    type=CommaList(example="a cat,a dog"),
    default=None,
    help="image-text: zero-shot candidate labels for the --image files, comma-separated.",
)
@click.option(
    "--timestamps", is_flag=True, help="transcribe: split each --audio transcript into timed segments."
)
@click.option(
    "--stride",
    type=float,
    default=None,
    metavar="SECONDS",
    help="transcribe: seconds each 30 s window of a longer clip overlaps its neighbours on each side [default: 5].",
)
@click.option(
    "--language",
    default=None,
    metavar="CODE",
    help="transcribe: the clips' language code, e.g. en [default: detected per 30 s window].",
)
@click.option(
    "--translate", is_flag=True, help="transcribe: translate the speech to English (Whisper's task)."
)
@click.option(
    "--num-beams",
    type=int,
    default=None,
    help="transcribe, text2text: beam search with this many beams [default: the model's config].",
)
@click.option(
    "--prompt", "prompts", multiple=True, help="A prompt for a generate package (repeatable: one batch)."
)
@click.option(
    "--max-new-tokens",
    type=int,
    default=None,
    help="With --prompt, or for transcribe and text2text packages: new tokens at most.",
)
@click.option("--temperature", type=float, default=None, help="With --prompt: sample at this temperature.")
@click.option("--stream", is_flag=True, help="With --prompt: print the text as it is generated.")
@click.option(
    "--json-schema",
    "json_schema",
    type=click.Path(dir_okay=False),
    default=None,
    help=f"With --prompt: {JSON_SCHEMA_HELP}",
)
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
    query: str | None,
    docs: tuple[str, ...],
    inputs: tuple[str, ...],
    out: str | None,
    labels: tuple[str, ...] | None,
    timestamps: bool,
    stride: float | None,
    language: str | None,
    translate: bool,
    num_beams: int | None,
    prompts: tuple[str, ...],
    max_new_tokens: int | None,
    temperature: float | None,
    stream: bool,
    json_schema: str | None,
    variant: str,
    provider_config: ProviderConfig,
    threads: int | None,
    repeat: int,
    as_json: bool,
) -> None:
    """Run TARGET (a package directory, or an .onnx file with --input) and print the result."""
    if labels is not None and not images:
        raise BadInputError("--labels scores --image files against candidate labels; pass --image FILE")
    if out is not None and not images:
        raise BadInputError("--out draws detections on an --image; pass one --image FILE")
    if json_schema is not None and not prompts:
        raise BadInputError("--json-schema constrains generated text; pass it with --prompt")
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
        if json_schema is not None:
            settings["json_schema"] = read_json_schema(json_schema)
        if temperature is not None:
            settings.update(do_sample=True, temperature=temperature)
        run_prompts(target, list(prompts), variant, provider_config, threads, settings, stream, as_json)
        return
    if docs and query is None:
        raise BadInputError("--doc is a document to rank for a --query; pass --query TEXT too")
    if query is not None and not docs:
        raise BadInputError("--query ranks documents; pass each with --doc TEXT")
    if sum(map(bool, (texts, images, clips, inputs, docs))) != 1:
        raise BadInputError(
            "pass one of --text (a text pipeline), --image FILE (an image package), --audio FILE.wav "
            "(an audio package), --query with --doc (a rerank package), --prompt (a generate package) or "
            "--input NAME=FILE.npy"
        )
    result: dict[str, Any]
    call: Callable[[], Any]
    if texts or images or clips or docs:
        package = ModelPackage.open(target)
        with progress(not as_json) as say:
            runner = Runner(
                package.model_path(variant), config=provider_config, threads=threads, progress=say
            )
        pipeline = pipeline_class(package)(package, runner)
        kind, items = (
            ("text", texts)
            if texts
            else ("image", images)
            if images
            else ("audio", clips)
            if clips
            else ("query", (query or "", *docs))
        )
        decoding = {
            "timestamps": timestamps or None,
            "stride_s": stride,
            "language": language,
            "task": "translate" if translate else None,
            "num_beams": num_beams,
            "max_new_tokens": max_new_tokens,
        }
        options = {name: value for name, value in decoding.items() if value is not None}
        call, result = _run_items(pipeline, kind, list(items), labels, options)
        if out is not None:
            _annotate(pipeline, list(items), result.pop("results_for_drawing"), Path(out))
            result["annotated"] = out
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
    result.pop("results_for_drawing", None)
    lines = result.pop("lines", [])
    if as_json:
        emit_json(result)
        return
    _print(result, lines)


_ITEMS_KEY = {"text": "texts", "image": "images", "audio": "clips", "query": "query_and_documents"}
# the `edge run` flag behind each decoding option, for errors
_FLAGS = {
    "timestamps": "--timestamps",
    "stride_s": "--stride",
    "language": "--language",
    "task": "--translate",
    "num_beams": "--num-beams",
    "max_new_tokens": "--max-new-tokens",
}


def _run_items(
    pipeline: Pipeline[Any],
    kind: str,
    items: list[str],
    labels: tuple[str, ...] | None = None,
    options: Mapping[str, Any] | None = None,
) -> tuple[Callable[[], Any], dict[str, Any]]:
    """Run `items` (texts, image files or WAV files) through the pipeline, with an encoder-decoder's decoding
    `options` (`Seq2SeqPipeline.run_options`); the task says how to print them."""
    task = pipeline.task
    manifest = pipeline.package.manifest
    if task.run_input != kind:
        takers = ", ".join(name for name, t in tasks().items() if t.run_input == kind)
        if kind == "audio":
            raise BadInputError(
                f"package '{manifest.name}' (task {manifest.task}) takes no waveform: only {takers} packages "
                "with a wav2vec 2.0-style front end do; run it with --input NAME=FILE.npy"
            )
        instead = f"--{task.run_input}" if task.run_input is not None else "--input NAME=FILE.npy"
        raise BadInputError(
            f"package task '{manifest.task}' has no {kind} pipeline ({takers} have); run it with {instead}"
        )
    run = lambda: pipeline.run_items(items)  # noqa: E731
    if labels is not None:
        zero_shot = getattr(pipeline, "zero_shot", None)
        if zero_shot is None:
            raise BadInputError(
                f"--labels needs an image-text package (CLIP, SigLIP); '{manifest.name}' has task {manifest.task}"
            )
        run = lambda: zero_shot(items, list(labels))  # noqa: E731
    if options:
        accepted = pipeline.run_options if isinstance(pipeline, Seq2SeqPipeline) else frozenset()
        refused = [name for name in options if name not in accepted]
        if refused:
            accepting = [
                task_name
                for task_name, cls in pipelines().items()
                if issubclass(cls, Seq2SeqPipeline) and refused[0] in cls.run_options
            ]
            raise BadInputError(
                f"{_FLAGS[refused[0]]} applies to {' and '.join(accepting)} packages; '{manifest.name}' has task "
                f"{manifest.task}"
            )
        assert isinstance(pipeline, Seq2SeqPipeline)
        decoder = pipeline
        run = lambda: decoder.run_with(items, options)  # noqa: E731
    results = run()
    result = {"task": task.name, _ITEMS_KEY[kind]: items, **task.run_json(results)}
    result["lines"] = task.run_lines(items, results)
    result["results_for_drawing"] = results
    return run, result


def _annotate(pipeline: Pipeline[Any], items: list[str], results: list[Any], out: Path) -> None:
    """Draw the task's results on the one input image (tasks with an `annotate` method: detect)."""
    draw = getattr(pipeline.task, "annotate", None)
    if draw is None or len(items) != 1:
        raise BadInputError(
            f"--out draws the detections of one --image; task '{pipeline.task.name}' with {len(items)} input(s) "
            "has nothing to draw there"
        )
    draw(items[0], results[0], out)


def _print(result: dict[str, Any], lines: list[str]) -> None:
    stdout.print(f"{result['model']} on {', '.join(result['providers'])}")
    stdout.print(placement_line(result["node_placement"]))
    if "annotated" in result:
        stdout.print(f"drew the detections on {result['annotated']}", markup=False)
    for line in lines:
        stdout.print(line, markup=False)  # paths and labels may hold [brackets]
    for name, array in result.get("outputs", {}).items():
        stdout.print(
            f"{name}: {array.dtype} {list(array.shape)} min {array.min():.4g} max {array.max():.4g} mean {array.mean():.4g}"
        )
    if "latency" in result:
        latency = result["latency"]
        stdout.print(
            f"latency over {latency['runs']} runs: p50 {latency['p50_ms']:.2f} ms, min {latency['min_ms']:.2f} ms"
        )
