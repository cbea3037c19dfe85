"""The task registry: one module per task, the one owner of everything task-specific.

A task is a `Task` subclass in ``toolkit/tasks/<task>.py`` (or a package ``toolkit/tasks/<task>/`` when it is
large: ``generate``, ``transcribe``) plus one entry in `TASK_MODULES` below; its module also defines the task's
typed pipeline (a `Pipeline` subclass) and exports both as ``TASK`` and ``PIPELINE``. Families share a module:
``encoder_decoder`` (`Seq2SeqTask`, `Seq2SeqPipeline`) under ``text2text`` and ``transcribe``.
`task_for(package)` and `pipeline_class(package)` are what the rest of edge-toolkit asks; nothing else
switches on a task name or a preprocessing type.

What a task owns
    name             the manifest's ``task`` string (``embed``, ``classify``, ``segment``, ...).
    modality         the manifest preprocessing section it reads (`toolkit.tasks.modality`: text, image,
                     audio, or plain tensors), read through `Manifest.section`; a package lacking it is a
                     BadModelError naming the fix (`source_hint`). `accepts(package)` says whether the
                     package has it; when not, `task_for` falls back to ``features`` (the raw model).
    prepare          items -> feeds: the modality's pipeline base (`TextPipeline`, `ImagePipeline`,
                     `AudioPipeline`) turns texts, images or clips into batches; a task may add its own.
    finish           outputs (+ feeds) -> typed results, on the task class (its signature is the task's own:
                     classifiers take ``top_k``, embeddings read the attention mask, the token tagger the
                     character offsets); the pipeline's public method (``embed``, ``classify``, ``tag``, ...)
                     calls it per batch.
    samples          `samples(purpose, count)`: batch-1 feeds for ``held-out`` accuracy and ``calibration``
                     (one generator per modality, seeded by purpose), `timing_feeds(batch, seq)` for latency;
                     `own_held_out(text)` cuts the user's own held-out text (``--held-out``) into the same feeds.
    metric           the accuracy metric quantization checks (``cosine``, ``top1_agreement`` or
                     ``max_abs_diff``) over `metric_values(outputs, feeds)`; `accuracy_report(runs, feeds)`
                     makes the report of a variant against fp32 (a shape of `toolkit.tasks.accuracy`).
    printing         `run_input` (what ``edge run`` passes it: text, image or audio), `run_lines` and
                     `run_json` (how ``edge run`` prints its results).
    serving          `served_outputs` and `serve(outputs, feeds)`: the server's pipeline model (BYTES text in,
                     the task's results out); a task without them is served as its raw model only. Further
                     routes ask for capabilities (`toolkit.tasks.base`): `ServesImages` (``NAME-image``),
                     `ServesEmbeddings` (``/v1/embeddings``), `ServesRerank` (``/v1/rerank``), and the pipeline's
                     `ServesDecoding` (an encoder-decoder's ``NAME-audio`` / ``NAME-text``).

Multi-step tasks (text generation, encoder-decoders) fit the same registry: the Task keeps the manifest
section, samples and metric, and its module's pipeline class runs its own loop over one or several runners
(nothing forces a single prepare -> run -> finish pass); `serve` may stay unimplemented: the server runs their
pipelines itself (text generation: `toolkit.serve.continuous`; encoder-decoders: `toolkit.serve.decoding`, over
what their pipelines offer as `ServesDecoding`).
"""

from __future__ import annotations

import importlib
from functools import cache
from typing import Any

from toolkit.manifest import ModelPackage, TensorSpec
from toolkit.tasks.base import (
    AudioPipeline,
    Family,
    ImagePipeline,
    Pipeline,
    ServedTensor,
    Task,
    TextPipeline,
)

__all__ = [
    "TASK_MODULES",
    "AudioPipeline",
    "Family",
    "ImagePipeline",
    "Pipeline",
    "ServedTensor",
    "Task",
    "TextPipeline",
    "family_of",
    "pipeline_class",
    "pipelines",
    "task_for",
    "task_names",
    "tasks",
]

# One line per task: its module or package under toolkit/tasks/ (which exports TASK and PIPELINE).
TASK_MODULES = (
    "features",
    "embed",
    "classify",
    "token_classify",
    "image_classify",
    "segment",
    "detect",
    "image_text",
    "audio_features",
    "audio_classify",
    "generate",
    "transcribe",
    "text2text",
    "rerank",
)


@cache
def _registry() -> tuple[dict[str, type[Task[Any]]], dict[str, type[Pipeline[Any]]]]:
    modules = [importlib.import_module(f"toolkit.tasks.{name}") for name in TASK_MODULES]
    return (
        {module.TASK.name: module.TASK for module in modules},
        {module.TASK.name: module.PIPELINE for module in modules},
    )


def tasks() -> dict[str, type[Task[Any]]]:
    """Every registered task by name."""
    return dict(_registry()[0])


def pipelines() -> dict[str, type[Pipeline[Any]]]:
    """Every registered task's pipeline class by task name."""
    return dict(_registry()[1])


def task_names() -> tuple[str, ...]:
    """The registered task names, for choice lists."""
    return tuple(_registry()[0])


def _registered(package: ModelPackage) -> str:
    """The package's task when it is registered and the package has what it needs, else ``features``."""
    name = package.manifest.task
    task = _registry()[0].get(name)
    return name if task is not None and task.accepts(package) else "features"


def task_for(package: ModelPackage, specs: tuple[TensorSpec, ...] | None = None) -> Task[Any]:
    """The task owning `package` (``features`` when its task is unknown or it lacks what the task needs)."""
    return _registry()[0][_registered(package)](package, specs)


def pipeline_class(package: ModelPackage) -> type[Pipeline[Any]]:
    """The pipeline `toolkit.load` builds for `package`."""
    return _registry()[1][_registered(package)]


def family_of(package: ModelPackage) -> Family:
    """How `package` runs (single pass, encoder-decoder or generator): its declared task's family, even when the
    package lacks the task's section, so the family's own pipeline names what is missing."""
    registered = _registry()[0]
    return registered.get(package.manifest.task, registered["features"]).family
