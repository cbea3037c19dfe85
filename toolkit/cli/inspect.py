"""`edge info`: inputs, outputs, opset, size, operators and variants of a package or an ONNX file."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from toolkit.cli.common import common_options, emit_json, stdout
from toolkit.inspect import inspect_model
from toolkit.manifest import ModelPackage
from toolkit.ort_format import EpUsability, mobile_usability

__all__ = ["info_command"]


@click.command("info")
@click.argument("target", type=click.Path())
@click.option("--variant", default="fp32", show_default=True, help="Which variant of a package to inspect.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@common_options
def info_command(target: str, variant: str, as_json: bool) -> None:
    """Describe TARGET, a model package directory or an .onnx file."""
    info = inspect_model(target, variant)
    mobile = _mobile(Path(target), info.path)
    if as_json:
        emit_json({**vars(info), "mobile": mobile})
        return
    stdout.print(
        f"[bold]{escape(str(info.path))}[/]  {info.size_bytes / 1e6:.2f} MB, opset {info.opset}, {info.node_count} nodes, producer {info.producer}"
    )
    tensors = Table(title="tensors", title_justify="left")
    for column in ("", "name", "dtype", "shape"):
        tensors.add_column(column)
    for kind, specs in (("input", info.inputs), ("output", info.outputs)):
        for spec in specs:
            # escaped: rich would read "[batch, sequence]" as a markup tag and print nothing
            tensors.add_row(kind, spec.name, spec.dtype, escape("[" + ", ".join(map(str, spec.shape)) + "]"))
    stdout.print(tensors)
    stdout.print("operators: " + ", ".join(f"{op} {count}" for op, count in info.operators.items()))
    manifest = info.manifest
    if manifest is None:
        return
    stdout.print(
        f"package [bold]{manifest.name}[/]: task {manifest.task}, source {manifest.source.kind} {manifest.source.ref} (sha256 {manifest.source.sha256[:12]})"
    )
    variants = Table(title="variants", title_justify="left")
    for column in ("variant", "file", "precision", "method", "size MB", "validation", "measured on"):
        variants.add_column(column)
    for v in manifest.variants.values():
        for i, val in enumerate((v.validation, *v.verifications)):
            summary = (
                f"{'pass' if val.passed else 'FAIL'} {val.metric} {val.value:.3g} (limit {val.threshold:.3g}, vs {val.reference})"
                if val
                else "not validated"
            )
            host = f"{val.host.int8_path}, {val.host.provider}" if val and val.host else "-"
            if i == 0:
                variants.add_row(
                    v.name, v.file, v.precision, v.method, f"{v.size_bytes / 1e6:.2f}", summary, host
                )
            else:
                variants.add_row("", "", "", "", "", f"verified: {summary}", host)
    stdout.print(variants)
    hosts = {
        val.host.describe()
        for v in manifest.variants.values()
        for val in (v.validation, *v.verifications)
        if val and val.host
    }
    for host in sorted(hosts):
        stdout.print(f"measured on: {escape(host)}")
    _render_mobile(mobile)


def _mobile(target: Path, inspected: Path) -> dict[str, tuple[EpUsability, ...]]:
    """onnxruntime's mobile usability of every variant of a package (or of the one file inspected)."""
    if not target.is_dir():
        return {inspected.name: mobile_usability(inspected)}
    package = ModelPackage.open(target)
    return {name: mobile_usability(package.model_path(name)) for name in package.manifest.variants}


def _render_mobile(mobile: dict[str, tuple[EpUsability, ...]]) -> None:
    eps = next((r for r in mobile.values() if r), ())
    if not eps:
        return
    table = Table(title="onnxruntime mobile packages: NNAPI / CoreML usability", title_justify="left")
    table.add_column("variant")
    for ep in eps:
        table.add_column(ep.execution_provider)
    for name, results in mobile.items():
        table.add_row(
            name,
            *(
                f"{r.verdict} ({r.supported_nodes}/{r.nodes} nodes, {r.partitions} partitions"
                f"{', fixed shapes: ' + r.fixed_shapes_verdict if r.fixed_shapes_verdict != r.verdict else ''})"
                f"\nlacks: {escape(', '.join(op.split(':')[-1] for op in r.unsupported_ops) or 'nothing')}"
                for r in results
            ),
        )
    stdout.print(table)
    stdout.print(
        "the CPU provider of the full mobile packages runs every operator; `edge export ort` for a minimal build"
    )
