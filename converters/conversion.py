"""`convert`: source -> validated model package, written atomically.

`convert` owns what every source shares (the output check, the staging directory, validation against the
original, the manifest, the final swap into place); the export itself is one function per source family,
chosen from `_EXPORTERS` by the resolved source: Hugging Face models through optimum-onnx, plain PyTorch
modules and ``.pt2`` programs through ``torch.onnx``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from converters.export_manifest import FreshExport, fresh_manifest
from converters.hf import (
    copy_assets,
    detect_task,
    labels_of,
    load_and_export,
    preprocessing_of,
    run_reference,
)
from converters.input_specs import InputSpec, parse_input_specs
from converters.recipes import Recipe, load_recipe
from converters.samples import sample_cases
from converters.sources import ResolvedSource, directory_sha256, resolve_source
from converters.validate import InputLimits, compare_with_reference
from toolkit.agreement import Tolerance
from toolkit.atomic import replace_directory, staging_directory
from toolkit.errors import BadInputError
from toolkit.inputs import is_batch_dim, is_sequence_dim, sequence_axis
from toolkit.inspect import inspect_model
from toolkit.manifest import (
    FP32_VARIANT,
    MANIFEST_NAME,
    Manifest,
    ModelPackage,
    Preprocessing,
    TensorSpec,
    TextPreprocessing,
    resolve_inside,
    section_of,
    variant_file_name,
)
from toolkit.preprocess import TextTokenizer
from toolkit.runner import Runner
from toolkit.tasks import Family, tasks

__all__ = ["EXPORTER_CHOICES", "ConvertOptions", "convert"]

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
Reference = Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]

EXPORTER_CHOICES = ("auto", "dynamo", "torchscript")
TORCH_DEFAULT_TASK = "features"


@dataclass(frozen=True)
class ConvertOptions:
    """How to export and validate. `atol` and `rtol` are the ``allclose`` tolerances of validation (None: the
    recipe's, else `toolkit.agreement`'s defaults).

    For PyTorch sources: `inputs` describes forward's inputs (strings are parsed as ``name:dtype[dims]:lo..hi``),
    `weights` a .safetensors/.pt state dict to load, `trust_remote_code` allows unpickling arbitrary objects,
    `exporter` forces ``dynamo`` or ``torchscript`` (``auto``: dynamo, then TorchScript if it fails).
    `labels` (an .onnx source): a text file of class names, one per line.
    `decoder_graph` (causal LMs): ``auto`` writes edge-toolkit's in-place GroupQueryAttention decoder where the
    architecture has one (Llama, Qwen2, Mistral), else optimum-onnx's export; ``optimum`` always takes optimum's.
    `recipe` (a name or a `Recipe`) converts any source with that recipe's task, inputs, preprocessing, samples and
    tolerance, e.g. a local checkpoint of a catalogue model.
    """

    task: str | None = None
    opset: int | None = None
    atol: float | None = None
    rtol: float | None = None
    force: bool = False
    inputs: tuple[InputSpec, ...] = ()
    weights: Path | None = None
    trust_remote_code: bool = False
    exporter: str = "auto"
    recipe: str | Recipe | None = None
    labels: Path | None = None
    decoder_graph: str = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", parse_input_specs(self.inputs))
        if self.weights is not None:
            object.__setattr__(self, "weights", Path(self.weights))
        if self.exporter not in EXPORTER_CHOICES:
            raise BadInputError(
                f"unknown exporter '{self.exporter}'; use one of: {', '.join(EXPORTER_CHOICES)}"
            )


@dataclass(frozen=True)
class _Exported:
    """What a source family's export hands to the shared part: the ONNX file in the staging package, and
    everything validation and the manifest need."""

    onnx_file: Path
    task: str
    sha256: str
    reference: Reference
    limits: InputLimits
    settings: Mapping[str, Any]
    exporter: Mapping[str, Any]
    tokenizer: TextTokenizer | None = None
    preprocessing: Preprocessing | None = None
    labels: tuple[str, ...] | None = None
    value_ranges: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    reference_name: str = "pytorch"


ExportFn = Callable[[ResolvedSource, ConvertOptions, Path, Path, Progress], _Exported]


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
    for flag, value in (("--atol", options.atol), ("--rtol", options.rtol)):
        if value is not None and not value >= 0:
            raise BadInputError(f"{flag} must be zero or positive, got {value}")

    say(f"resolving {source}")
    resolved = resolve_source(source)
    if options.recipe is not None:
        recipe = load_recipe(options.recipe) if isinstance(options.recipe, str) else options.recipe
        resolved = replace(resolved, recipe=recipe)
    family = "torch" if resolved.torch is not None else "onnx" if resolved.onnx is not None else "hf"
    _check_options(family, options, source)
    tolerance = _tolerance(options, resolved.recipe)
    if family == "hf":
        decoding = _convert_decoding_model(resolved, out, options, tolerance, say)
        if decoding is not None:
            return decoding

    with staging_directory(out) as staging:
        package_dir = staging / "package"
        package_dir.mkdir()
        exported = _EXPORTERS[family](resolved, options, staging, package_dir, say)
        say(f"validating ONNX against {exported.reference_name}")
        manifest = _validated_manifest(exported, resolved, tolerance)
        ModelPackage(package_dir, manifest).save(manifest)
        replace_directory(package_dir, out)
    say(f"wrote {out}")
    return ModelPackage.open(out)


def _convert_decoding_model(
    resolved: ResolvedSource, out: Path, options: ConvertOptions, tolerance: Tolerance, say: Progress
) -> ModelPackage | None:
    """A Hugging Face model that decodes step by step, converted by its family's converter; None for the rest.

    Encoder-decoders (Whisper, BART, T5, Marian, mBART) export encoder + decoders; a causal LM exports with its
    KV cache and validates over cached decode steps.
    """
    if resolved.model_dir is not None:
        from converters.seq2seq import convert_seq2seq, seq2seq_task

        requested = options.task or (resolved.recipe.task if resolved.recipe else None)
        kind = seq2seq_task(resolved.model_dir, requested)
        if kind is not None:
            return convert_seq2seq(resolved, out, kind, options.opset, tolerance, say)
    if _generates(resolved, options):
        from converters.causal_lm import convert_causal_lm

        return convert_causal_lm(resolved, out, options.opset, tolerance, say, options.decoder_graph)
    return None


def _validated_manifest(exported: _Exported, resolved: ResolvedSource, tolerance: Tolerance) -> Manifest:
    """The manifest of the exported model, its fp32 variant validated against the reference on sample cases
    (and the task's subgraphs cut beside it)."""
    info = inspect_model(exported.onnx_file)
    inputs = tuple(
        replace(spec, value_range=exported.value_ranges.get(spec.name, spec.value_range))
        for spec in info.inputs
    )
    task_class = tasks().get(exported.task)
    subgraph_files = _cut_subgraphs(exported.onnx_file, task_class.subgraphs if task_class else {})
    runner = Runner(exported.onnx_file, "cpu")
    subgraphs = {name: Runner(path, "cpu") for name, path in subgraph_files.items()}
    cases = sample_cases(
        inputs, exported.limits, exported.task, resolved.recipe, exported.tokenizer, exported.preprocessing
    )
    validation = compare_with_reference(
        runner,
        exported.reference,
        [case for case in cases if _fits_batch(case.feeds, inputs)],
        tolerance,
        exported.reference_name,
        task_class.meaning if task_class else None,
        subgraphs,
    )
    return fresh_manifest(
        resolved,
        FreshExport(
            task=exported.task,
            sha256=exported.sha256,
            graph=replace(info, inputs=inputs),
            settings=exported.settings,
            validation=validation,
            exporter=exported.exporter,
            preprocessing=exported.preprocessing,
            labels=exported.labels,
            subgraphs={name: path.name for name, path in subgraph_files.items()},
        ),
    )


def _cut_subgraphs(
    onnx_file: Path, wanted: Mapping[str, tuple[tuple[str, ...], tuple[str, ...]]]
) -> dict[str, Path]:
    """Each of the task's subgraphs the export has the outputs of, cut from it into ``NAME.onnx`` beside it."""
    import onnx
    import onnx.utils

    if not wanted:
        return {}
    graph = onnx.load(str(onnx_file), load_external_data=False).graph
    inputs = {i.name for i in graph.input}
    outputs = {o.name for o in graph.output}
    cut = {}
    for name, (needs, gives) in wanted.items():
        if set(gives) <= outputs:
            path = onnx_file.with_name(f"{name}.onnx")
            onnx.utils.extract_model(
                str(onnx_file), str(path), [i for i in needs if i in inputs], list(gives)
            )
            cut[name] = path
    return cut


def _tolerance(options: ConvertOptions, recipe: Recipe | None) -> Tolerance:
    """The options' tolerances, else the recipe's, else the defaults."""
    defaults = Tolerance(recipe.atol, recipe.rtol) if recipe is not None else Tolerance()
    return Tolerance(
        options.atol if options.atol is not None else defaults.atol,
        options.rtol if options.rtol is not None else defaults.rtol,
    )


def _fits_batch(feeds: Mapping[str, np.ndarray], inputs: tuple[TensorSpec, ...]) -> bool:
    """Whether `feeds` has the batch size of every input whose batch dim is fixed (an export with batch 1)."""
    return all(
        not isinstance(spec.shape[0], int) or feeds[spec.name].shape[0] == spec.shape[0]
        for spec in inputs
        if spec.shape and spec.name in feeds
    )


def _generates(resolved: ResolvedSource, options: ConvertOptions) -> bool:
    """Whether the Hugging Face source converts as a generator."""
    requested = options.task or (resolved.recipe.task if resolved.recipe else None)
    return detect_task(resolved.model_dir, requested).family is Family.GENERATOR


def _check_options(family: str, options: ConvertOptions, source: str) -> None:
    """Options that only make sense for PyTorch sources are errors elsewhere, not silently ignored."""
    if options.labels is not None and family != "onnx":
        raise BadInputError(
            f"--labels applies to .onnx sources, not to '{source}', which carries its own labels; drop it"
        )
    if family == "torch":
        return
    given = [
        flag
        for flag, used in (
            ("--input", bool(options.inputs) and family != "onnx"),
            ("--weights", options.weights is not None),
            ("--exporter", options.exporter != "auto"),
        )
        if used
    ]
    if given:
        raise BadInputError(
            f"{given[0]} applies to PyTorch sources (pkg.module:factory, file.py:factory, .pt2), not to '{source}', "
            "which is exported by optimum-onnx; drop it"
        )


# --- Hugging Face: optimum-onnx -------------------------------------------------------------------------


def _export_hf(
    resolved: ResolvedSource, options: ConvertOptions, staging: Path, package_dir: Path, say: Progress
) -> _Exported:
    task = detect_task(
        resolved.model_dir, options.task or (resolved.recipe.task if resolved.recipe else None)
    )
    export_dir = staging / "export"
    model, exported, export_seconds = load_and_export(
        resolved.model_dir, resolved.name, task, export_dir, options.opset, say
    )

    onnx_file = package_dir / variant_file_name(FP32_VARIANT)
    exported.replace(onnx_file)
    copy_assets(resolved.model_dir, export_dir, package_dir)
    preprocessing = preprocessing_of(
        resolved.model_dir, export_dir, task, resolved.recipe.preprocessing if resolved.recipe else None
    )
    text = section_of(preprocessing, TextPreprocessing)
    tokenizer = (
        TextTokenizer(resolve_inside(package_dir, text.tokenizer, "tokenizer"), text.max_length)
        if text is not None
        else None
    )
    output_names = tuple(spec.name for spec in inspect_model(onnx_file).outputs)
    return _Exported(
        onnx_file=onnx_file,
        task=task.name,
        sha256=directory_sha256(resolved.model_dir),
        reference=lambda feeds: run_reference(model, feeds, output_names),
        limits=_hf_input_limits(model, preprocessing),
        settings=task.export_settings(export_seconds),
        exporter=task.exporter_record(),
        tokenizer=tokenizer,
        preprocessing=preprocessing,
        labels=labels_of(model, task),
        value_ranges=_id_ranges(model),
    )


def _id_ranges(model: object) -> dict[str, tuple[int, int]]:
    """The ids an embedding table holds, recorded in the manifest so a server can refuse others (not wrap them)."""
    config = getattr(model, "config", None)
    ranges = {}
    for name, attribute in (("input_ids", "vocab_size"), ("token_type_ids", "type_vocab_size")):
        size = getattr(config, attribute, None)
        if isinstance(size, int) and size > 0:
            ranges[name] = (0, size - 1)
    return ranges


def _hf_input_limits(model: object, preprocessing: Preprocessing | None) -> InputLimits:
    config = getattr(model, "config", None)
    # two-tower models (CLIP, SigLIP) keep each tower's sizes in its own sub-config
    text_config = getattr(config, "text_config", None) or config
    vision_config = getattr(config, "vision_config", None) or config
    vocab = int(getattr(text_config, "vocab_size", 1000) or 1000)
    text = section_of(preprocessing, TextPreprocessing)
    positions = int(getattr(text_config, "max_position_embeddings", 128) or 128)
    max_length = text.max_length if text is not None else positions
    size = getattr(vision_config, "image_size", 224) or 224
    image = (
        (int(size[0]), int(size[1])) if isinstance(size, list | tuple) else (int(size), int(size))
    )  # YOLOS: [h, w]
    channels = int(getattr(vision_config, "num_channels", 3) or 3)
    return InputLimits(vocab_size=vocab, max_length=max_length, image_size=image, channels=channels)


# --- plain PyTorch: torch.onnx --------------------------------------------------------------------------


def _files_sha256(files: tuple[Path, ...]) -> str:
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode())
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _export_torch(
    resolved: ResolvedSource, options: ConvertOptions, staging: Path, package_dir: Path, say: Progress
) -> _Exported:
    from converters.torch_export import export_torch, run_model
    from converters.torch_sources import load_torch_source

    assert resolved.torch is not None
    say(f"loading {resolved.ref} with PyTorch")
    model = load_torch_source(resolved.torch, options.weights, options.trust_remote_code)
    specs = options.inputs or (resolved.recipe.inputs if resolved.recipe else ()) or model.specs
    if not specs:
        raise BadInputError(
            f"'{resolved.ref}' needs an --input for each forward input, e.g. --input 'x:float32[batch,3,224,224]' "
            "(named dims are dynamic; integer inputs take a value range like ids:int64[batch,seq]:0..999)"
        )
    say(f"exporting {model.label} to ONNX with torch.onnx ({options.exporter})")
    onnx_file = package_dir / variant_file_name(FP32_VARIANT)
    result = export_torch(model, specs, onnx_file, options.exporter, options.opset)
    settings: dict[str, Any] = {
        "exporter": f"torch.onnx ({result.exporter})",
        "export_seconds": round(result.seconds, 2),
        "inputs": [str(spec) for spec in specs],
    }
    exporter: dict[str, Any] = {"name": "torch.onnx", "mode": result.exporter, "requested": options.exporter}
    if result.first_error is not None:
        settings["first_exporter_error"] = result.first_error
        exporter["first_error"] = result.first_error
    if options.weights is not None:
        settings["weights"] = options.weights.name
    return _Exported(
        onnx_file=onnx_file,
        task=options.task or (resolved.recipe.task if resolved.recipe else TORCH_DEFAULT_TASK),
        sha256=_files_sha256(model.files),
        reference=lambda feeds: run_model(model, feeds),
        # the sizes the model was exported with: free dims that are neither batch nor sequence keep them
        limits=InputLimits(vocab_size=None, dim_sizes=_free_dim_sizes(result.dim_sizes, specs)),
        settings=settings,
        exporter=exporter,
        value_ranges={spec.name: spec.value_range for spec in specs if spec.value_range is not None},
    )


def _free_dim_sizes(sizes: Mapping[str, int], specs: tuple[InputSpec, ...]) -> dict[str, int]:
    """The export sizes of dims that validation can neither vary with the batch nor with the sequence."""
    varied = set()
    for spec in specs:
        seq_axis = sequence_axis(spec.to_tensor_spec())
        for axis, dim in spec.dynamic_dims.items():
            if axis == 0 or axis == seq_axis or is_batch_dim(dim) or is_sequence_dim(dim):
                varied.add(dim)
    return {name: size for name, size in sizes.items() if name not in varied}


# --- an existing ONNX file: copied as it is -------------------------------------------------------------


def _export_onnx(
    resolved: ResolvedSource, options: ConvertOptions, staging: Path, package_dir: Path, say: Progress
) -> _Exported:
    from converters.onnx_source import package_onnx_file

    assert resolved.onnx is not None
    say(f"packaging {resolved.onnx}")
    onnx_file, found = package_onnx_file(
        resolved.onnx, package_dir, options.task, options.labels, options.inputs
    )
    return _Exported(
        onnx_file=onnx_file,
        task=found.task,
        sha256=found.sha256,
        reference=found.reference,
        limits=found.limits,
        settings={"exporter": "existing ONNX file", "file": resolved.onnx.name},
        exporter={"name": "existing", "file": resolved.onnx.name},
        preprocessing=found.preprocessing,
        labels=found.labels,
        reference_name="onnxruntime without graph optimisation",
    )


_EXPORTERS: dict[str, ExportFn] = {"hf": _export_hf, "torch": _export_torch, "onnx": _export_onnx}
