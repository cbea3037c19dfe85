"""`edge quantize`: write a quantized variant beside model.onnx, with its accuracy, size and latency against fp32."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.markup import escape
from rich.table import Table

from toolkit.cli.common import EXIT_VALIDATION_FAILED, CommaList, common_options, emit_json, progress, stdout
from toolkit.errors import BadInputError
from toolkit.manifest import Host

if TYPE_CHECKING:
    from converters.quantization import QuantizeResult

__all__ = ["quantize_command", "render_candidates"]

METHOD_NAMES = ("dynamic-int8", "static-int8", "fp16", "int4", "auto")


def render_candidates(candidates: Any, budget: float, host: Host | None, portable_only: bool) -> Table:
    """The candidates `auto` tried: accuracy, latency, speed-up, size, portability, verdict, and the host."""
    where = f", measured on {escape(host.describe())}" if host else ""
    table = Table(title=f"auto candidates (budget {budget:g}{where})", title_justify="left")
    for column in (
        "candidate",
        "accuracy",
        "worst",
        "latency ms",
        "speed-up",
        "size MB",
        "portable",
        "result",
    ):
        table.add_column(column, justify="left" if column in ("candidate", "result") else "right")
    for c in candidates:
        acc = c.accuracy
        if c.meets_budget:
            verdict = "[green]meets[/]"
        elif c.over_size_cap:
            verdict = "[yellow]too big[/]"
        elif portable_only and not c.portable and acc is not None:
            verdict = "[yellow]not portable[/]"
        else:
            verdict = "[yellow]below[/]"
        table.add_row(
            c.name,
            f"{acc.score:.4f}" if acc else "-",
            f"{acc.worst:.4f}" if acc else "-",
            f"{c.latency_ms:.1f}" if c.latency_ms else "-",
            f"{c.speedup:.2f}x" if c.speedup else "-",
            f"{c.size_bytes / 1e6:.1f}" if c.size_bytes else "-",
            "yes" if c.portable else "no",
            verdict if not c.error else f"[red]error[/]: {c.error[:60]}",
        )
    return table


@click.command("quantize")
@click.argument("package_dir", metavar="DIR", type=click.Path(path_type=Path))
@click.option(
    "-m",
    "--method",
    type=click.Choice(METHOD_NAMES),
    default="dynamic-int8",
    show_default=True,
    help="How to quantize.",
)
@click.option("--name", default=None, help="Variant name (default: int8, int8-static, fp16, int4, auto).")
@click.option(
    "--per-tensor",
    is_flag=True,
    help="One weight scale per tensor instead of per channel (faster, less accurate).",
)
@click.option(
    "--exclude",
    multiple=True,
    metavar="PATTERN",
    help="Keep nodes in fp32: a node name glob or an op type (repeatable).",
)
@click.option(
    "--op-types",
    type=CommaList(example="MatMul,Gemm"),
    default=None,
    help="Comma-separated op types to quantize (default: all the method supports).",
)
@click.option(
    "--calibration",
    "calibration_method",
    type=click.Choice(("minmax", "entropy", "percentile")),
    default="minmax",
    show_default=True,
    help="static-int8 range estimator.",
)
@click.option(
    "--calibration-data",
    type=click.Path(path_type=Path),
    default=None,
    help="A .txt file (one sentence a line), a folder of images, WAV clips or .npz files, or an .npz file.",
)
@click.option("--samples", type=int, default=32, show_default=True, help="Calibration samples to use.")
@click.option(
    "--held-out",
    type=click.Path(path_type=Path),
    default=None,
    help="A .txt file of your own text to measure accuracy on (the int4 search, the budget) instead of the "
    "built-in samples: one sample a line; a generator's text is cut into 128-token windows.",
)
@click.option(
    "--symmetric-activations",
    is_flag=True,
    help="static-int8: int8 symmetric activations (what TensorRT requires).",
)
@click.option(
    "--block-size",
    default="auto",
    show_default=True,
    help="int4 block size (a power of two, at least 16), or auto: try 32, 64 and 128 and the accuracy levels "
    "(int8 or fp32 compute) and keep the fastest within --budget.",
)
@click.option(
    "--fp16-block", multiple=True, metavar="OP", help="fp16: extra op types to keep in fp32 (repeatable)."
)
@click.option(
    "--budget",
    type=float,
    default=0.99,
    show_default=True,
    help="Accuracy budget in (0, 1]: mean cosine or top-1 agreement vs fp32.",
)
@click.option(
    "--max-size",
    type=float,
    default=None,
    metavar="FRACTION",
    help="auto: keep no candidate larger than this fraction of the fp32 file (e.g. 0.3).",
)
@click.option(
    "--portable",
    is_flag=True,
    help="auto: keep only candidates whose accuracy holds on every CPU (no u8s8 kernel that saturates without VNNI).",
)
@click.option(
    "--reduce-range",
    is_flag=True,
    help="dynamic-int8: 7-bit weights, accurate on AVX2 CPUs without VNNI too (slightly coarser).",
)
@click.option("--threads", type=int, default=2, show_default=True, help="Threads for the latency figure.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@common_options
def quantize_command(
    package_dir: Path,
    method: str,
    name: str | None,
    per_tensor: bool,
    exclude: tuple[str, ...],
    op_types: tuple[str, ...] | None,
    calibration_method: str,
    calibration_data: Path | None,
    samples: int,
    held_out: Path | None,
    symmetric_activations: bool,
    block_size: str,
    fp16_block: tuple[str, ...],
    budget: float,
    max_size: float | None,
    portable: bool,
    reduce_range: bool,
    threads: int,
    as_json: bool,
) -> None:
    """Quantize the model package DIR and validate the variant against fp32.

    Writes model.<variant>.onnx and records precision, settings, size, accuracy on held-out inputs and a
    latency figure in edge.json. `--method auto` tries several int8 candidates and keeps the fastest within
    --budget (and --max-size). Exit code 1 when the variant misses the budget (or auto finds none), 2 on a usage error.
    """
    from converters.quantization import CalibrationOptions, QuantizeOptions, quantize

    options = QuantizeOptions(
        name=name,
        per_channel=not per_tensor,
        exclude=exclude,
        op_types=op_types,
        calibration=CalibrationOptions(method=calibration_method, data=calibration_data, samples=samples),
        symmetric_activations=symmetric_activations,
        block_size=_block_size(block_size),
        fp16_op_block_list=fp16_block,
        budget=budget,
        max_size=max_size,
        portable_only=portable,
        reduce_range=reduce_range,
        threads=threads,
        held_out=held_out,
    )
    with progress(not as_json) as step:
        result = quantize(package_dir, method, options, step)
    if as_json:
        emit_json(result)
    else:
        _print_result(result, method, portable)
    _exit_when_below_budget(result, max_size, portable)


def _print_result(result: QuantizeResult, method: str, portable: bool) -> None:
    """The candidates auto tried, the notes, and the variant written: its accuracy, size and latency vs fp32."""
    if result.candidates:
        stdout.print(render_candidates(result.candidates, result.budget, result.host, portable))
    for note in result.notes:
        stdout.print(f"note: {note}")
    variant = result.variant
    if variant is not None and result.accuracy is not None and result.latency is not None:
        picked = f" (picked: {variant.settings.get('picked')})" if method == "auto" else ""
        fp32_ms = result.latency.median_ms["fp32"]
        ms = result.latency.median_ms[variant.name]
        stdout.print(
            f"{'wrote' if variant.validation and variant.validation.passed else 'wrote (below budget)'} "
            f"{result.package.path / variant.file}{picked}\n"
            f"  accuracy vs fp32: {result.accuracy.summary()}, budget {result.budget:g}"
            f"{f' (on {variant.validation.held_out})' if variant.validation and variant.validation.held_out else ''}\n"
            f"  size: {variant.size_bytes / 1e6:.1f} MB ({result.size_ratio:.1%} of fp32)\n"
            f"  latency: {ms:.1f} ms vs fp32 {fp32_ms:.1f} ms ({fp32_ms / ms:.2f}x, CPU, {result.latency.threads} threads, "
            f"{result.latency.shape})"
        )


def _exit_when_below_budget(result: QuantizeResult, max_size: float | None, portable: bool) -> None:
    """Exit 1 with an error line when no candidate met the budget (nothing written) or the variant written
    misses it (kept, marked failed)."""
    if result.variant is None:
        best = max(
            (c for c in result.candidates if c.accuracy),
            key=lambda c: c.accuracy.score if c.accuracy else 0.0,
            default=None,
        )
        detail = f" (best: {best.name}, {best.accuracy.summary()})" if best and best.accuracy else ""
        cap = f" within --max-size {max_size:g}" if max_size is not None else ""
        cap += " among --portable candidates" if portable else ""
        where = f" on this host ({result.host.int8_path})" if result.host else ""
        click.echo(
            f"error: no candidate meets the budget {result.budget:g}{cap}{where}{detail}; nothing was written. "
            f"Lower --budget{', raise --max-size' if max_size is not None else ''}, or keep fp32 / try --method fp16 on a GPU",
            err=True,
        )
        click.get_current_context().exit(EXIT_VALIDATION_FAILED)
    validation = result.variant.validation
    if validation is not None and not validation.passed:
        click.echo(
            f"error: the {result.variant.name} variant misses the budget {result.budget:g} "
            f"({result.accuracy.summary() if result.accuracy else validation.value}); it is kept and marked failed in edge.json",
            err=True,
        )
        click.get_current_context().exit(EXIT_VALIDATION_FAILED)


def _block_size(text: str) -> int | None:
    """--block-size: None for auto, else the integer."""
    if text == "auto":
        return None
    try:
        return int(text)
    except ValueError:
        raise BadInputError(f"--block-size must be auto or an integer such as 32; got {text!r}") from None
