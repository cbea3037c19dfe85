"""The export facts per task: the one task vocabulary of `converters`, tied to the toolkit's task registry.

Every name in `TASKS` is a task `toolkit.tasks.tasks()` registers (what a package of it does at run time is the
registry's); `TASKS` adds what converting one from Hugging Face needs: the optimum-onnx task it exports as, the
modality its preprocessing reads and whether it carries class labels. A registered task that is not exported
from Hugging Face is listed in `NOT_EXPORTED` (tests/test_export_tasks.py checks both directions). Recipes,
task detection and sample generation validate against `TASKS`; how a task runs (`Family`) is asked of the
registry through `ExportTask.family`, never decided here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from toolkit.errors import BadInputError
from toolkit.tasks import Family, tasks

__all__ = ["NOT_EXPORTED", "TASKS", "ExportTask", "export_task"]


@dataclass(frozen=True)
class ExportTask:
    """One of our task names, the optimum-onnx task it exports as, and what it reads: ``text``, ``image``,
    ``audio`` (a waveform) or ``any``. `pooled_output`: the output pooled into one vector per text, with the
    source's sentence-transformers pooling and normalisation (None: none is pooled); `scores_pairs`: its text
    section records the cross-encoder's score activation."""

    name: str
    optimum_task: str
    modality: str
    has_labels: bool = False
    pooled_output: str | None = None
    scores_pairs: bool = False

    @property
    def family(self) -> Family:
        """How the task's packages run (single pass, encoder-decoder, generator): the registry's answer."""
        return tasks()[self.name].family

    def export_settings(self, export_seconds: float) -> dict[str, Any]:
        """What the fp32 variant records of its export through optimum-onnx."""
        return {
            "exporter": "optimum-onnx",
            "optimum_task": self.optimum_task,
            "export_seconds": round(export_seconds, 2),
        }

    def exporter_record(self) -> dict[str, str]:
        """The manifest's ``exporter`` entry for an optimum-onnx export."""
        return {"name": "optimum-onnx", "task": self.optimum_task}


TASKS: dict[str, ExportTask] = {
    task.name: task
    for task in (
        ExportTask("embed", "feature-extraction", "text", pooled_output="last_hidden_state"),
        ExportTask("features", "feature-extraction", "any"),
        ExportTask("classify", "text-classification", "text", has_labels=True),
        ExportTask("rerank", "text-classification", "text", scores_pairs=True),
        ExportTask("token-classify", "token-classification", "text", has_labels=True),
        ExportTask("image-classify", "image-classification", "image", has_labels=True),
        ExportTask("segment", "semantic-segmentation", "image", has_labels=True),
        ExportTask("detect", "object-detection", "image", has_labels=True),
        ExportTask("image-text", "zero-shot-image-classification", "image"),
        ExportTask("audio-features", "feature-extraction", "audio"),
        ExportTask("audio-classify", "audio-classification", "audio", has_labels=True),
        ExportTask("generate", "text-generation-with-past", "text"),  # converters/causal_lm.py
        ExportTask("transcribe", "automatic-speech-recognition-with-past", "audio"),  # converters/seq2seq.py
        ExportTask("text2text", "text2text-generation-with-past", "text"),
    )
}
# Registered tasks with no Hugging Face export (packaged from .onnx files or PyTorch modules only): none yet.
NOT_EXPORTED: frozenset[str] = frozenset()

# optimum task name -> ours; where several of ours export as one optimum task, the first listed wins.
_OPTIMUM_ALIASES: dict[str, str] = {}
for _task in TASKS.values():
    if _task.name != "embed":
        _OPTIMUM_ALIASES.setdefault(_task.optimum_task, _task.name)


def export_task(name: str) -> ExportTask:
    """The task called `name` (ours or an optimum-onnx task name); an unknown one is a BadInputError listing ours."""
    canonical = _OPTIMUM_ALIASES.get(name, name)
    if canonical not in TASKS:
        raise BadInputError(f"unknown task '{name}'; use one of: {', '.join(TASKS)}")
    return TASKS[canonical]
