"""``audio-features``: a speech or audio encoder's frames for each clip (wav2vec 2.0: one 768-d frame per 20 ms)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from toolkit.manifest import ModelPackage
from toolkit.preprocess import AudioInput
from toolkit.tasks.base import AudioPipeline, Task
from toolkit.tasks.modality import AudioModality

__all__ = ["PIPELINE", "TASK", "AudioEncoder", "AudioFeaturesTask"]


class AudioFeaturesTask(Task[AudioModality]):
    """Frames [frames, dim] per clip."""

    name = "audio-features"
    modality = AudioModality
    preferred_output = "last_hidden_state"
    source_hint = " from a model with a waveform feature extractor"
    run_input = "audio"

    @classmethod
    def accepts(cls, package: ModelPackage) -> bool:
        """Only waveform models: a package with a spectrogram front end (kws-cnn's MFCCs) takes raw feeds."""
        return cls.modality.accepts(package)

    def run_lines(self, items: Sequence[str], results: Sequence[Any]) -> list[str]:
        """Each clip, then its frame count, width and statistics."""
        lines = []
        for clip, frames in zip(items, results, strict=True):
            lines.append(f"{clip}:")
            lines.append(
                f"  {frames.shape[0]} frames x {frames.shape[1]}, mean {frames.mean():.4g}, std {frames.std():.4g}"
            )
        return lines

    def run_json(self, results: Sequence[Any]) -> dict[str, Any]:
        """``features``: the frames of each clip."""
        return {"features": list(results)}


class AudioEncoder(AudioPipeline):
    """Audio features: `AudioEncoder.load(path).encode(clips)`."""

    task_class = AudioFeaturesTask
    task: AudioFeaturesTask

    def encode(self, clips: Sequence[AudioInput], sampling_rate: int | None = None) -> list[np.ndarray]:
        """For each clip, its frames as float32 [frames, dim], in order."""
        output = self.task.output_name(self.runner.outputs)
        return self._clips(clips, sampling_rate, lambda outputs, feeds: [outputs[output][0]], [output])

    def run_items(self, items: Sequence[Any]) -> list[Any]:
        """`encode(items)`."""
        return list(self.encode(items))


TASK = AudioFeaturesTask
PIPELINE = AudioEncoder
