"""Mobile and minimal onnxruntime builds: a package in ORT format, and whether its graphs suit the mobile EPs.

`export_ort` converts every variant with onnxruntime's own converter (``onnxruntime.tools.
convert_onnx_models_to_ort``, optimization style *Fixed*, for ARM by default) into a new package whose
``edge.json`` names the ``.ort`` files, so `Runner` and `toolkit.load` open it like any package, and writes the
``required_operators.config`` a minimal onnxruntime build takes (``--include_ops_by_config``). Each ``.ort`` file
is loaded back through `Runner` and run on one sample input before the package is moved into place, and its
outputs are compared with the ONNX variant's.

`mobile_usability` asks onnxruntime's usability checker (``onnxruntime.tools.mobile_helpers.usability_checker``)
how well a graph partitions onto the accelerators of onnxruntime's mobile packages, NNAPI (Android) and CoreML
(iOS, both model formats), and which operators they lack; the CPU execution provider of the full mobile
packages runs every operator either way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from toolkit.atomic import check_output_directory, replace_directory, staging_directory
from toolkit.errors import BadInputError, BadModelError, first_line
from toolkit.manifest import ModelPackage

__all__ = [
    "ORT_PLATFORMS",
    "EpUsability",
    "OrtExport",
    "OrtVariant",
    "export_ort",
    "mobile_usability",
]

log = logging.getLogger(__name__)

ORT_PLATFORMS = ("arm", "amd64")
"""Platforms the converter optimizes for: ``arm`` keeps int8 QDQ fusions and leaves out x86's NCHWc layout."""

CONFIG_NAME = "required_operators.config"


@dataclass(frozen=True)
class OrtVariant:
    """One converted variant: its ``.ort`` file, its size, and how its outputs compare with the ONNX file's."""

    variant: str
    file: str
    size_bytes: int
    onnx_size_bytes: int
    max_abs_diff: float


@dataclass(frozen=True)
class OrtExport:
    """The written ORT-format package and the operators a minimal build needs for it."""

    package: Path
    output: Path
    platform: str
    variants: tuple[OrtVariant, ...]
    config: Path
    operators: tuple[str, ...]  # "domain;opset;Op1,Op2" lines of the config


def _convert(models: Path, out: Path, platform: str) -> None:
    """Run onnxruntime's converter on the folder `models` into `out`, its prints and logs routed to our log."""
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    printed = io.StringIO()
    quiet = logging.getLogger("ort_format_model.utils")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(printed):
            convert_onnx_models_to_ort(
                models,
                output_dir=out,
                optimization_styles=[OptimizationStyle.Fixed],
                target_platform=platform,
            )
    except Exception as exc:  # the converter raises whatever onnxruntime raised, with its message
        raise BadModelError(f"onnxruntime could not convert to ORT format: {first_line(exc, 300)}") from exc
    finally:
        quiet.setLevel(level)
    log.debug("convert_onnx_models_to_ort: %s", printed.getvalue())


def export_ort(
    package_dir: str | Path,
    out_dir: str | Path,
    variants: Sequence[str] = (),
    platform: str = "arm",
    force: bool = False,
) -> OrtExport:
    """Write the package at `package_dir` (`variants`, default all) in ORT format into `out_dir`, atomically."""
    from toolkit.runner import Runner
    from toolkit.tasks import task_for

    if platform not in ORT_PLATFORMS:
        raise BadInputError(f"unknown platform '{platform}'; choose one of: {', '.join(ORT_PLATFORMS)}")
    package = ModelPackage.open(package_dir)
    out = Path(out_dir)
    check_output_directory(out, package.path, force, "ORT-format package")
    manifest = package.manifest
    names = list(dict.fromkeys(variants)) or list(manifest.variants)
    chosen = [manifest.variant(n) for n in names]  # unknown names fail here
    onnx_files = {v.name: package.model_path(v.name) for v in chosen}
    if any(p.suffix != ".onnx" for p in onnx_files.values()):
        raise BadInputError(
            f"package '{package.path}' is already in ORT format; export its ONNX package instead"
        )
    sample = task_for(package).samples("held-out", 1)[0]
    with staging_directory(out) as staging, tempfile.TemporaryDirectory(prefix="edge-ort-") as tmp:
        tree = staging / "package"
        shutil.copytree(
            package.path, tree, ignore=shutil.ignore_patterns("*.onnx", "*.onnx.data", ".trt_cache")
        )
        models = Path(tmp)
        for path in onnx_files.values():
            for part in (path, *package.path.glob(f"{path.name}.data")):
                (models / part.name).symlink_to(part.resolve())
        _convert(models, tree, platform)
        config = tree / CONFIG_NAME
        text = config.read_text("utf-8").replace(f"{tree.resolve()}/", "").replace(f"{tree}/", "")
        config.write_text(text, "utf-8")
        written = []
        for variant in chosen:
            ort_file = Path(variant.file).with_suffix(".ort").name
            manifest = manifest.with_variant(
                dataclasses.replace(variant, file=ort_file, size_bytes=(tree / ort_file).stat().st_size)
            )
        manifest = dataclasses.replace(manifest, variants={n: manifest.variants[n] for n in names})
        converted = ModelPackage(tree, manifest).save(manifest)
        for variant in chosen:
            got = Runner(converted.path, "cpu", variant=variant.name).run(sample)
            want = Runner(onnx_files[variant.name], "cpu").run(sample)
            diff = max(
                float(np.abs(got[k].astype(np.float64) - want[k].astype(np.float64)).max()) for k in want
            )
            ort_file = converted.manifest.variant(variant.name).file
            written.append(
                OrtVariant(
                    variant.name,
                    ort_file,
                    (tree / ort_file).stat().st_size,
                    onnx_files[variant.name].stat().st_size,
                    diff,
                )
            )
        replace_directory(tree, out)
    operators = tuple(line for line in text.splitlines() if line and not line.startswith("#"))
    return OrtExport(package.path, out, platform, tuple(written), out / CONFIG_NAME, operators)


@dataclass(frozen=True)
class EpUsability:
    """How one mobile accelerator would take a graph: onnxruntime's verdict, coverage, and the ops it lacks."""

    execution_provider: str
    verdict: str  # "yes", "maybe" (worth trying), "no"
    supported_nodes: int
    nodes: int
    partitions: int
    unsupported_ops: tuple[str, ...]
    fixed_shapes_verdict: str  # the same verdict once the dynamic input shapes are made fixed

    @property
    def usable(self) -> bool:
        """Whether onnxruntime says the accelerator is worth trying (as is or with fixed shapes)."""
        return self.verdict != "no" or self.fixed_shapes_verdict != "no"


_MOBILE_EPS = (
    ("NNAPI", None),
    ("CoreML NeuralNetwork", "coreml_supported_neuralnetwork_ops.md"),
    ("CoreML MLProgram", "coreml_supported_mlprogram_ops.md"),
)


def mobile_usability(model_path: Path) -> tuple[EpUsability, ...]:
    """onnxruntime's usability checker on `model_path` (optimized to the basic level first, as it does)."""
    if model_path.suffix != ".onnx":
        return ()  # an ORT-format file: the checker reads ONNX graphs only
    from onnxruntime.tools.mobile_helpers import usability_checker as checker
    from onnxruntime.tools.onnx_model_utils import optimize_model

    results = []
    with tempfile.TemporaryDirectory(prefix="edge-mobile-") as tmp:
        optimized = Path(tmp) / model_path.name
        try:
            optimize_model(model_path, optimized, use_external_initializers=True)
            model = checker.ModelProtoWithShapeInfo(optimized).model_with_shape_info
        except Exception as exc:  # onnxruntime's own error, kept as the message
            raise BadModelError(
                f"onnxruntime's usability checker cannot read '{model_path}': {first_line(exc)}"
            ) from exc
        for ep, ops_file in _MOBILE_EPS:
            verdicts = []
            for fixed in (True, False):  # require_fixed_input_sizes: as is, then as if shapes were made fixed
                if ops_file is None:
                    info = checker.check_nnapi_partitions(model, fixed)
                else:
                    info = checker.check_coreml_partitions(model, fixed, ops_file)
                verdicts.append(info)
            as_is, with_fixed = verdicts
            results.append(
                EpUsability(
                    execution_provider=ep,
                    verdict=as_is.suitability().name.lower(),
                    supported_nodes=as_is.num_supported_nodes,
                    nodes=as_is.num_nodes,
                    partitions=as_is.num_partitions,
                    unsupported_ops=tuple(sorted(as_is.unsupported_ops)),
                    fixed_shapes_verdict=with_fixed.suitability().name.lower(),
                )
            )
    return tuple(results)
