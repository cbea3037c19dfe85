"""`edge convert` and `edge models`: the only commands that import `converters` (and so torch)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click
from rich.table import Table

from toolkit.agreement import DEFAULT_ATOL, DEFAULT_RTOL
from toolkit.cli.common import EXIT_VALIDATION_FAILED, common_options, emit_json, progress, stdout
from toolkit.manifest import FP32_VARIANT, Validation
from toolkit.tasks import task_names

__all__ = ["convert_command", "models_command", "render_validation"]


def render_validation(validation: Validation, title: str) -> Table:
    """One row per output: worst and mean absolute difference, each rule's measure against its limit (its ratio:
    the error over what it allows), the rule that decided, verdict."""
    table = Table(title=title, title_justify="left")
    for column in (
        "output",
        "max abs diff",
        "mean abs diff",
        "rules (value / limit = ratio)",
        "decided by",
        "result",
    ):
        table.add_column(column, justify="right" if "diff" in column else "left")
    for check in validation.outputs:
        verdict = "[green]pass[/]" if check.passed else "[red]FAIL[/]"
        rules = (
            "\n".join(f"{r.rule} {r.value:.4g} / {r.limit:.4g} = {r.ratio:.2f}" for r in check.rules)
            or f"max abs diff <= {validation.threshold:.3g}"
        )
        table.add_row(
            check.name,
            f"{check.max_abs_diff:.3g}",
            f"{check.mean_abs_diff:.3g}",
            rules,
            check.decided_by,
            verdict,
        )
    tolerance = (
        f"; allclose: |onnx - ref| <= {validation.atol:.3g} + {validation.rtol:.3g} * |ref|"
        if validation.atol is not None and validation.rtol is not None
        else ""
    )
    table.caption = (
        f"{len(validation.cases)} cases, {validation.samples} samples vs {validation.reference}{tolerance}: "
        + "; ".join(validation.cases)
    )
    return table


def validation_failure(validation: Validation) -> str:
    """The one line naming each failed output and the rule that failed it."""
    failed = [check for check in validation.outputs if not check.passed]
    if not failed or not failed[0].rules:
        return f"max abs diff {validation.value:.3g} > tolerance {validation.threshold:.3g}"
    parts = []
    for check in failed:
        rule = next(r for r in check.rules if r.rule == check.decided_by)
        measure = "diff" if rule.rule == "allclose" else rule.rule
        parts.append(f"'{check.name}' fails {rule.rule} ({measure} {rule.value:.4g}, limit {rule.limit:.4g})")
    return "; ".join(parts)


@click.command("convert")
@click.argument("source")
@click.option(
    "-o",
    "--output",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Package directory to write.",
)
@click.option(
    "--task",
    default=None,
    help=f"Override the detected task: {', '.join(task_names())}.",
)
@click.option(
    "--opset", type=click.IntRange(7, 30), default=None, help="ONNX opset (default: the exporter's choice)."
)
@click.option(
    "--atol",
    type=float,
    default=None,
    help=f"Absolute tolerance of validation: |onnx - torch| <= atol + rtol * |torch| (default {DEFAULT_ATOL:g} "
    "or the recipe's).",
)
@click.option(
    "--rtol",
    type=float,
    default=None,
    help=f"Relative tolerance of validation (default {DEFAULT_RTOL:g} or the recipe's).",
)
@click.option("--force", is_flag=True, help="Replace an existing package in the output directory.")
@click.option(
    "--recipe",
    default=None,
    metavar="NAME",
    help="Convert SOURCE (e.g. a local checkpoint) with a recipe's task, inputs, preprocessing, samples and "
    "tolerance (`edge models`).",
)
@click.option(
    "--input",
    "inputs",
    multiple=True,
    metavar="NAME:DTYPE[DIMS][:LO..HI]",
    help="A forward input of a PyTorch source, e.g. 'pixel_values:float32[batch,3,224,224]' or "
    "'input_ids:int64[batch,seq]:0..30521'; named dims are dynamic. Repeat for each input.",
)
@click.option(
    "--weights",
    type=click.Path(dir_okay=False),
    default=None,
    help="State dict to load into a PyTorch source (.safetensors, or .pt/.pth/.bin read weights-only).",
)
@click.option(
    "--trust-remote-code",
    is_flag=True,
    help="Allow unpickling arbitrary Python objects (a pickled module, a checkpoint); this runs code from the file.",
)
@click.option(
    "--exporter",
    type=click.Choice(["auto", "dynamo", "torchscript"]),
    default="auto",
    show_default=True,
    help="torch.onnx exporter for PyTorch sources; auto tries dynamo, then TorchScript if dynamo fails.",
)
@click.option(
    "--labels",
    type=click.Path(dir_okay=False),
    default=None,
    help="Class names, one per line, for an .onnx SOURCE (e.g. --task detect of an Ultralytics export).",
)
@click.option(
    "--decoder-graph",
    type=click.Choice(["auto", "optimum"]),
    default="auto",
    show_default=True,
    help="Causal LMs: auto = edge-toolkit's in-place GroupQueryAttention decoder for Llama/Qwen2/Mistral "
    "(optimum's export for the rest); optimum = always optimum-onnx's graph.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
@common_options
def convert_command(
    source: str,
    out_dir: str,
    task: str | None,
    opset: int | None,
    atol: float | None,
    rtol: float | None,
    force: bool,
    inputs: tuple[str, ...],
    weights: str | None,
    trust_remote_code: bool,
    exporter: str,
    recipe: str | None,
    labels: str | None,
    decoder_graph: str,
    as_json: bool,
) -> None:
    """Export SOURCE to a validated ONNX model package.

    \b
    SOURCE is one of:
      a recipe name (`edge models`), a Hugging Face model directory, or a hub id (online);
      pkg.module:factory or path/to/file.py:factory, a callable returning a torch.nn.Module (needs --input);
      model.pt2, a program saved with torch.export.save (--input optional);
      model.pt, a whole pickled module (needs --trust-remote-code);
      model.onnx, an existing ONNX file packaged as it is (--task, --labels; --input sizes a symbolic image).
    """
    from converters import ConvertOptions, convert
    from converters.input_specs import parse_input_specs

    options = ConvertOptions(
        task=task,
        opset=opset,
        atol=atol,
        rtol=rtol,
        force=force,
        inputs=parse_input_specs(inputs),
        weights=Path(weights) if weights else None,
        trust_remote_code=trust_remote_code,
        exporter=exporter,
        recipe=recipe,
        labels=Path(labels) if labels else None,
        decoder_graph=decoder_graph,
    )
    with progress(not as_json) as step:
        package = convert(source, out_dir, options, step)
    variant = package.manifest.variant(FP32_VARIANT)
    validation = variant.validation
    if as_json:
        emit_json(package.manifest)
    else:
        if validation is not None:
            stdout.print(render_validation(validation, f"{package.manifest.name}: ONNX vs PyTorch"))
        exported_by = variant.settings.get("exporter")
        stdout.print(
            f"{'wrote' if validation and validation.passed else 'wrote (validation FAILED)'} {package.path} "
            f"({package.manifest.task}, opset {package.manifest.opset}, {variant.size_bytes / 1e6:.1f} MB"
            f"{f', {exported_by}' if exported_by else ''})"
        )
    if validation is not None and not validation.passed:
        click.echo(
            f"error: validation failed: {validation_failure(validation)}; "
            "the package is kept and marked failed in edge.json (--atol/--rtol set the tolerances)",
            err=True,
        )
        click.get_current_context().exit(EXIT_VALIDATION_FAILED)


@click.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print the recipes as JSON.")
@common_options
def models_command(as_json: bool) -> None:
    """List the model recipes `edge convert NAME` accepts."""
    from converters.recipes import list_recipes

    recipes = [(recipe, recipe.source.availability()) for recipe in list_recipes()]
    if as_json:
        emit_json(
            [{"availability": available, **dataclasses.asdict(recipe)} for recipe, available in recipes]
        )
        return
    for recipe, available in recipes:
        stdout.print(
            f"{recipe.name:<16} {recipe.task:<15} {available:<9} {recipe.summary}",
            markup=False,
            soft_wrap=True,
        )
