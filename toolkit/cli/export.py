"""`edge export triton`: a model package as a Triton Inference Server model repository; `edge export ort`: the
package in onnxruntime's ORT format, for mobile and minimal builds."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape

from toolkit.cli.common import CommaList, common_options, emit_json, stdout
from toolkit.ort_format import ORT_PLATFORMS, export_ort
from toolkit.triton import INSTANCE_KINDS, TritonExportOptions, export_triton_repository

__all__ = ["export_group"]


@click.group("export")
def export_group() -> None:
    """Export a model package for a serving system."""


@export_group.command("triton")
@click.argument("package_dir", metavar="DIR", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    "repo_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="The model repository directory to write.",
)
@click.option(
    "--max-batch-size",
    type=int,
    default=None,
    help="Triton max_batch_size (default: 32 when the batch axis is dynamic, else 0).",
)
@click.option(
    "--preferred-batch-sizes",
    type=CommaList(integers=True, example="4,8"),
    default=None,
    help="dynamic_batching preferred sizes, e.g. 4,8.",
)
@click.option(
    "--max-queue-delay-us",
    type=int,
    default=100,
    show_default=True,
    help="dynamic_batching max_queue_delay_microseconds.",
)
@click.option("--instances", type=int, default=1, show_default=True, help="Instances per model.")
@click.option(
    "--kind",
    type=click.Choice(tuple(INSTANCE_KINDS)),
    default="auto",
    show_default=True,
    help="instance_group kind (auto: GPU when Triton has one).",
)
@click.option("--tensorrt-fp16", is_flag=True, help="Add the TensorRT accelerator with precision_mode FP16.")
@click.option(
    "--variants",
    type=CommaList(example="fp32,int8"),
    default=None,
    help="Comma-separated variants to export (default: all in the package).",
)
@click.option("--model-version", type=int, default=1, show_default=True, help="The version directory.")
@click.option("--force", is_flag=True, help="Replace a non-empty repository directory.")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
@common_options
def triton_command(
    package_dir: Path,
    repo_dir: Path,
    max_batch_size: int | None,
    preferred_batch_sizes: tuple[int, ...] | None,
    max_queue_delay_us: int,
    instances: int,
    kind: str,
    tensorrt_fp16: bool,
    variants: tuple[str, ...] | None,
    model_version: int,
    force: bool,
    as_json: bool,
) -> None:
    """Write a Triton model repository for the package DIR: one model per variant (fp32 as <name>)."""
    options = TritonExportOptions(
        max_batch_size=max_batch_size,
        preferred_batch_sizes=preferred_batch_sizes or (),
        max_queue_delay_microseconds=max_queue_delay_us,
        instance_count=instances,
        instance_kind=kind,
        tensorrt_fp16=tensorrt_fp16,
        variants=variants,
        version=model_version,
    )
    result = export_triton_repository(package_dir, repo_dir, options, force=force)
    if as_json:
        emit_json(result)
        return
    count = len(result.models)
    stdout.print(
        f"wrote Triton model repository [bold]{escape(str(result.repository))}[/] from {escape(str(result.package))} "
        f"({count} model{'s' if count != 1 else ''})",
        soft_wrap=True,
    )
    for model in result.models:
        stdout.print(
            f"  [bold]{escape(model.name)}[/] ({escape(model.variant)}) version {model.version}, "
            f"max_batch_size {model.max_batch_size}: {escape(model.batching)}",
            soft_wrap=True,
        )
        width = max(len(t.name) for t in (*model.config.inputs, *model.config.outputs))
        for role, tensors in (("input ", model.config.inputs), ("output", model.config.outputs)):
            for t in tensors:
                stdout.print(
                    f"    {role} {t.name:<{width}}  {t.data_type} {list(t.dims)}",
                    soft_wrap=True,
                    markup=False,
                )
    stdout.print(f"start Triton with: {result.command}", soft_wrap=True, markup=False)


@export_group.command("ort")
@click.argument("package_dir", metavar="DIR", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    "out_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="The package directory to write.",
)
@click.option(
    "--variants",
    type=CommaList(example="fp32,int8"),
    default=None,
    help="Comma-separated variants to convert (default: all in the package).",
)
@click.option(
    "--platform",
    type=click.Choice(ORT_PLATFORMS),
    default="arm",
    show_default=True,
    help="The CPU the optimized graphs are for (arm keeps int8 QDQ fusions, amd64 allows x86 layouts).",
)
@click.option("--force", is_flag=True, help="Replace a non-empty output directory.")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
@common_options
def ort_command(
    package_dir: Path,
    out_dir: Path,
    variants: tuple[str, ...] | None,
    platform: str,
    force: bool,
    as_json: bool,
) -> None:
    """Write DIR's variants in ORT format as a package (edge run/serve/bench load it) with the
    required_operators.config of a minimal onnxruntime build; each .ort file is loaded back and checked."""
    result = export_ort(package_dir, out_dir, variants or (), platform, force=force)
    if as_json:
        emit_json(result)
        return
    stdout.print(f"wrote ORT-format package [bold]{escape(str(result.output))}[/] ({result.platform})")
    for v in result.variants:
        stdout.print(
            f"  {escape(v.variant)}: {escape(v.file)} {v.size_bytes / 1e6:.2f} MB (ONNX {v.onnx_size_bytes / 1e6:.2f} MB), "
            f"loaded back: max abs diff {v.max_abs_diff:.3g} against the ONNX file",
            soft_wrap=True,
        )
    stdout.print(f"operators for a minimal build ({escape(str(result.config))}):", soft_wrap=True)
    for line in result.operators:
        stdout.print(f"  {line}", markup=False, soft_wrap=True)
