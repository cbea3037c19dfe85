"""Sample inputs for validating an export: real sentences, synthetic photos, waveforms, or spec-driven tensors.

A recipe's ``[sample] kind`` picks the generator from `SAMPLERS`; without a recipe the task's modality does
(text, image, audio; anything else is synthetic). Every generator also keeps the spec-driven cases of
`converters.validate.validation_cases`, and falls back to them alone when the model does not take what it
makes (an image generator without image preprocessing, a waveform for a model without a [batch, samples]
float input), so a sample kind never makes validation impossible.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from converters.export_tasks import TASKS
from converters.recipes import Recipe, RecipeSample
from converters.validate import ValidationCase, validation_cases
from toolkit.inputs import InputLimits, random_tensor
from toolkit.manifest import ImagePreprocessing, Preprocessing, TensorSpec, section_of
from toolkit.preprocess import TextTokenizer, preprocess_image
from toolkit.tasks.modality import synthetic_waveform

__all__ = ["SAMPLERS", "SampleContext", "sample_cases", "synthetic_photo", "synthetic_waveform"]


@dataclass(frozen=True)
class SampleContext:
    """What a sample generator may use: the model's inputs and limits, its tokenizer and preprocessing, the
    recipe's sample settings, and a seed."""

    inputs: tuple[TensorSpec, ...]
    limits: InputLimits
    sample: RecipeSample
    tokenizer: TextTokenizer | None = None
    preprocessing: Preprocessing | None = None
    seed: int = 0


def _spec_cases(ctx: SampleContext) -> list[ValidationCase]:
    return validation_cases(ctx.inputs, ctx.limits, None, ctx.seed)


def _synthetic(ctx: SampleContext) -> list[ValidationCase]:
    # spec-driven tensors, led by the built-in sentences when the package has a tokenizer
    return validation_cases(ctx.inputs, ctx.limits, ctx.tokenizer, ctx.seed)


def _text(ctx: SampleContext) -> list[ValidationCase]:
    if ctx.tokenizer is None or not ctx.sample.texts:
        return _synthetic(ctx)
    names = {spec.name for spec in ctx.inputs}
    texts = ctx.sample.texts
    three = [texts[i % len(texts)] for i in range(1, 4)]  # padded to the longest of three
    cases = []
    for label, batch in (("batch 1, recipe text", texts[:1]), ("batch 3, recipe texts, padded", three)):
        feeds = ctx.tokenizer(list(batch))
        cases.append(ValidationCase(label, {k: v for k, v in feeds.items() if k in names}))
    return cases + _spec_cases(ctx)


def synthetic_photo(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A photo-like RGB uint8 image [H, W, 3]: smooth colour fields, a lit gradient, a disc, sensor noise."""
    coarse = rng.uniform(0, 255, size=(4, 4, 3))
    rows = np.linspace(0, 3, height)[:, None]
    cols = np.linspace(0, 3, width)[None, :]
    r0, c0 = np.floor(rows).astype(int).clip(0, 2), np.floor(cols).astype(int).clip(0, 2)
    fr, fc = (rows - r0)[..., None], (cols - c0)[..., None]
    field = (
        coarse[r0, c0] * (1 - fr) * (1 - fc)
        + coarse[r0 + 1, c0] * fr * (1 - fc)
        + coarse[r0, c0 + 1] * (1 - fr) * fc
        + coarse[r0 + 1, c0 + 1] * fr * fc
    )
    field *= (0.6 + 0.4 * np.linspace(0, 1, width))[None, :, None]
    yy, xx = np.mgrid[:height, :width]
    cy, cx, radius = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width, min(height, width) / 5
    field[(yy - cy) ** 2 + (xx - cx) ** 2 < radius**2] = rng.uniform(0, 255, size=3)
    return np.clip(field + rng.normal(0, 8, size=field.shape), 0, 255).astype(np.uint8)


def _image_input(inputs: Sequence[TensorSpec]) -> TensorSpec | None:
    return next((s for s in inputs if s.dtype.startswith("float") and len(s.shape) == 4), None)


def _image(ctx: SampleContext) -> list[ValidationCase]:
    pre = section_of(ctx.preprocessing, ImagePreprocessing)
    spec = _image_input(ctx.inputs)
    if pre is None or spec is None:
        return _synthetic(ctx)
    rng = np.random.default_rng(ctx.seed)
    height, width = pre.crop_size or pre.size
    cases = []
    # larger than the model input and not square, so resizing and cropping both do work
    for label, batch, (h, w) in (
        ("batch 1, synthetic photo 4:3", 1, (height * 3 // 2, width * 2)),
        ("batch 3, synthetic photos 3:4", 3, (height * 2, width * 3 // 2)),
    ):
        pixels = np.stack([preprocess_image(synthetic_photo(h, w, rng), pre) for _ in range(batch)])
        feeds = {
            other.name: random_tensor(other, batch, None, ctx.limits, rng)
            for other in ctx.inputs
            if other.name != spec.name
        }
        cases.append(ValidationCase(label, {spec.name: pixels.astype(spec.dtype), **feeds}))
    return cases + _spec_cases(ctx)


def _audio(ctx: SampleContext) -> list[ValidationCase]:
    spec = next((s for s in ctx.inputs if s.dtype.startswith("float") and len(s.shape) == 2), None)
    if spec is None:
        return _synthetic(ctx)
    rng = np.random.default_rng(ctx.seed)
    rate = ctx.sample.sampling_rate
    full = max(1, round(ctx.sample.seconds * rate))
    cases = []
    for label, batch, samples in (
        (f"batch 1, {full / rate:g} s waveform", 1, full),
        (f"batch 3, {full // 2 / rate:g} s waveforms", 3, full // 2),
    ):
        waves = np.stack([synthetic_waveform(samples, rate, rng) for _ in range(batch)])
        feeds = {
            other.name: random_tensor(other, batch, samples, ctx.limits, rng)
            for other in ctx.inputs
            if other.name != spec.name
        }
        cases.append(ValidationCase(label, {spec.name: waves.astype(spec.dtype), **feeds}))
    # audio encoders need hundreds of samples per row: spec-driven sequences of 8..128 would not run
    return cases


Sampler = Callable[[SampleContext], list[ValidationCase]]

# one generator per recipe sample kind (converters.recipes.SAMPLE_KINDS; a test keeps the two in step)
SAMPLERS: dict[str, Sampler] = {"text": _text, "image": _image, "audio": _audio, "synthetic": _synthetic}


def sample_cases(
    inputs: Sequence[TensorSpec],
    limits: InputLimits,
    task: str,
    recipe: Recipe | None = None,
    tokenizer: TextTokenizer | None = None,
    preprocessing: Preprocessing | None = None,
    seed: int = 0,
) -> list[ValidationCase]:
    """Validation cases from the recipe's sample generator, else from the one for `task`'s modality."""
    if recipe is not None:
        sample = recipe.sample
    else:
        modality = TASKS[task].modality if task in TASKS else "any"
        sample = RecipeSample(kind=modality if modality in SAMPLERS else "synthetic")
    ctx = SampleContext(tuple(inputs), limits, sample, tokenizer, preprocessing, seed)
    return SAMPLERS[sample.kind](ctx)
