"""`edge target prepare`: build an emulated device (qemu-user, an arm64 Python, the runtime wheels) once."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape

from toolkit.cli.common import common_options, emit_json, progress, stdout

__all__ = ["CACHE_DIR_OPTION", "target_group"]

CACHE_DIR_OPTION = click.option(
    "--cache-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Where targets are built (default: $EDGE_TOOLKIT_CACHE, else ~/.cache/edge-toolkit).",
)


@click.group("target")
def target_group() -> None:
    """Emulated device targets, for `edge verify --target`."""


@target_group.command("prepare")
@click.argument("name", default="linux-aarch64")
@CACHE_DIR_OPTION
@click.option("--force", is_flag=True, help="Rebuild even when the target is already prepared.")
@click.option("--json", "as_json", is_flag=True, help="Print what was built as JSON.")
@common_options
def prepare_command(name: str, cache_dir: Path | None, force: bool, as_json: bool) -> None:
    """Build target NAME (linux-aarch64) once: Debian's qemu-user-static and arm64 Python, PyPI's aarch64 wheels
    of the runtime (onnxruntime, numpy, tokenizers, ...) at this host's versions, and this toolkit."""
    from converters.target import prepare

    with progress(not as_json) as say:
        target = prepare(name, cache_dir, force=force, say=say)
    if as_json:
        emit_json({"root": target.root, **vars(target.record)})
        return
    record = target.record
    mib = 1024 * 1024
    stdout.print(f"target {record.name} ready in {escape(str(target.root))}")
    stdout.print(
        f"qemu {escape(record.qemu)}, Python {record.python}, wheels: {escape(', '.join(record.wheels))}\n"
        f"downloaded {record.download_bytes / mib:.0f} MiB; on disk: Python userland "
        f"{record.sysroot_bytes / mib:.0f} MiB, wheels and toolkit {record.site_bytes / mib:.0f} MiB, "
        f"qemu {record.qemu_bytes / mib:.0f} MiB; built in {record.seconds:.0f} s"
    )
