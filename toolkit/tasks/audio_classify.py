"""``audio-classify``: clip classification (keyword spotting, sound events), softmax over the logits."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from toolkit.preprocess import AudioInput, Classification
from toolkit.tasks.base import AudioPipeline
from toolkit.tasks.classify import RankedTask, check_top_k
from toolkit.tasks.modality import AudioModality

__all__ = ["PIPELINE", "TASK", "AudioClassifier", "AudioClassifyTask"]


class AudioClassifyTask(RankedTask[AudioModality]):
    """The top-k labels of each clip (its accuracy metric stays the raw outputs' difference)."""

    name = "audio-classify"
    modality = AudioModality
    source_hint = " from a model with a waveform feature extractor"
    run_input = "audio"


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
