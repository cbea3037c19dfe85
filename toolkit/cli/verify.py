"""`edge verify`: re-measure a package's variants on this machine and compare with what was recorded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from toolkit.cli.common import EXIT_VALIDATION_FAILED, common_options, emit_json, progress, stdout
from toolkit.cli.provider_options import provider_options
from toolkit.cli.target import CACHE_DIR_OPTION
from toolkit.manifest import Validation
from toolkit.providers import ProviderConfig

__all__ = ["verify_command"]


def _measured(validation: Validation | None) -> str:
    if validation is None:
        return "not recorded"
    where = validation.host.int8_path if validation.host else "host not recorded"
    return f"{'pass' if validation.passed else 'FAIL'} {validation.metric} {validation.value:.4f} ({where})"


def _ms(value: float | None, unit: str = "") -> str:
    return "-" if value is None else f"{value:.{2 if unit else 1}f}{unit}"


def _render(result: Any) -> None:
    stdout.print(f"host now: {escape(result.host.describe())}")
    if result.fp32_max_abs_diff is not None:
        stdout.print(
            f"fp32 there against fp32 here: max abs diff {result.fp32_max_abs_diff:.3g} over every output"
        )
    table = Table(title=f"verify {escape(str(result.package.path))}", title_justify="left")
    for column in ("variant", "budget", "recorded", "now", "worst now", "fp32 ms", "variant ms", "speed-up"):
        table.add_column(column, justify="left" if column in ("variant", "recorded", "now") else "right")
    for check in result.checks:
        table.add_row(
            check.variant,
            f"{check.budget:g}",
            _measured(check.recorded),
            _measured(check.now),
            f"{check.accuracy.worst:.4f}",
            _ms(check.fp32_ms),
            _ms(check.variant_ms),
            _ms(check.speedup, "x"),
        )
    stdout.print(table)
    for check in result.checks:
        recorded = check.recorded
        if recorded is not None and recorded.host is not None:
            stdout.print(f"{check.variant}: recorded on {escape(recorded.host.describe())}")
        if check.held_out_note is not None:
            stdout.print(f"{check.variant}: accuracy {escape(check.held_out_note)}")
    samples = result.checks[0].now.held_out or f"{result.checks[0].accuracy.samples} held-out inputs"
    if result.emulation is not None:
        stdout.print(
            f"no timings: under emulation (qemu -cpu {result.emulation.cpu}) they mean nothing; accuracy against "
            f"fp32 computed natively here, on {escape(samples)}"
        )
    else:
        stdout.print(
            f"latency: median of {result.latency_runs} interleaved runs on "
            f"{', '.join(result.checks[0].providers[:1])}; accuracy against fp32 on CPU, on {escape(samples)}"
        )
    if result.updated:
        stdout.print(f"recorded this host's results in {escape(str(result.package.path / 'edge.json'))}")


@click.command("verify")
@click.argument("package_dir", metavar="DIR", type=click.Path(path_type=Path))
@click.option(
    "--variant",
    "variants",
    multiple=True,
    help="Variant to verify (repeatable, or comma-separated; default: every variant but fp32).",
)
@provider_options
@click.option("--update", is_flag=True, help="Record this host's results in edge.json beside the old ones.")
@click.option(
    "--threads", type=click.IntRange(min=1), default=2, show_default=True, help="onnxruntime threads."
)
@click.option(
    "--runs", type=click.IntRange(min=1), default=10, show_default=True, help="Timed runs per model."
)
@click.option(
    "--target",
    default=None,
    help="Run the variants inside an emulated device instead (linux-aarch64; `edge target prepare` it once).",
)
@click.option(
    "--cpu",
    default="cortex-a53",
    show_default=True,
    help="The emulated CPU with --target: cortex-a53 (NEON), cortex-a76 or neoverse-n1 (dot-product), "
    "max-no-sme (i8mm), max (SME).",
)
@CACHE_DIR_OPTION
@click.option(
    "--held-out",
    type=click.Path(path_type=Path),
    default=None,
    help="The .txt file a variant was quantized with `--held-out`: re-measure on that text instead of the "
    "built-in samples, to compare like with like.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@common_options
def verify_command(
    package_dir: Path,
    variants: tuple[str, ...],
    provider_config: ProviderConfig,
    update: bool,
    threads: int,
    runs: int,
    target: str | None,
    cpu: str,
    cache_dir: Path | None,
    held_out: Path | None,
    as_json: bool,
) -> None:
    """Re-measure DIR's variants on this machine: held-out accuracy against fp32 and a quick latency.

    int8 accuracy depends on the CPU (AVX2 without VNNI saturates where VNNI and AMX do not), so run this on
    the device itself, or before it exists with --target: the variants then run on an emulated CPU (qemu) and
    only their accuracy is measured. Exits 1 when a variant now misses its budget.
    """
    from converters.target import Emulation
    from converters.verify import verify

    names = tuple(n.strip() for item in variants for n in item.split(",") if n.strip())
    emulation = Emulation(target, cpu, cache_dir) if target else None
    with progress(not as_json) as say:
        say(f"verifying on an emulated {cpu} ({target})" if target else "verifying on this host")
        result = verify(
            package_dir,
            names,
            provider_config,
            update=update,
            threads=threads,
            latency_runs=runs,
            emulation=emulation,
            held_out=held_out,
        )
    if as_json:
        emit_json(result)
    else:
        _render(result)
    if result.failed:
        failed = ", ".join(result.failed)
        click.echo(
            f"error: {'variant' if len(result.failed) == 1 else 'variants'} {failed} "
            f"{'misses its' if len(result.failed) == 1 else 'miss their'} budget on this host "
            f"({result.host.int8_path}); re-quantize here with `edge quantize --method auto`, "
            "or with `--portable` for a variant whose accuracy holds on every CPU",
            err=True,
        )
        raise SystemExit(EXIT_VALIDATION_FAILED)
