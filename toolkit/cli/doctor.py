"""`edge doctor`: which onnxruntime, which providers really work, which GPU libraries are missing, and the fix."""

from __future__ import annotations

import click
from rich.markup import escape

from toolkit.cli.common import common_options, emit_json, stdout
from toolkit.doctor import DoctorReport, run_doctor

__all__ = ["doctor_command"]

_MARK = {
    "ok": "[green]ok[/]   ",
    "info": "[cyan]info[/] ",
    "warn": "[yellow]warn[/] ",
    "error": "[red]error[/]",
}


@click.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON.")
@common_options
def doctor_command(as_json: bool) -> None:
    """Check the onnxruntime install, execution providers, CUDA/cuDNN/TensorRT libraries, GPU and CPU."""
    report = run_doctor()
    if as_json:
        emit_json({**_as_dict(report), "problems": report.problems})
        return
    _print(report)


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
