"""``audio-classify``: clip classification (keyword spotting, sound events), softmax over the logits."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from toolkit.preprocess import AudioInput, Classification, ranked
from toolkit.tasks.base import AudioPipeline, Task
from toolkit.tasks.classify import check_top_k, top_k_lines
from toolkit.tasks.modality import AudioModality

__all__ = ["PIPELINE", "TASK", "AudioClassifier", "AudioClassifyTask"]


class AudioClassifyTask(Task[AudioModality]):
    """The top-k labels of each clip."""

    name = "audio-classify"
    modality = AudioModality
    preferred_output = "logits"
    source_hint = " from a model with a waveform feature extractor"
    run_input = "audio"

    def finish(self, outputs: Mapping[str, np.ndarray], top_k: int) -> list[list[Classification]]:
        """The `top_k` labels of each row, highest first."""
        return ranked(self.manifest, outputs[self.metric_output()], top_k)

    def run_lines(self, items: Sequence[str], results: Sequence[Any]) -> list[str]:
        """Each clip, then its top labels."""
        return top_k_lines(items, results)

    def run_json(self, results: Sequence[Any]) -> dict[str, Any]:
        """``top5``: label and score of each clip's top labels."""
        return {"top5": [[{"label": c.label, "score": c.score} for c in labels] for labels in results]}


class AudioClassifier(AudioPipeline):
    """Clip classification: `AudioClassifier.load(path).classify(clips, top_k=5)`."""

    task_class = AudioClassifyTask
    task: AudioClassifyTask

    def classify(
        self, clips: Sequence[AudioInput], top_k: int = 5, sampling_rate: int | None = None
    ) -> list[list[Classification]]:
        """For each clip, its `top_k` labels by probability (highest first); `scores` holds every label's."""
        check_top_k(top_k)
        output = self.task.output_name(self.runner.outputs)
        return self._clips(
            clips, sampling_rate, lambda outputs, feeds: self.task.finish(outputs, top_k), [output]
        )

    def run_items(self, items: Sequence[Any]) -> list[Any]:
        """`classify(items, top_k=5)`."""
        return list(self.classify(items, top_k=5))


TASK = AudioClassifyTask
PIPELINE = AudioClassifier
