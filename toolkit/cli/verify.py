"""`edge verify`: re-measure a package's variants on this machine and compare with what was recorded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from toolkit.cli.common import EXIT_VALIDATION_FAILED, common_options, emit_json, progress, stdout
from toolkit.cli.provider_options import provider_options
from toolkit.manifest import Validation
from toolkit.providers import ProviderConfig

__all__ = ["verify_command"]


def _measured(validation: Validation | None) -> str:
    if validation is None:
        return "not recorded"
    where = validation.host.int8_path if validation.host else "host not recorded"
    return f"{'pass' if validation.passed else 'FAIL'} {validation.metric} {validation.value:.4f} ({where})"


def _render(result: Any) -> None:
    stdout.print(f"host now: {escape(result.host.describe())}")
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
            f"{check.fp32_ms:.1f}",
            f"{check.variant_ms:.1f}",
            f"{check.speedup:.2f}x",
        )
    stdout.print(table)
    for check in result.checks:
        recorded = check.recorded
        if recorded is not None and recorded.host is not None:
            stdout.print(f"{check.variant}: recorded on {escape(recorded.host.describe())}")
    stdout.print(
        f"latency: median of {result.latency_runs} interleaved runs on "
        f"{', '.join(result.checks[0].providers[:1])}; accuracy against fp32 on CPU, "
        f"{result.checks[0].accuracy.samples} held-out inputs"
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
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@common_options
def verify_command(
    package_dir: Path,
    variants: tuple[str, ...],
    provider_config: ProviderConfig,
    update: bool,
    threads: int,
    runs: int,
    as_json: bool,
) -> None:
    """Re-measure DIR's variants on this machine: held-out accuracy against fp32 and a quick latency.

    int8 accuracy depends on the CPU (AVX2 without VNNI saturates where VNNI and AMX do not), so run this on
    the device itself. Exits 1 when a variant now misses its budget.
    """
    from converters.verify import verify

    names = tuple(n.strip() for item in variants for n in item.split(",") if n.strip())
    with progress(not as_json) as say:
        say("verifying on this host")
        result = verify(
            package_dir, names, provider_config, update=update, threads=threads, latency_runs=runs
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
