"""`edge run DIR --prompt` and `edge chat DIR`: text generation from a ``generate`` package."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import click

from toolkit.cli.common import _jsonable, common_options, console, emit_json, progress, stdout
from toolkit.cli.provider_options import provider_options
from toolkit.errors import BadInputError
from toolkit.manifest import ModelPackage
from toolkit.providers import ProviderConfig
from toolkit.runner import Runner
from toolkit.tasks.generate import TextGenerator

__all__ = [
    "JSON_SCHEMA_HELP",
    "bench_generator",
    "chat_command",
    "generation_settings",
    "generator_ready_lines",
    "read_json_schema",
    "run_prompts",
]

JSON_SCHEMA_HELP = (
    "A JSON Schema file the text must match (constrained decoding; needs edge-toolkit[grammar])."
)


def read_json_schema(path: str) -> dict[str, Any]:
    """The JSON Schema object in the file at `path` (`--json-schema`)."""
    try:
        schema = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise BadInputError(
            f"--json-schema {path}: cannot read it as JSON ({exc}); pass a JSON Schema file"
        ) from exc
    if not isinstance(schema, dict):
        raise BadInputError(
            f"--json-schema {path}: holds a {type(schema).__name__}, not a JSON Schema object"
        )
    return schema


def generation_settings(
    max_new_tokens: int | None, temperature: float | None, json_schema: str | None
) -> dict[str, Any]:
    """`TextGenerator.generate`'s settings from --max-new-tokens, --temperature and --json-schema."""
    settings: dict[str, Any] = {"max_new_tokens": max_new_tokens}
    if json_schema is not None:
        settings["json_schema"] = read_json_schema(json_schema)
    if temperature is not None:
        settings.update(do_sample=True, temperature=temperature)
    return settings


def _generator(
    target: str, variant: str, config: ProviderConfig, threads: int | None, quiet: bool
) -> TextGenerator:
    package = ModelPackage.open(target)
    with progress(not quiet) as say:
        runner = Runner(package.model_path(variant), config=config, threads=threads, progress=say)
    return TextGenerator(package, runner)


def run_prompts(
    target: str,
    prompts: list[str],
    variant: str,
    config: ProviderConfig,
    threads: int | None,
    settings: dict[str, Any],
    stream: bool,
    as_json: bool,
) -> None:
    """`edge run DIR --prompt ...`: generate for each prompt (one batch), streamed when asked."""
    generator = _generator(target, variant, config, threads, as_json)
    if stream:
        if as_json or len(prompts) != 1:
            raise BadInputError("--stream takes one --prompt and no --json; drop one of them")
        pieces = generator.stream(prompts[0], **settings)
        for piece in pieces:
            click.echo(piece, nl=False)
        click.echo()
        if pieces.generation is not None:
            console.print(generator.task.timing_line(pieces.generation), markup=False)
        return
    results = generator.generate(prompts, **settings)
    task = generator.task
    if as_json:
        emit_json(
            {
                "model": str(generator.runner.path),
                "providers": list(generator.runner.providers),
                **task.run_json(results),
            }
        )
        return
    for line in task.run_lines(prompts, results):
        click.echo(line)


@click.command("chat")
@click.argument("target", type=click.Path())
@click.option("--variant", default="fp32", show_default=True, help="Package variant to run.")
@provider_options
@click.option("--threads", type=click.IntRange(min=1), default=None, help="onnxruntime intra-op threads.")
@click.option("--system", default=None, help="A system message to start the chat with.")
@click.option("--max-new-tokens", type=int, default=256, show_default=True, help="Tokens per reply at most.")
@click.option("--temperature", type=float, default=None, help="Sample at this temperature (default: greedy).")
@click.option(
    "--json-schema", "json_schema", type=click.Path(dir_okay=False), default=None, help=JSON_SCHEMA_HELP
)
@common_options
def chat_command(
    target: str,
    variant: str,
    provider_config: ProviderConfig,
    threads: int | None,
    system: str | None,
    max_new_tokens: int,
    temperature: float | None,
    json_schema: str | None,
) -> None:
    """Chat with a generate package in the terminal: history kept, replies streamed (each one a JSON document
    matching --json-schema when given); empty line or EOF ends."""
    generator = _generator(target, variant, provider_config, threads, False)
    settings = generation_settings(max_new_tokens, temperature, json_schema)
    options = generator.options(**settings)  # bad settings (and a schema that does not compile) fail now
    if options.constraint is not None:
        generator.grammars.row(options.constraint)
    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    while True:
        try:
            text = click.prompt("you", default="", show_default=False, prompt_suffix="> ")
        except click.Abort:
            break
        if not text.strip():
            break
        history.append({"role": "user", "content": text})
        pieces = generator.stream(history, **settings)
        click.echo("assistant> ", nl=False)
        for piece in pieces:
            click.echo(piece, nl=False)
        click.echo()
        reply = pieces.generation.text if pieces.generation is not None else ""
        history.append({"role": "assistant", "content": reply})


def generator_ready_lines(url: str, generators: Mapping[str, TextGenerator]) -> list[str]:
    """What `edge serve` prints for its generators."""
    return [
        f"  {name}  generate ({g.runner.path.name})  OpenAI: {url}/v1/completions, {url}/v1/chat/completions"
        for name, g in generators.items()
    ]


def bench_generator(
    target: str,
    variants: Sequence[str] | None,
    providers: Sequence[str],
    config: ProviderConfig,
    threads: int | None,
    batches: Sequence[int],
    prompt_lengths: Sequence[int] | None,
    new_tokens: Sequence[int],
    runs: int,
    baseline: str | None,
    json_path: str | None,
) -> None:
    """`edge bench` on a generate package: TTFT and decode tokens/s per variant and provider (each timed on
    its own), and torch, as a table."""
    from toolkit.bench.generation import bench_generation, generator_timer, prompt_ids

    package = ModelPackage.open(target)
    names = list(variants or package.manifest.variants)
    timers: dict[str, Any] = {}
    first: TextGenerator | None = None
    for provider in providers:
        for name in names:
            runner = Runner(package.model_path(name), provider, config=config, threads=threads)
            generator = TextGenerator(package, runner)
            first = first or generator
            label = f"edge {name}" + (f" {provider}" if len(providers) > 1 else "")
            timers[label] = generator_timer(generator)
    assert first is not None
    if baseline is not None:
        if baseline != "torch":
            raise BadInputError(f"--baseline takes torch, got '{baseline}'")
        from converters.causal_lm import torch_generation_timer

        timers["torch eager"] = torch_generation_timer(Path(package.manifest.source.ref), threads)
    lengths = tuple(prompt_lengths or (32, 128))
    too_long = [n for n in lengths if n + max(new_tokens) > first.spec.max_positions]
    if too_long:
        raise BadInputError(
            f"--seq {too_long[0]} plus {max(new_tokens)} new tokens exceeds the model's "
            f"{first.spec.max_positions} positions; pick shorter prompts or fewer --new-tokens"
        )
    text = "Edge inference keeps latency low on small devices, one token at a time. "
    ids = {n: prompt_ids(first, n, text) for n in lengths}
    with progress(json_path != "-") as say:
        say(f"timing {len(timers)} backend(s) over {len(lengths) * len(batches) * len(new_tokens)} cells")
        cells = bench_generation(timers, ids, batches, new_tokens, runs)
    if json_path:
        data = {"model": str(package.path), "providers": list(first.runner.providers), "cells": cells}
        if json_path == "-":
            emit_json(data)
            return
        Path(json_path).write_text(json.dumps(_jsonable(data), indent=2) + "\n", encoding="utf-8")
    base = {
        (c.prompt_tokens, c.batch, c.new_tokens): c.decode_tokens_per_s
        for c in cells
        if c.backend == "torch eager"
    }
    stdout.print(
        f"{package.path} on {', '.join(first.runner.providers)}; greedy, eos ignored; medians of {runs} runs"
    )
    header = f"{'backend':<16} {'prompt':>6} {'batch':>5} {'new':>4} {'TTFT ms':>9} {'decode ms':>10} {'decode tok/s':>13}"
    stdout.print(header + (f" {'vs torch':>9}" if base else ""), markup=False)
    for c in cells:
        line = (
            f"{c.backend:<16} {c.prompt_tokens:>6} {c.batch:>5} {c.new_tokens:>4} {c.ttft_ms:>9.1f} "
            f"{c.decode_ms:>10.1f} {c.decode_tokens_per_s:>13.1f}"
        )
        if base:
            line += f" {c.decode_tokens_per_s / base[(c.prompt_tokens, c.batch, c.new_tokens)]:>8.2f}x"
        stdout.print(line, markup=False)
