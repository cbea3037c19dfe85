"""`edge run`: run a package on text, images or audio (through its pipeline) or on .npy inputs (the raw runner)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import click
import numpy as np

from toolkit.bench.measure import Budget, TimingPlan, latency_stats, time_calls
from toolkit.cli.common import CommaList, common_options, emit_json, progress, stdout
from toolkit.cli.generate import JSON_SCHEMA_HELP, generation_settings, run_prompts
from toolkit.cli.provider_options import placement_line, provider_options
from toolkit.errors import BadInputError
from toolkit.manifest import ModelPackage
from toolkit.providers import ProviderConfig
from toolkit.runner import Runner
from toolkit.tasks import Family, Pipeline, pipeline_class, pipelines, tasks
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
    _check_companion_flags(images, labels, out, prompts, json_schema)
    if prompts:
        if texts or images or clips or inputs:
            raise BadInputError(
                "--prompt generates text; pass it without --text, --image, --audio or --input"
            )
        if repeat:
            raise BadInputError(
                "--repeat does not time generation; use `edge bench DIR --new-tokens N` instead"
            )
        settings = generation_settings(max_new_tokens, temperature, json_schema)
        run_prompts(target, list(prompts), variant, provider_config, threads, settings, stream, as_json)
        return
    _check_one_input(texts, images, clips, inputs, query, docs)
    if inputs:
        ran = _run_tensors(target, inputs, variant, provider_config, threads, as_json)
    else:
        kind, items = _items(texts, images, clips, query, docs)
        decoding = {
            "timestamps": timestamps or None,
            "stride_s": stride,
            "language": language,
            "task": "translate" if translate else None,
            "num_beams": num_beams,
            "max_new_tokens": max_new_tokens,
        }
        options = {name: value for name, value in decoding.items() if value is not None}
        ran = _run_package(
            target, kind, items, labels, options, out, variant, provider_config, threads, as_json
        )
    result = {
        "model": str(ran.runner.path),
        "providers": list(ran.runner.providers),
        "node_placement": ran.runner.node_placement(),
        **ran.fields,
    }
    if repeat:
        result["latency"] = _time(ran.call, repeat)
    if as_json:
        emit_json(result)
        return
    _print(result, ran.lines)


def _check_companion_flags(
    images: tuple[str, ...],
    labels: tuple[str, ...] | None,
    out: str | None,
    prompts: tuple[str, ...],
    json_schema: str | None,
) -> None:
    """A BadInputError for a flag given without the input it works on."""
    if labels is not None and not images:
        raise BadInputError("--labels scores --image files against candidate labels; pass --image FILE")
    if out is not None and not images:
        raise BadInputError("--out draws detections on an --image; pass one --image FILE")
    if json_schema is not None and not prompts:
        raise BadInputError("--json-schema constrains generated text; pass it with --prompt")


def _check_one_input(
    texts: tuple[str, ...],
    images: tuple[str, ...],
    clips: tuple[str, ...],
    inputs: tuple[str, ...],
    query: str | None,
    docs: tuple[str, ...],
) -> None:
    """A BadInputError unless exactly one kind of input is given (--query and --doc together)."""
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


def _items(
    texts: tuple[str, ...],
    images: tuple[str, ...],
    clips: tuple[str, ...],
    query: str | None,
    docs: tuple[str, ...],
) -> tuple[str, list[str]]:
    """The kind of the items given (a task's `run_input`) and the items: texts, image files, WAV files, or the
    query followed by its documents."""
    if texts:
        return "text", list(texts)
    if images:
        return "image", list(images)
    if clips:
        return "audio", list(clips)
    return "query", [query or "", *docs]


@dataclass(frozen=True)
class _Ran:
    """One `edge run`: its runner, the call that ran (timed again for --repeat), the JSON fields and the lines
    printed for the results."""

    runner: Runner
    call: Callable[[], Any]
    fields: dict[str, Any]
    lines: list[str] = field(default_factory=list)


def _run_tensors(
    target: str,
    inputs: tuple[str, ...],
    variant: str,
    config: ProviderConfig,
    threads: int | None,
    quiet: bool,
) -> _Ran:
    """The raw runner on the --input arrays."""
    with progress(not quiet) as say:
        runner = Runner(target, variant=variant, config=config, threads=threads, progress=say)
    feeds = _read_inputs(inputs)
    outputs = runner.run(feeds)
    return _Ran(runner, lambda: runner.run(feeds), {"outputs": outputs})


def _run_package(
    target: str,
    kind: str,
    items: list[str],
    labels: tuple[str, ...] | None,
    options: Mapping[str, Any],
    out: str | None,
    variant: str,
    config: ProviderConfig,
    threads: int | None,
    quiet: bool,
) -> _Ran:
    """The package's pipeline on `items` (and the detections drawn to `out`)."""
    package = ModelPackage.open(target)
    with progress(not quiet) as say:
        runner = Runner(package.model_path(variant), config=config, threads=threads, progress=say)
    pipeline = pipeline_class(package)(package, runner)
    call = _items_call(pipeline, kind, items, labels, options)
    results = call()
    task = pipeline.task
    fields = {"task": task.name, _ITEMS_KEY[kind]: items, **task.run_json(results)}
    if out is not None:
        _annotate(pipeline, items, results, Path(out))
        fields["annotated"] = out
    return _Ran(runner, call, fields, task.run_lines(items, results))


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


def _items_call(
    pipeline: Pipeline[Any],
    kind: str,
    items: list[str],
    labels: tuple[str, ...] | None,
    options: Mapping[str, Any],
) -> Callable[[], list[Any]]:
    """The call running `items` (texts, image files or WAV files) through the pipeline: scored against the
    --labels, or decoded with an encoder-decoder's decoding `options` (`Seq2SeqPipeline.run_options`)."""
    _check_takes(pipeline, kind)
    run: Callable[[], list[Any]] = lambda: pipeline.run_items(items)  # noqa: E731
    if labels is not None:
        zero_shot = getattr(pipeline, "zero_shot", None)
        if zero_shot is None:
            manifest = pipeline.package.manifest
            raise BadInputError(
                f"--labels needs an image-text package (CLIP, SigLIP); '{manifest.name}' has task {manifest.task}"
            )
        run = lambda: zero_shot(items, list(labels))  # noqa: E731
    if options:
        decoder = _decoder_taking(pipeline, options)
        run = lambda: decoder.run_with(items, options)  # noqa: E731
    return run


def _check_takes(pipeline: Pipeline[Any], kind: str) -> None:
    """A BadInputError naming the flag to use when the package's task does not take `kind` items."""
    task = pipeline.task
    if task.run_input == kind:
        return
    manifest = pipeline.package.manifest
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


def _decoding_options(pipeline: type[Pipeline[Any]]) -> frozenset[str]:
    """The decoding options a pipeline takes: an encoder-decoder's `run_options`, none for the other families."""
    if pipeline.task_class.family is not Family.ENCODER_DECODER:
        return frozenset()
    # an encoder-decoder task's pipeline is a Seq2SeqPipeline
    return cast("type[Seq2SeqPipeline[Any]]", pipeline).run_options


def _decoder_taking(pipeline: Pipeline[Any], options: Mapping[str, Any]) -> Seq2SeqPipeline[Any]:
    """`pipeline` as the encoder-decoder taking every one of the decoding `options`; a BadInputError naming the
    first option's flag and the tasks that take it otherwise."""
    refused = [name for name in options if name not in _decoding_options(type(pipeline))]
    if refused:
        accepting = [name for name, cls in pipelines().items() if refused[0] in _decoding_options(cls)]
        manifest = pipeline.package.manifest
        raise BadInputError(
            f"{_FLAGS[refused[0]]} applies to {' and '.join(accepting)} packages; '{manifest.name}' has task "
            f"{manifest.task}"
        )
    return cast("Seq2SeqPipeline[Any]", pipeline)


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
