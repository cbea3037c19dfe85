"""Hugging Face transformers models: task detection, export through optimum-onnx, preprocessing facts.

torch, transformers and optimum are imported inside the functions: importing `converters` stays cheap.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from converters.export_tasks import TASKS, ExportTask, export_task
from toolkit.errors import BadInputError, ExportError, first_line
from toolkit.manifest import AudioPreprocessing, ImagePreprocessing, Preprocessing, TextPreprocessing

if TYPE_CHECKING:
    from converters.recipes import RecipePreprocessing

__all__ = [
    "copy_assets",
    "detect_task",
    "export_hf_model",
    "labels_of",
    "load_and_export",
    "load_hf_model",
    "missing_tokenizer",
    "preprocessing_of",
    "run_reference",
    "score_activation",
]

log = logging.getLogger(__name__)


def missing_tokenizer(model_dir: Path) -> ExportError:
    """The error for a text model whose directory holds no fast tokenizer to package."""
    return ExportError(
        f"'{model_dir}' has no fast tokenizer (tokenizer.json) to package; save one with the model's tokenizer"
    )


# Suffix of config.architectures[0] -> task; first match wins, so longer suffixes come first.
_ARCHITECTURE_TASKS = (
    ("ForSequenceClassification", "classify"),
    ("ForTokenClassification", "token-classify"),
    ("ForImageClassification", "image-classify"),
    ("ForSemanticSegmentation", "segment"),
    ("ForObjectDetection", "detect"),
    ("CLIPModel", "image-text"),
    ("SiglipModel", "image-text"),
    ("ForCausalLM", "generate"),
    ("LMHeadModel", "generate"),  # GPT-2 and kin (before "Model")
    ("Model", "features"),
)
# The same for audio models (a feature extractor with a sampling rate beside them): a sequence classifier
# there classifies clips, and the bare encoder gives audio features.
_AUDIO_ARCHITECTURE_TASKS = (
    ("ForSequenceClassification", "audio-classify"),
    ("ForAudioClassification", "audio-classify"),
    ("Model", "audio-features"),
)

_SENTENCE_TRANSFORMERS_FILES = (
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
)
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
_GENERATION_FILES = ("generation_config.json", "chat_template.jinja")
_IMAGE_FILES = ("preprocessor_config.json",)
_POOLING_MODES = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
}


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def detect_task(model_dir: Path, requested: str | None) -> ExportTask:
    """The task to export: `requested` if given, else sentence-transformers config, else the architecture."""
    if requested:
        return export_task(requested)
    if (model_dir / "modules.json").is_file():
        return TASKS["embed"]
    architectures = _read_json(model_dir / "config.json").get("architectures") or []
    audio = "sampling_rate" in _read_json(model_dir / "preprocessor_config.json")
    for architecture in architectures:
        for suffix, task in _AUDIO_ARCHITECTURE_TASKS if audio else _ARCHITECTURE_TASKS:
            if architecture.endswith(suffix):
                return TASKS["rerank" if task == "classify" and _cross_encoder(model_dir) else task]
    raise BadInputError(
        f"cannot tell the task of '{model_dir}' (architectures: {architectures or 'none'}); pass --task ({', '.join(TASKS)})"
    )


# sentence-transformers' CrossEncoder activations (config.json, by class path) -> the manifest's names
_CROSS_ENCODER_ACTIVATIONS = {
    "torch.nn.modules.activation.Sigmoid": "sigmoid",
    "torch.nn.modules.linear.Identity": "identity",
    "torch.nn.modules.activation.Tanh": "tanh",
}


def _cross_encoder_config(model_dir: Path) -> tuple[str | None, int]:
    """(the activation class path a sentence-transformers CrossEncoder config names or None, its label count)."""
    config = _read_json(model_dir / "config.json")
    settings = config.get("sentence_transformers")
    path = settings.get("activation_fn") if isinstance(settings, Mapping) else None
    path = path or config.get("sbert_ce_default_activation_function")  # sentence-transformers < 4
    labels = config.get("id2label")
    return (path if isinstance(path, str) else None), len(labels) if isinstance(labels, Mapping) else 2


def _cross_encoder(model_dir: Path) -> bool:
    """Whether a sequence classifier is a cross-encoder scorer: one logit (sentence-transformers saves them so)."""
    return _cross_encoder_config(model_dir)[1] == 1


def score_activation(model_dir: Path) -> str:
    """What ``CrossEncoder.predict`` applies to the logit by default: the config's activation, else sigmoid for
    one label; an activation the runtime does not replay is an ExportError."""
    path, labels = _cross_encoder_config(model_dir)
    if path is None:
        return "sigmoid" if labels == 1 else "identity"
    if path not in _CROSS_ENCODER_ACTIVATIONS:
        raise ExportError(
            f"'{model_dir}' scores with activation {path}; edge-toolkit replays "
            f"{', '.join(_CROSS_ENCODER_ACTIVATIONS)}: set one in config.json's sentence_transformers.activation_fn"
        )
    return _CROSS_ENCODER_ACTIVATIONS[path]


def load_hf_model(model_dir: Path, task: ExportTask) -> Any:
    """The PyTorch model for `task`, in eval mode."""
    from optimum.exporters.tasks import TasksManager

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = TasksManager.get_model_from_task(
                task.optimum_task, str(model_dir), framework="pt", library_name="transformers"
            )
    except (OSError, ValueError, KeyError) as exc:
        raise ExportError(
            f"could not load '{model_dir}' as a {task.optimum_task} model ({first_line(exc, 300)}); check --task or the model files"
        ) from None
    return model.eval()


def load_and_export(
    model_dir: Path,
    name: str,
    task: ExportTask,
    export_dir: Path,
    opset: int | None,
    say: Callable[[str], None],
    main_file: str = "model.onnx",
) -> tuple[Any, Path, float]:
    """Load the model at `model_dir` with PyTorch and export it through optimum-onnx into `export_dir` (made
    here): the PyTorch model, the exported `main_file` and the export's seconds."""
    export_dir.mkdir()
    say(f"loading {name} ({task.name}) with PyTorch")
    model = load_hf_model(model_dir, task)
    say(f"exporting to ONNX with optimum-onnx ({task.optimum_task})")
    started = time.perf_counter()
    exported = export_hf_model(model, task, export_dir, opset, main_file)
    return model, exported, time.perf_counter() - started


def export_hf_model(
    model: Any, task: ExportTask, output_dir: Path, opset: int | None, main_file: str = "model.onnx"
) -> Path:
    """Export with optimum-onnx into `output_dir`; returns the ONNX file `main_file` (encoder-decoders write
    several). Validation is ours, not optimum's."""
    from optimum.exporters.onnx import onnx_export_from_model

    optimum_logger = logging.getLogger("optimum")
    previous_level = optimum_logger.level
    # optimum logs advice (install accelerate, ...) straight to the terminal; keep it for --debug only.
    optimum_logger.setLevel(logging.DEBUG if log.isEnabledFor(logging.DEBUG) else logging.ERROR)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            onnx_export_from_model(
                model, output_dir, opset=opset, task=task.optimum_task, do_validation=False
            )
    except (ValueError, KeyError, NotImplementedError, RuntimeError) as exc:
        architecture = type(model).__name__
        raise ExportError(
            f"optimum-onnx could not export {architecture} for task {task.optimum_task} ({first_line(exc, 300)}); "
            "try another --task or --opset"
        ) from None
    finally:
        optimum_logger.setLevel(previous_level)
    for warning in caught:
        log.debug("export: %s", warning.message)
    onnx_file = output_dir / main_file
    if not onnx_file.is_file():
        raise ExportError(
            f"optimum-onnx wrote no {main_file} for {type(model).__name__}; this architecture may need several ONNX files"
        )
    return onnx_file


def _text_max_length(model_dir: Path, config: Mapping[str, Any]) -> int:
    st_config = _read_json(model_dir / "sentence_bert_config.json")
    if "max_seq_length" in st_config:
        return int(st_config["max_seq_length"])
    positions = int(config.get("max_position_embeddings", 512))
    declared = _read_json(model_dir / "tokenizer_config.json").get("model_max_length")
    return (
        min(int(declared), positions) if isinstance(declared, int | float) and declared < 1e6 else positions
    )


def _pooling(model_dir: Path) -> tuple[str | None, bool]:
    modules = (
        json.loads((model_dir / "modules.json").read_text(encoding="utf-8"))
        if (model_dir / "modules.json").is_file()
        else []
    )
    pooling: str | None = "mean"
    normalize = False
    for module in modules:
        kind = module.get("type", "")
        if kind.endswith("Pooling"):
            config = _read_json(model_dir / module.get("path", "") / "config.json")
            pooling = next((mode for key, mode in _POOLING_MODES.items() if config.get(key)), "mean")
        elif kind.endswith("Normalize"):
            normalize = True
    return pooling, normalize


def _text_preprocessing(model_dir: Path, export_dir: Path, task: ExportTask) -> TextPreprocessing | None:
    if not (export_dir / "tokenizer.json").is_file():
        return None
    pooling, normalize = _pooling(model_dir) if task.pooled_output is not None else (None, False)
    return TextPreprocessing(
        tokenizer="tokenizer.json",
        max_length=_text_max_length(model_dir, _read_json(model_dir / "config.json")),
        pooling=pooling,
        normalize=normalize,
        output=task.pooled_output,
        activation=score_activation(model_dir) if task.scores_pairs else None,
    )


# PIL's filter numbers, as image processor configs store them ("resample": 3), -> our names.
_RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
# ConvNeXt-style processors (ResNet, ConvNeXt, ...) crop at or above this size by warping instead.
_CROP_PCT_LIMIT = 384


def _image_preprocessing(model_dir: Path) -> ImagePreprocessing | None:
    """The HF image processor's resize/crop/rescale/normalise as the runtime replays them.

    Conventions read: ``size`` {height, width} (or an int, ViT) resizes exactly; ``size`` {shortest_edge} keeps
    the aspect ratio, then ``crop_size`` crops the centre when ``do_center_crop``; ConvNeXt-style processors
    (a ``crop_pct`` key, ResNet's) resize the shortest edge to ``shortest_edge / crop_pct`` and crop a
    ``shortest_edge`` square, or warp to a square at 384 and above.
    """
    image = _read_json(model_dir / "preprocessor_config.json")
    if not image or "sampling_rate" in image:
        return None
    size = image.get("size", _read_json(model_dir / "config.json").get("image_size", 224))
    shortest = None
    if isinstance(size, Mapping) and "shortest_edge" in size:
        shortest = int(size["shortest_edge"])
    elif isinstance(size, int) and "crop_pct" in image:
        shortest = size  # ConvNeXt processors read a bare int as the shortest edge
    crop = _hw(image["crop_size"], 0) if image.get("do_center_crop") and image.get("crop_size") else None
    resize, target = "exact", _hw(size, 224)
    if shortest is not None and "crop_pct" in image:
        crop_pct = float(image["crop_pct"] or 224 / 256)
        if shortest < _CROP_PCT_LIMIT:
            edge = int(shortest / crop_pct)
            resize, target, crop = "shortest_edge", (edge, edge), (shortest, shortest)
        else:
            resize, target, crop = "exact", (shortest, shortest), None
    elif shortest is not None and isinstance(size, Mapping) and size.get("longest_edge"):
        resize, target = "shortest_longest_edge", (shortest, int(size["longest_edge"]))  # DETR, YOLOS
    elif shortest is not None:
        resize, target = "shortest_edge", (shortest, shortest)
    normalize = image.get("do_normalize", True)
    return ImagePreprocessing(
        size=target,
        crop_size=crop,
        mean=tuple(float(v) for v in image.get("image_mean", (0.5, 0.5, 0.5))) if normalize else (0.0,),
        std=tuple(float(v) for v in image.get("image_std", (0.5, 0.5, 0.5))) if normalize else (1.0,),
        rescale_factor=float(image.get("rescale_factor", 1 / 255)) if image.get("do_rescale", True) else 1.0,
        resize=resize,
        resample=_RESAMPLE_NAMES.get(int(image.get("resample", 2)), "bilinear"),
    )


# Feature extractors whose model input is the waveform itself (wav2vec 2.0, HuBERT, WavLM, data2vec-audio);
# spectrogram front ends (Whisper, AST) are not replayed by the runtime.
_WAVEFORM_EXTRACTORS = ("Wav2Vec2FeatureExtractor",)


def _audio_preprocessing(model_dir: Path) -> AudioPreprocessing | None:
    audio = _read_json(model_dir / "preprocessor_config.json")
    if audio.get("feature_extractor_type") not in _WAVEFORM_EXTRACTORS or "sampling_rate" not in audio:
        return None
    return AudioPreprocessing(
        sampling_rate=int(audio["sampling_rate"]), normalize=bool(audio.get("do_normalize", True))
    )


def preprocessing_of(
    model_dir: Path, export_dir: Path, task: ExportTask, overrides: RecipePreprocessing | None = None
) -> Preprocessing | None:
    """What the runtime must do before (and for embeddings, after) the model, read from the model's configs,
    with a recipe's `overrides` applied. Audio models get it when their front end is the raw waveform."""
    preprocessing: Preprocessing | None = None
    if task.modality in ("text", "any"):
        preprocessing = _text_preprocessing(model_dir, export_dir, task)
        if preprocessing is None and task.modality == "text":
            raise missing_tokenizer(model_dir)
    if preprocessing is None and task.modality in ("image", "any"):
        preprocessing = _image_preprocessing(model_dir)
    if task.modality == "audio":
        preprocessing = _audio_preprocessing(model_dir)
    return overrides.apply(preprocessing) if overrides is not None else preprocessing


def _hw(size: Any, default: int) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    if isinstance(size, Mapping):
        if "height" in size:
            return (int(size["height"]), int(size["width"]))
        if "shortest_edge" in size:
            return (int(size["shortest_edge"]), int(size["shortest_edge"]))
    return (int(default), int(default))


def labels_of(model: Any, task: ExportTask) -> tuple[str, ...] | None:
    """Class labels in index order, for classification tasks."""
    if not task.has_labels:
        return None
    id2label = getattr(model.config, "id2label", None) or {}
    return tuple(str(id2label[i]) for i in sorted(id2label)) or None


def copy_assets(model_dir: Path, export_dir: Path, package_dir: Path) -> None:
    """Copy preprocessing assets into the package: tokenizer files (as optimum saved them) and configs."""
    for name in (*_TOKENIZER_FILES, *_IMAGE_FILES, *_GENERATION_FILES, "config.json"):
        found = export_dir / name if (export_dir / name).is_file() else model_dir / name
        if found.is_file():
            shutil.copy2(found, package_dir / name)
    for name in _SENTENCE_TRANSFORMERS_FILES:
        if (model_dir / name).is_file():
            shutil.copy2(model_dir / name, package_dir / name)
    for pooling_config in model_dir.glob("*_Pooling/config.json"):
        (package_dir / pooling_config.parent.name).mkdir(exist_ok=True)
        shutil.copy2(pooling_config, package_dir / pooling_config.parent.name / "config.json")
    if not (package_dir / "tokenizer.json").is_file():
        write_fast_tokenizer(model_dir, package_dir / "tokenizer.json")


def _siglip_converter(slow: Any) -> Any:
    """transformers' SentencePiece converter plus what `SiglipTokenizer` does before SentencePiece: lower case
    (``do_lower_case``), punctuation removed, whitespace runs collapsed and stripped; ``</s>`` appended."""
    import string

    from tokenizers import Regex, normalizers, processors
    from transformers.convert_slow_tokenizer import SpmConverter

    class SiglipConverter(SpmConverter):
        def normalizer(self, proto: Any) -> Any:
            punctuation = "".join("\\" + c if c in "\\[]^-" else c for c in string.punctuation)
            steps = [normalizers.Lowercase()] if getattr(slow, "do_lower_case", False) else []
            steps += [
                normalizers.Replace(Regex(f"[{punctuation}]"), ""),
                normalizers.Replace(Regex(r"\s+"), " "),
                normalizers.Strip(),
            ]
            spm = super().normalizer(proto)
            return normalizers.Sequence([*steps, spm] if spm is not None else steps)

        def post_processor(self) -> Any:
            eos = slow.eos_token
            return processors.TemplateProcessing(
                single=["$A", eos], pair=["$A", eos, "$B", eos], special_tokens=[(eos, slow.eos_token_id)]
            )

    return SiglipConverter(slow).converted()


# slow tokenizers transformers has no fast class or converter for, by class name
_CONVERTERS: dict[str, Callable[[Any], Any]] = {"SiglipTokenizer": _siglip_converter}


def write_fast_tokenizer(model_dir: Path, target: Path) -> bool:
    """Convert the directory's slow (SentencePiece) tokenizer to `target` (a ``tokenizer.json``) with transformers'
    slow-to-fast conversion; False when it has no slow tokenizer a converter knows."""
    from toolkit.atomic import atomic_write_text

    config = model_dir / "tokenizer_config.json"
    if not config.is_file():
        return False
    name = json.loads(config.read_text(encoding="utf-8")).get("tokenizer_class")
    from transformers.convert_slow_tokenizer import SLOW_TO_FAST_CONVERTERS, convert_slow_tokenizer

    if name not in _CONVERTERS and name not in SLOW_TO_FAST_CONVERTERS:
        return False
    from transformers import AutoTokenizer

    try:
        slow = AutoTokenizer.from_pretrained(model_dir, use_fast=False)
    except ImportError as exc:
        raise ExportError(
            f"'{model_dir}' has a {name} (SentencePiece) and no tokenizer.json; converting it needs sentencepiece: "
            f"pip install 'edge-toolkit[convert]' ({first_line(exc, 200)})"
        ) from exc
    fast = _CONVERTERS[name](slow) if name in _CONVERTERS else convert_slow_tokenizer(slow)
    atomic_write_text(target, fast.to_str())
    log.info("converted %s to %s", name, target.name)
    return True


def run_reference(
    model: Any, feeds: Mapping[str, np.ndarray], names: tuple[str, ...]
) -> dict[str, np.ndarray]:
    """Run the PyTorch model on numpy feeds; returns the outputs called `names` as numpy arrays."""
    import torch

    with torch.inference_mode():
        outputs = model(**{k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items()})
    missing = [n for n in names if n not in outputs]
    if missing:
        raise ExportError(
            f"the PyTorch model has no output {missing[0]!r} to validate against (it has {list(outputs.keys())})"
        )
    return {n: outputs[n].detach().float().numpy() for n in names}
