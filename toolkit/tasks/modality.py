"""What a task reads: text, images, audio or plain tensors, each with its manifest section and sample inputs.

A modality is chosen by the package's preprocessing section (its ``kind``); one generator per modality makes
sample inputs, seeded by purpose (`PURPOSE_SEEDS`), so held-out inputs never equal calibration inputs:

- text: real sentences from `toolkit.corpus` (held-out and calibration sets are disjoint);
- image: smooth random colour fields with texture, normalised as the package says;
- audio: speech-like waveforms of 0.5, 1 and 1.5 s in turn;
- tensor: spec-driven random feeds (`toolkit.inputs`), sequences of 16 to 64 steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import ClassVar, Generic, TypeVar, cast

import numpy as np

from toolkit.corpus import CALIBRATION_SENTENCES, HELD_OUT_SENTENCES
from toolkit.errors import BadInputError, BadModelError
from toolkit.inputs import InputLimits, random_feeds
from toolkit.manifest import (
    AudioPreprocessing,
    ImagePreprocessing,
    ModelPackage,
    TensorSpec,
    TextPreprocessing,
)
from toolkit.preprocess import TextTokenizer, preprocess_audio, preprocess_image

__all__ = [
    "CALIBRATION_SEED",
    "HELD_OUT_SEED",
    "MODALITIES",
    "PURPOSES",
    "PURPOSE_SEEDS",
    "AudioModality",
    "ImageModality",
    "Modality",
    "TensorModality",
    "TextModality",
    "modality_of",
    "normalise_image",
    "synthetic_clips",
    "synthetic_images",
    "synthetic_tensors",
    "synthetic_waveform",
]

HELD_OUT_SEED = 1_000_003
CALIBRATION_SEED = 20_240_917
LATENCY_SEED = 7
PURPOSE_SEEDS = {"held-out": HELD_OUT_SEED, "calibration": CALIBRATION_SEED, "latency": LATENCY_SEED}
PURPOSES = tuple(PURPOSE_SEEDS)
DEFAULT_SAMPLES = 64  # samples a generator makes when no count is given (text: every sentence of its set)

Feeds = dict[str, np.ndarray]
_Section = TypeVar("_Section", TextPreprocessing, ImagePreprocessing, AudioPreprocessing)


def _seed(purpose: str) -> int:
    if purpose not in PURPOSE_SEEDS:
        raise ValueError(f"unknown sample purpose {purpose!r}; use one of {', '.join(PURPOSES)}")
    return PURPOSE_SEEDS[purpose]


# -- generators ------------------------------------------------------------------------------------------


def normalise_image(pixels: np.ndarray, pre: ImagePreprocessing) -> np.ndarray:
    """[C, H, W] pixel values in 0..255 -> [1, C, H, W] float32 rescaled and normalised."""
    mean = np.asarray(pre.mean, dtype=np.float64)[:, None, None]
    std = np.asarray(pre.std, dtype=np.float64)[:, None, None]
    return ((pixels * pre.rescale_factor - mean) / std)[None].astype(np.float32)


def synthetic_images(pre: ImagePreprocessing, count: int, seed: int, channels: int = 3) -> list[np.ndarray]:
    """Smooth random images (low-frequency colour fields plus texture), normalised as the package says: [1, C, H, W]."""
    rng = np.random.default_rng(seed)
    height, width = pre.crop_size or pre.size
    images = []
    for _ in range(count):
        coarse = rng.uniform(0, 255, size=(channels, 4, 4))
        up = np.kron(coarse, np.ones((int(np.ceil(height / 4)), int(np.ceil(width / 4)))))[:, :height, :width]
        pixels = np.clip(up + rng.normal(0, 20, size=up.shape), 0, 255)
        images.append(normalise_image(pixels, pre))
    return images


def synthetic_waveform(samples: int, sampling_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A speech-like float32 waveform: a gliding pitch with harmonics under a syllable envelope, plus noise,
    normalised to zero mean and unit variance as wav2vec2-style feature extractors do."""
    t = np.arange(samples) / sampling_rate
    pitch = rng.uniform(100, 220) * (1 + 0.3 * np.sin(2 * np.pi * rng.uniform(1, 3) * t))
    phase = 2 * np.pi * np.cumsum(pitch) / sampling_rate
    voice = sum(np.sin(k * phase) / k for k in (1, 2, 3, 5))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(3, 5) * t) ** 2
    wave = voice * envelope + rng.normal(0, 0.05, size=samples)
    return np.asarray((wave - wave.mean()) / (wave.std() + 1e-7), dtype=np.float32)


def synthetic_clips(pre: AudioPreprocessing, count: int, seed: int) -> list[np.ndarray]:
    """Speech-like waveforms of 0.5, 1 and 1.5 s in turn, preprocessed as the package says: [1, samples] each.

    Long enough for any wav2vec 2.0 front end (its convolutions need 400 samples), unlike generic
    sequences of 16 to 64 steps."""
    rng = np.random.default_rng(seed)
    rate = pre.sampling_rate
    return [
        preprocess_audio(synthetic_waveform(rate * (1 + i % 3) // 2, rate, rng), pre)[None]
        for i in range(count)
    ]


def synthetic_tensors(inputs: Sequence[TensorSpec], count: int, seed: int) -> list[Feeds]:
    """Spec-driven batch-1 feeds with sequences of 16, 32, 48 and 64 steps in turn."""
    rng = np.random.default_rng(seed)
    limits = InputLimits()
    return [random_feeds(inputs, 1, 16 + (i % 4) * 16, limits, rng) for i in range(count)]


# -- modalities --------------------------------------------------------------------------------------------


class Modality:
    """A package's inputs of one kind: its manifest section, and sample inputs for every purpose."""

    kind: ClassVar[str] = "tensor"
    section: ClassVar[type | None] = None  # the manifest preprocessing class this modality reads

    def __init__(
        self, package: ModelPackage, inputs: Sequence[TensorSpec], task: str = "features", hint: str = ""
    ) -> None:
        self.package = package
        self.inputs = tuple(inputs)
        self.input_names = frozenset(spec.name for spec in self.inputs)
        self.input_name = self.inputs[0].name if self.inputs else ""

    @classmethod
    def accepts(cls, package: ModelPackage) -> bool:
        """Whether the package has this modality's preprocessing section."""
        return cls.section is None or package.manifest.section(cls.section) is not None

    def samples(self, purpose: str, count: int | None, exclude_texts: Sequence[str] = ()) -> list[Feeds]:
        """`count` batch-1 feeds for `purpose` (None: the generator's default), from this modality's generator."""
        return synthetic_tensors(self.inputs, count or DEFAULT_SAMPLES, _seed(purpose))

    def prepare_file(self, path: Path) -> np.ndarray:
        """One input file (an image, a WAV clip) preprocessed as the package says, without the batch axis."""
        raise BadInputError(f"'{path}': package '{self.package.path}' takes no {self.kind} files")

    def timing_feeds(self, batch: int, seq: int) -> Feeds:
        """Fixed-shape synthetic feeds of `batch` rows and `seq` steps."""
        limits = InputLimits(max_length=seq, image_size=(224, 224))
        return random_feeds(self.inputs, batch, seq, limits, np.random.default_rng(LATENCY_SEED))


class TensorModality(Modality):
    """Plain tensors: no preprocessing section; samples come from the input specs."""


class _Sectioned(Modality, Generic[_Section]):
    """A modality with a preprocessing section, `pre`; a package without it is a BadModelError."""

    def __init__(
        self, package: ModelPackage, inputs: Sequence[TensorSpec], task: str = "features", hint: str = ""
    ) -> None:
        super().__init__(package, inputs, task, hint)
        pre = package.manifest.section(cast(type[_Section], self.section))
        if pre is None:
            raise BadModelError(
                f"package '{package.path}' has task '{task}' but no {self.kind} preprocessing in its manifest; "
                f"re-create it with `edge convert`{hint}"
            )
        self.pre: _Section = pre


class TextModality(_Sectioned[TextPreprocessing]):
    """Text through the package's tokenizer (``preprocessing.kind = "text"``)."""

    kind = "text"
    section = TextPreprocessing

    @cached_property
    def tokenizer(self) -> TextTokenizer:
        """The package's tokenizer, read on first use."""
        return TextTokenizer(self.package.asset(self.pre.tokenizer, "tokenizer"), self.pre.max_length)

    def feeds(self, texts: Sequence[str]) -> Feeds:
        """`texts` tokenized and padded to their longest, only the inputs the model takes."""
        return {k: v for k, v in self.tokenizer(texts).items() if k in self.input_names}

    def text_feeds(self, texts: Sequence[str], padded: bool = False) -> list[Feeds]:
        """Batch-1 feeds, one per text; `padded` pads all to the longest (calibrators need equal shapes)."""
        if not padded:
            return [self.feeds([text]) for text in texts]
        batch = self.feeds(texts)
        return [{k: v[i : i + 1] for k, v in batch.items()} for i in range(len(texts))]

    def samples(self, purpose: str, count: int | None, exclude_texts: Sequence[str] = ()) -> list[Feeds]:
        """Held-out sentences (minus `exclude_texts`), or the calibration sentences padded alike."""
        if _seed(purpose) == CALIBRATION_SEED:
            return self.text_feeds(CALIBRATION_SENTENCES[:count], padded=True)
        excluded = set(exclude_texts)
        return self.text_feeds([t for t in HELD_OUT_SENTENCES if t not in excluded][:count])

    def timing_feeds(self, batch: int, seq: int) -> Feeds:
        """Real tokens, `seq` long (capped at the model's max length), `batch` identical rows."""
        tokenizer = TextTokenizer(
            self.package.asset(self.pre.tokenizer, "tokenizer"), min(seq, self.pre.max_length)
        )
        row = tokenizer([" ".join(HELD_OUT_SENTENCES)])
        return {k: np.repeat(v, batch, axis=0) for k, v in row.items() if k in self.input_names}


class ImageModality(_Sectioned[ImagePreprocessing]):
    """Images resized, cropped and normalised as the manifest says (``preprocessing.kind = "image"``)."""

    kind = "image"
    section = ImagePreprocessing

    @property
    def channels(self) -> int:
        """The image input's channel count (3 when the model leaves it symbolic)."""
        return next((d for d in self.inputs[0].shape[1:2] if isinstance(d, int)), 3)

    @property
    def size(self) -> tuple[int, int]:
        """The (height, width) the model sees."""
        return self.pre.crop_size or self.pre.size

    def samples(self, purpose: str, count: int | None, exclude_texts: Sequence[str] = ()) -> list[Feeds]:
        """Synthetic images of the model's size."""
        images = synthetic_images(self.pre, count or DEFAULT_SAMPLES, _seed(purpose), self.channels)
        return [{self.input_name: image} for image in images]

    def prepare_file(self, path: Path) -> np.ndarray:
        """An image file decoded, resized, cropped and normalised: float32 [C, H, W]."""
        return preprocess_image(path, self.pre)

    def timing_feeds(self, batch: int, seq: int) -> Feeds:
        """Random pixels at the preprocessing size."""
        limits = InputLimits(max_length=seq, image_size=self.size)
        return random_feeds(self.inputs, batch, seq, limits, np.random.default_rng(LATENCY_SEED))


class AudioModality(_Sectioned[AudioPreprocessing]):
    """Mono waveforms at the package's rate (``preprocessing.kind = "audio"``)."""

    kind = "audio"
    section = AudioPreprocessing

    def samples(self, purpose: str, count: int | None, exclude_texts: Sequence[str] = ()) -> list[Feeds]:
        """Speech-like clips of 0.5 to 1.5 s."""
        return [
            {self.input_name: clip}
            for clip in synthetic_clips(self.pre, count or DEFAULT_SAMPLES, _seed(purpose))
        ]

    def prepare_file(self, path: Path) -> np.ndarray:
        """A WAV clip as the model takes it: float32 [samples]."""
        return preprocess_audio(path, self.pre)

    def timing_feeds(self, batch: int, seq: int) -> Feeds:
        """One second of waveform, `batch` rows."""
        one_second = synthetic_clips(self.pre, 2, seed=LATENCY_SEED)[1]  # the clips run 0.5 s, 1 s, 1.5 s
        return {self.input_name: np.repeat(one_second, batch, axis=0)}


# manifest preprocessing kind -> modality; a package without a section is plain tensors
MODALITIES: dict[str, type[Modality]] = {m.kind: m for m in (TextModality, ImageModality, AudioModality)}


def modality_of(package: ModelPackage, inputs: Sequence[TensorSpec] | None = None) -> Modality:
    """The modality of the package's preprocessing section (plain tensors when it has none)."""
    pre = package.manifest.preprocessing
    kind = MODALITIES.get(pre.kind, TensorModality) if pre is not None else TensorModality
    return kind(package, inputs or package.manifest.inputs)
