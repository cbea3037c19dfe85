"""`convert`: source -> validated model package, written atomically."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from converters.hf import (
    copy_assets,
    detect_task,
    export_hf_model,
    labels_of,
    load_hf_model,
    preprocessing_of,
    run_reference,
)
from converters.sources import ResolvedSource, directory_sha256, resolve_source
from converters.validate import InputLimits, compare_with_reference, validation_cases
from toolkit.atomic import replace_directory, staging_directory
from toolkit.errors import BadInputError
from toolkit.inspect import inspect_model
from toolkit.manifest import (
    FP32_VARIANT,
    MANIFEST_NAME,
    Manifest,
    ModelPackage,
    SourceInfo,
    TextPreprocessing,
    Variant,
    tool_versions,
    variant_file_name,
)
from toolkit.pipelines import TextTokenizer
from toolkit.runner import Runner

__all__ = ["ConvertOptions", "convert"]

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ConvertOptions:
    """How to export and validate. `atol=None` takes the recipe's tolerance, else 1e-4."""

    task: str | None = None
    opset: int | None = None
    atol: float | None = None
    force: bool = False


def _check_output_dir(out_dir: Path, force: bool) -> None:
    if out_dir.is_file():
        raise BadInputError(f"output '{out_dir}' is a file; pass a directory path with -o")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not (out_dir / MANIFEST_NAME).is_file():
            raise BadInputError(
                f"output directory '{out_dir}' is not empty and is not a model package; choose another -o"
            )
        if not force:
            raise BadInputError(
                f"output directory '{out_dir}' already holds a model package; pass --force to replace it"
            )


def convert(
    source: str,
    out_dir: str | Path,
    options: ConvertOptions | None = None,
    progress: Progress | None = None,
) -> ModelPackage:
    """Resolve `source`, export it to ONNX, validate it against the original and write the package to `out_dir`.

    A failed validation still writes the package, with the fp32 variant's validation marked failed.
    """
    options = options or ConvertOptions()
    say = progress or (lambda message: log.info(message))
    out = Path(out_dir)
    _check_output_dir(out, options.force)
    if options.atol is not None and options.atol < 0:
        raise BadInputError(f"--atol must be zero or positive, got {options.atol}")

    say(f"resolving {source}")
    resolved = resolve_source(source)
    task = detect_task(
        resolved.model_dir, options.task or (resolved.recipe.task if resolved.recipe else None)
    )
    atol = options.atol if options.atol is not None else (resolved.recipe.atol if resolved.recipe else 1e-4)

    with staging_directory(out) as staging:
        export_dir = staging / "export"
        export_dir.mkdir()
        say(f"loading {resolved.name} ({task.name}) with PyTorch")
        model = load_hf_model(resolved.model_dir, task)
        say("exporting to ONNX with optimum-onnx")
        started = time.perf_counter()
        exported = export_hf_model(model, task, export_dir, options.opset)
        export_seconds = time.perf_counter() - started

        package_dir = staging / "package"
        package_dir.mkdir()
        onnx_file = package_dir / variant_file_name(FP32_VARIANT)
        exported.replace(onnx_file)
        copy_assets(resolved.model_dir, export_dir, package_dir)
        preprocessing = preprocessing_of(resolved.model_dir, export_dir, task)

        say("validating ONNX against PyTorch")
        info = inspect_model(onnx_file)
        runner = Runner(onnx_file, "cpu")
        tokenizer = (
            TextTokenizer(package_dir / preprocessing.tokenizer, preprocessing.max_length)
            if isinstance(preprocessing, TextPreprocessing)
            else None
        )
        limits = _input_limits(model, preprocessing)
        output_names = tuple(spec.name for spec in info.outputs)
        validation = compare_with_reference(
            runner,
            lambda feeds: run_reference(model, feeds, output_names),
            validation_cases(info.inputs, limits, tokenizer),
            atol,
        )
        manifest = Manifest(
            name=resolved.name,
            task=task.name,
            source=_source_info(resolved),
            inputs=info.inputs,
            outputs=info.outputs,
            opset=info.opset,
            variants={
                FP32_VARIANT: Variant(
                    name=FP32_VARIANT,
                    file=onnx_file.name,
                    precision="fp32",
                    method="export",
                    size_bytes=onnx_file.stat().st_size,
                    settings={
                        "exporter": "optimum-onnx",
                        "optimum_task": task.optimum_task,
                        "export_seconds": round(export_seconds, 2),
                    },
                    validation=validation,
                    tool_versions=tool_versions(),
                )
            },
            preprocessing=preprocessing,
            labels=labels_of(model, task),
            exporter={"name": "optimum-onnx", "task": task.optimum_task},
        )
        del runner
        ModelPackage(package_dir, manifest).save(manifest)
        replace_directory(package_dir, out)
    say(f"wrote {out}")
    return ModelPackage.open(out)


def _input_limits(model: object, preprocessing: object) -> InputLimits:
    config = getattr(model, "config", None)
    vocab = int(getattr(config, "vocab_size", 1000) or 1000)
    max_length = (
        preprocessing.max_length
        if isinstance(preprocessing, TextPreprocessing)
        else int(getattr(config, "max_position_embeddings", 128) or 128)
    )
    image = int(getattr(config, "image_size", 224) or 224)
    channels = int(getattr(config, "num_channels", 3) or 3)
    return InputLimits(vocab_size=vocab, max_length=max_length, image_size=(image, image), channels=channels)


def _source_info(resolved: ResolvedSource) -> SourceInfo:
    return SourceInfo(
        kind=resolved.kind,
        ref=resolved.ref,
        sha256=directory_sha256(resolved.model_dir),
        recipe=resolved.recipe.name if resolved.recipe else None,
    )
