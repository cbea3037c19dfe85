"""The `edge` command line: a thin shell over `toolkit` and `converters`.

Only this package prints or exits. User mistakes (`EdgeError`) print ``error: <message>`` and exit 2;
a failed validation exits 1; tracebacks appear only for bugs, or for everything with ``--debug``.
"""

from __future__ import annotations

import click

from toolkit.cli.bench import bench_command
from toolkit.cli.common import EdgeGroup, common_options, handle_sigterm
from toolkit.cli.convert import convert_command, models_command
from toolkit.cli.doctor import doctor_command
from toolkit.cli.export import export_group
from toolkit.cli.generate import chat_command
from toolkit.cli.inspect import info_command
from toolkit.cli.quantize import quantize_command
from toolkit.cli.run import run_command
from toolkit.cli.serve import serve_command
from toolkit.cli.target import target_group
from toolkit.cli.verify import verify_command

__all__ = ["edge", "main"]


@click.group(cls=EdgeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edge-toolkit", prog_name="edge")
@common_options
def edge() -> None:
    """Convert models to validated ONNX packages, quantize, benchmark and run them."""


for command in (
    convert_command,
    models_command,
    info_command,
    run_command,
    bench_command,
    quantize_command,
    verify_command,
    doctor_command,
    export_group,
    target_group,
    serve_command,
    chat_command,
):
    edge.add_command(command)


def main() -> None:
    """Console-script entry point."""
    handle_sigterm()
    edge(prog_name="edge")
