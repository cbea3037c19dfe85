"""`edge doctor`: which onnxruntime, which providers really work, which GPU libraries are missing, and the fix."""

from __future__ import annotations

import click
from rich.markup import escape

from toolkit.cli.common import EXIT_VALIDATION_FAILED, common_options, emit_json, stdout
from toolkit.doctor import DoctorReport, run_doctor
from toolkit.providers import provider_names, resolve_providers

__all__ = ["doctor_command"]

_MARK = {
    "ok": "[green]ok[/]   ",
    "info": "[cyan]info[/] ",
    "warn": "[yellow]warn[/] ",
    "error": "[red]error[/]",
}


@click.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON.")
@click.option(
    "--require",
    default=None,
    metavar="PROVIDERS",
    help="Exit 1 unless these providers can create a session here, e.g. cuda,tensorrt (for CI and images).",
)
@common_options
def doctor_command(as_json: bool, require: str | None) -> None:
    """Check the onnxruntime install, execution providers, CUDA/cuDNN/TensorRT libraries, GPU and CPU.

    Exits 0 after reporting (a CPU-only machine with onnxruntime-gpu is a normal set-up); with
    --require, exits 1 when a required provider is not usable.
    """
    required = tuple(s.short for s in resolve_providers(provider_names(require))) if require else ()
    report = run_doctor()
    if as_json:
        emit_json({**_as_dict(report), "problems": report.problems})
    else:
        _print(report)
    status = {p.name: p for p in report.providers}
    missing = [name for name in required if name not in status or not status[name].usable]
    for name in missing:
        reason = status[name].reason if name in status else "not compiled into this onnxruntime"
        click.echo(f"error: required provider {name} is not usable here: {reason}", err=True)
    if missing:
        click.get_current_context().exit(EXIT_VALIDATION_FAILED)


def _as_dict(report: DoctorReport) -> dict[str, object]:
    return {name: getattr(report, name) for name in report.__dataclass_fields__}


def _print(report: DoctorReport) -> None:
    build = f" (built for CUDA {report.build_cuda})" if report.build_cuda else ""
    say(f"onnxruntime {report.onnxruntime}{build}")
    compiled = ", ".join(p.name for p in report.providers if p.compiled)
    usable = ", ".join(p.name for p in report.providers if p.usable)
    say(f"providers compiled in: {compiled}; usable here: {usable or 'none'}")
    for finding in report.findings:
        say(f"{_MARK[finding.level]} {finding.topic:<9} {escape(finding.message)}", markup=True)
        if finding.fix:
            say(f"      {'':<9} fix: {finding.fix}")
    problems = len(report.problems)
    say(f"{problems} problem{'s' if problems != 1 else ''} found" if problems else "no problems found")


def say(text: str, markup: bool = False) -> None:
    """One unwrapped line on stdout (each finding and each fix stays on its own line)."""
    stdout.print(text, markup=markup, highlight=False, soft_wrap=True)
