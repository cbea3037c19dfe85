"""Plain ``nn.Module`` sources shipped with edge-toolkit (as ``converters.model_recipes.modules``).

Each factory takes no arguments and returns a randomly initialised model in eval mode, small and built only
from operators every ONNX runtime runs well, so it exports, quantizes and benchmarks like a real edge model::

    edge convert converters.model_recipes.modules:kws_cnn --input "features:float32[batch,1,40,101]" -o out/kws

Load trained weights with ``--weights file.safetensors``.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["KWS_LABELS", "KeywordSpotter", "kws_cnn"]

# The 12 classes of the Speech Commands v2 keyword-spotting benchmark.
KWS_LABELS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go", "silence", "unknown")


class _SeparableBlock(nn.Module):
    """Depthwise-separable 1-D convolution over time: depthwise k=3, pointwise, batch norm, ReLU."""

    def __init__(self, channels_in: int, channels_out: int, stride: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv1d(
            channels_in, channels_in, 3, stride=stride, padding=1, groups=channels_in, bias=False
        )
        self.pointwise = nn.Conv1d(channels_in, channels_out, 1, bias=False)
        self.norm = nn.BatchNorm1d(channels_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.norm(self.pointwise(self.depthwise(x))))


class KeywordSpotter(nn.Module):
    """A DS-CNN keyword spotter: 40 MFCC coefficients x 101 frames (1 s at 10 ms hops) -> 12 keyword logits.

    Coefficients are channels and frames are time, so every convolution is 1-D over time; about 30k parameters.
    """

    def __init__(self, n_mfcc: int = 40, width: int = 64, n_classes: int = len(KWS_LABELS)) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv1d(n_mfcc, width, 5, stride=2, padding=2, bias=False), nn.BatchNorm1d(width), nn.ReLU()
        )
        self.blocks = nn.Sequential(
            _SeparableBlock(width, width, 1),
            _SeparableBlock(width, width, 2),
            _SeparableBlock(width, width, 1),
            _SeparableBlock(width, width, 2),
        )
        self.classifier = nn.Linear(width, n_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """`features` [batch, 1, n_mfcc, frames] (or [batch, n_mfcc, frames]) -> logits [batch, n_classes]."""
        x = features.flatten(1, -2) if features.dim() == 4 else features
        x = self.blocks(self.stem(x))
        return self.classifier(x.mean(dim=-1))


def kws_cnn() -> KeywordSpotter:
    """A randomly initialised `KeywordSpotter` (seeded, so every call gives the same weights), in eval mode."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        model = KeywordSpotter()
    finally:
        torch.random.set_rng_state(generator_state)
    return model.eval()
