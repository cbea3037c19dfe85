"""Task pipelines over a `Runner`: preprocessing in, task-shaped results out.

`load(path)` reads the package's task from ``edge.json`` and builds the pipeline registered for it in
`PIPELINES`; a task with no pipeline of its own (or a package lacking what its pipeline needs, such as an
audio model with a spectrogram front end) gets `ModelPipeline`, which passes feeds straight through.
Text pipelines tokenize with `tokenizers`; image pipelines decode and resize with Pillow, imported when the
first image is read; audio pipelines read PCM WAV files with the standard library's `wave`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from toolkit.checks import item_list, text_list
from toolkit.errors import BadInputError, BadModelError
from toolkit.manifest import (
    FP32_VARIANT,
    AudioPreprocessing,
    ImagePreprocessing,
    ModelPackage,
    TextPreprocessing,
)
from toolkit.providers import ProviderConfig
from toolkit.runner import Runner

if TYPE_CHECKING:
    from PIL import Image as PILImage

__all__ = [
    "PIPELINES",
    "AudioClassifier",
    "AudioEncoder",
    "AudioInput",
    "Classification",
    "ImageClassifier",
    "ImageInput",
    "ModelPipeline",
    "TextClassifier",
    "TextEmbedding",
    "TextTokenizer",
    "load",
    "open_image",
    "pipeline_class",
    "pool",
    "preprocess_audio",
    "preprocess_image",
    "read_wav",
]


class ModelPipeline:
    """A package and its runner; feeds in, named outputs out. The base of every task pipeline."""

    task = "features"

    def __init__(self, package: ModelPackage, runner: Runner) -> None:
        self.package = package
        self.runner = runner

    def __call__(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Run the raw model."""
        return self.runner.run(feeds)

    @classmethod
    def accepts(cls, package: ModelPackage) -> bool:
        """Whether this pipeline can serve `package`; when not, `load` falls back to the raw `ModelPipeline`."""
        return True


class TextTokenizer:
    """A `tokenizers` tokenizer set up as the package says: truncation to the model's max length, no fixed padding."""

    def __init__(self, path: Path, max_length: int) -> None:
        from tokenizers import Tokenizer  # a few hundred ms; only text packages pay it

        if not path.is_file():
            raise BadModelError(
                f"tokenizer file '{path}' is missing from the package; re-create it with `edge convert`"
            )
        try:
            self.tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # noqa: BLE001 - tokenizers raises a bare Exception for a file it cannot read
            reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise BadModelError(
                f"tokenizer file '{path.name}' is not a tokenizers JSON file ({reason}); "
                "re-create the package with `edge convert`"
            ) from None
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=max_length)
        self.max_length = max_length
        self.pad_id = _pad_token_id(self.tokenizer, path.parent)
        self.vocab_size = int(self.tokenizer.get_vocab_size(with_added_tokens=True))

    def encode(self, texts: Iterable[str]) -> list[tuple[list[int], list[int]]]:
        """Token ids and type ids for each text, unpadded."""
        return [(e.ids, e.type_ids) for e in self.tokenizer.encode_batch(text_list(texts))]

    def pad(self, encodings: Sequence[tuple[list[int], list[int]]]) -> dict[str, np.ndarray]:
        """Pad a batch to its longest member: input_ids, attention_mask, token_type_ids as int64."""
        length = max(len(ids) for ids, _ in encodings)
        batch = len(encodings)
        input_ids = np.full((batch, length), self.pad_id, dtype=np.int64)
        attention_mask = np.zeros((batch, length), dtype=np.int64)
        token_type_ids = np.zeros((batch, length), dtype=np.int64)
        for row, (ids, type_ids) in enumerate(encodings):
            input_ids[row, : len(ids)] = ids
            attention_mask[row, : len(ids)] = 1
            token_type_ids[row, : len(ids)] = type_ids
        return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}

    def __call__(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Tokenize and pad in one step."""
        return self.pad(self.encode(texts))


def _pad_token_id(tokenizer: Any, folder: Path) -> int:
    padding = tokenizer.padding
    if padding and "pad_id" in padding:
        return int(padding["pad_id"])
    config = folder / "tokenizer_config.json"
    if config.is_file() and not config.is_symlink():
        try:
            settings = json.loads(config.read_text(encoding="utf-8"))
        except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            raise BadModelError(
                f"'{config}' is not valid UTF-8 JSON; re-create the package with `edge convert`"
            ) from None
        token = settings.get("pad_token") if isinstance(settings, dict) else None
        if isinstance(token, dict):
            token = token.get("content")
        if isinstance(token, str) and tokenizer.token_to_id(token) is not None:
            return int(tokenizer.token_to_id(token))
    return 0


def pool(hidden: np.ndarray, mask: np.ndarray, mode: str | None) -> np.ndarray:
    """Sentence-transformers pooling of token embeddings [batch, seq, dim] under an attention mask."""
    if mode is None:
        return hidden
    if mode == "cls":
        return hidden[:, 0]
    weights = mask[..., None].astype(hidden.dtype)
    if mode == "mean":
        return (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
    if mode == "max":
        return np.where(weights > 0, hidden, np.finfo(hidden.dtype).min).max(axis=1)
    if mode == "mean_sqrt_len":
        return (hidden * weights).sum(axis=1) / np.sqrt(np.clip(weights.sum(axis=1), 1e-9, None))
    raise BadModelError(f"pooling mode '{mode}' is not supported; use mean, cls, max or mean_sqrt_len")


_Pre = TypeVar("_Pre", TextPreprocessing, ImagePreprocessing, AudioPreprocessing)


def _required_preprocessing(package: ModelPackage, kind: type[_Pre], source_hint: str = "") -> _Pre:
    """The package's preprocessing of `kind`, or a BadModelError saying how to re-create the package."""
    pre = package.manifest.preprocessing
    if not isinstance(pre, kind):
        raise BadModelError(
            f"package '{package.path}' has task '{package.manifest.task}' but no {kind.kind} preprocessing in its "
            f"manifest; re-create it with `edge convert`{source_hint}"
        )
    return pre


def _output_named(runner: Runner, preferred: str) -> str:
    """`preferred` when the model has an output of that name, else its first output."""
    return preferred if any(o.name == preferred for o in runner.outputs) else runner.outputs[0].name


class _TextPipeline(ModelPipeline):
    """Shared tokenization and length-sorted batching for text tasks."""

    def __init__(self, package: ModelPackage, runner: Runner) -> None:
        super().__init__(package, runner)
        self.preprocessing = _required_preprocessing(package, TextPreprocessing)
        self.tokenizer = TextTokenizer(
            package.asset(self.preprocessing.tokenizer, "tokenizer"), self.preprocessing.max_length
        )
        self._input_names = {spec.name for spec in runner.inputs}

    def _batches(
        self, texts: Sequence[str], batch_size: int
    ) -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """Tokenize, sort by length so padding stays small, and yield (original indices, feeds) per batch."""
        if batch_size < 1:
            raise BadInputError(f"batch_size must be at least 1, got {batch_size}")
        encodings = self.tokenizer.encode(texts)
        order = np.argsort([-len(ids) for ids, _ in encodings], kind="stable")
        batches = []
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            padded = self.tokenizer.pad([encodings[i] for i in rows])
            batches.append((rows, {k: v for k, v in padded.items() if k in self._input_names}))
        return batches


class TextEmbedding(_TextPipeline):
    """Sentence embeddings: tokenize, run, pool and normalise as the source sentence-transformers model did."""

    task = "embed"

    @property
    def dimension(self) -> int:
        """Embedding width."""
        dim = self.runner.outputs[0].shape[-1]
        return dim if isinstance(dim, int) else -1

    def embed(self, texts: Iterable[str], batch_size: int = 32) -> np.ndarray:
        """Embeddings as float32 [len(texts), dim], in the order of `texts` (any iterable of strings)."""
        texts = text_list(texts)
        output = self.preprocessing.output or self.runner.outputs[0].name
        pieces: list[np.ndarray] = []
        rows_in_order: list[np.ndarray] = []
        for rows, feeds in self._batches(texts, batch_size):
            hidden = self.runner.run(feeds, [output])[output]
            pooled = pool(hidden, feeds["attention_mask"], self.preprocessing.pooling)
            if self.preprocessing.normalize:
                pooled = pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
            pieces.append(pooled.astype(np.float32, copy=False))
            rows_in_order.append(rows)
        if not pieces:
            return np.zeros((0, max(self.dimension, 0)), dtype=np.float32)
        result = np.empty((len(texts), pieces[0].shape[1]), dtype=np.float32)
        result[np.concatenate(rows_in_order)] = np.concatenate(pieces)
        return result

    __call__ = embed  # type: ignore[assignment]


@dataclass(frozen=True)
class Classification:
    """A label and its probability, with every label's probability in `scores`."""

    label: str
    score: float
    scores: Mapping[str, float] = field(default_factory=dict)


class TextClassifier(_TextPipeline):
    """Sequence classification: softmax over the logits, labels from the manifest."""

    task = "classify"

    def classify(self, texts: Iterable[str], batch_size: int = 32) -> list[Classification]:
        """One `Classification` per text, in order (any iterable of strings)."""
        texts = text_list(texts)
        labels = self.package.manifest.labels
        results: list[Classification | None] = [None] * len(texts)
        for rows, feeds in self._batches(texts, batch_size):
            logits = self.runner.run(feeds, ["logits"])["logits"].astype(np.float64)
            exp = np.exp(logits - logits.max(axis=1, keepdims=True))
            probs = exp / exp.sum(axis=1, keepdims=True)
            names = labels or tuple(f"LABEL_{i}" for i in range(probs.shape[1]))
            for row, p in zip(rows, probs, strict=True):
                best = int(p.argmax())
                results[int(row)] = Classification(
                    names[best], float(p[best]), dict(zip(names, map(float, p), strict=True))
                )
        return [r for r in results if r is not None]

    __call__ = classify  # type: ignore[assignment]


# --- images ---------------------------------------------------------------------------------------------

ImageInput = str | Path | np.ndarray | Any  # a file path, an RGB uint8 array [H, W, 3], or a PIL image


def _pil() -> Any:
    try:
        from PIL import Image
    except ImportError:
        raise BadInputError(
            "image pipelines decode images with Pillow, which is not installed; pip install pillow"
        ) from None
    return Image


def open_image(image: ImageInput) -> PILImage.Image:
    """An RGB PIL image from a path, a uint8 array [H, W, 3] (or [H, W]) or a PIL image; bad input is a BadInputError."""
    Image = _pil()
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        if (
            image.dtype != np.uint8
            or image.ndim not in (2, 3)
            or (image.ndim == 3 and image.shape[2] not in (3, 4))
        ):
            raise BadInputError(
                f"image array must be uint8 [height, width, 3] (RGB), got {image.dtype} {list(image.shape)}; "
                "convert it with .astype(np.uint8)"
            )
        return Image.fromarray(image).convert("RGB")
    if not isinstance(image, str | Path):
        raise BadInputError(
            f"an image must be a file path, a uint8 array or a PIL image, got {type(image).__name__}"
        )
    path = Path(image)
    if not path.is_file():
        problem = "is not a file" if path.exists() else "does not exist"
        raise BadInputError(f"image '{path}' {problem}; pass the path of a JPEG, PNG or other image file")
    try:
        with Image.open(path) as opened:
            return opened.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BadInputError(
            f"image '{path}' could not be decoded ({reason}); pass a JPEG, PNG, BMP, GIF, TIFF or WebP file"
        ) from None


# Our filter names (the manifest's `resample`) -> PIL's filter numbers.
_RESAMPLE = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}


def _exact_size(width: int, height: int, size: tuple[int, int]) -> tuple[int, int]:
    return size


def _shortest_edge_size(width: int, height: int, size: tuple[int, int]) -> tuple[int, int]:
    # as transformers' get_resize_output_image_size: the long side is truncated, not rounded
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size[0], int(size[0] * long / short)
    return (new_long, new_short) if width <= height else (new_short, new_long)


# manifest `resize` -> (width, height, size) -> the (height, width) to resize to
RESIZERS: dict[str, Callable[[int, int, tuple[int, int]], tuple[int, int]]] = {
    "exact": _exact_size,
    "shortest_edge": _shortest_edge_size,
}


def _centre_crop(pixels: np.ndarray, crop: tuple[int, int]) -> np.ndarray:
    """Crop [H, W, C] to `crop` around the centre, zero-padding a smaller image (transformers' center_crop)."""
    height, width = pixels.shape[:2]
    crop_h, crop_w = crop
    if height < crop_h or width < crop_w:
        padded = np.zeros((max(height, crop_h), max(width, crop_w), pixels.shape[2]), dtype=pixels.dtype)
        top, left = -(-(padded.shape[0] - height) // 2), -(-(padded.shape[1] - width) // 2)
        padded[top : top + height, left : left + width] = pixels
        pixels, height, width = padded, padded.shape[0], padded.shape[1]
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    return pixels[top : top + crop_h, left : left + crop_w]


def preprocess_image(image: ImageInput, pre: ImagePreprocessing) -> np.ndarray:
    """Decode, resize, centre-crop, rescale and normalise one image as the manifest says: float32 [C, H, W]."""
    Image = _pil()
    rgb = open_image(image)
    if pre.resize not in RESIZERS or pre.resample not in _RESAMPLE:
        raise BadModelError(
            f"image preprocessing resize '{pre.resize}' / resample '{pre.resample}' is not supported by this "
            f"edge-toolkit (resize: {', '.join(RESIZERS)}; resample: {', '.join(_RESAMPLE)}); upgrade edge-toolkit"
        )
    height, width = RESIZERS[pre.resize](rgb.width, rgb.height, pre.size)
    if (width, height) != rgb.size:
        rgb = rgb.resize(
            (width, height), resample=Image.Resampling(_RESAMPLE[pre.resample]), reducing_gap=None
        )
    pixels = np.asarray(rgb)
    if pre.crop_size is not None:
        pixels = _centre_crop(pixels, pre.crop_size)
    # rescale in float64 then normalise in float32, in the order transformers' image processors do
    scaled = (pixels.astype(np.float64) * pre.rescale_factor).astype(np.float32)
    mean = np.asarray(pre.mean, dtype=np.float32)
    std = np.asarray(pre.std, dtype=np.float32)
    return np.ascontiguousarray(((scaled - mean) / std).transpose(2, 0, 1), dtype=np.float32)


def _image_list(images: Iterable[ImageInput]) -> Sequence[ImageInput]:
    return item_list(images, "images", (str, Path, np.ndarray))


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def _ranked(package: ModelPackage, logits: np.ndarray, top_k: int) -> list[list[Classification]]:
    """Per row of logits [N, classes], the `top_k` labels by probability, each holding every label's score."""
    probs = _softmax(logits.astype(np.float64))
    labels = package.manifest.labels or tuple(f"LABEL_{i}" for i in range(probs.shape[1]))
    ranked = []
    for row in probs:
        scores = dict(zip(labels, map(float, row), strict=True))
        order = np.argsort(-row, kind="stable")[:top_k]
        ranked.append([Classification(labels[i], float(row[i]), scores) for i in order])
    return ranked


class ImageClassifier(ModelPipeline):
    """Image classification: decode with Pillow, resize/crop/normalise from the manifest, softmax, top-k labels."""

    task = "image-classify"

    def __init__(self, package: ModelPackage, runner: Runner) -> None:
        super().__init__(package, runner)
        self.preprocessing = _required_preprocessing(
            package, ImagePreprocessing, " from a directory with a preprocessor_config.json"
        )
        self.input_name = runner.inputs[0].name
        self.output_name = _output_named(runner, "logits")

    def preprocess(self, images: Sequence[ImageInput]) -> np.ndarray:
        """Images -> pixel values float32 [N, C, H, W] (every image must come out the same size)."""
        arrays = [self._pixels(image) for image in _image_list(images)]
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise BadInputError(
                f"images came out in different sizes {sorted(shapes)}; this package resizes by the shortest edge "
                "without a crop, so preprocess them one at a time (classify() does)"
            )
        return np.stack(arrays) if arrays else np.zeros((0, 3, 1, 1), dtype=np.float32)

    def _pixels(self, image: ImageInput) -> np.ndarray:
        pixels = preprocess_image(image, self.preprocessing)
        channels = self.runner.inputs[0].shape[1] if len(self.runner.inputs[0].shape) == 4 else None
        if isinstance(channels, int) and pixels.shape[0] != channels:
            raise BadModelError(
                f"package '{self.package.path}' takes {channels}-channel images; this pipeline makes RGB ones"
            )
        return pixels

    def _batches(self, images: Sequence[ImageInput], batch_size: int) -> Iterator[np.ndarray]:
        """Preprocessed images in batches of up to `batch_size`, in order; a change of size starts a new batch."""
        batch: list[np.ndarray] = []
        for image in _image_list(images):
            pixels = self._pixels(image)
            if batch and (len(batch) == batch_size or pixels.shape != batch[0].shape):
                yield np.stack(batch)
                batch = []
            batch.append(pixels)
        if batch:
            yield np.stack(batch)

    def classify(
        self, images: Sequence[ImageInput], top_k: int = 5, batch_size: int = 8
    ) -> list[list[Classification]]:
        """For each image, its `top_k` labels by probability (highest first); `scores` holds every label's."""
        if top_k < 1 or batch_size < 1:
            raise BadInputError(f"top_k and batch_size must be at least 1, got {top_k} and {batch_size}")
        results: list[list[Classification]] = []
        for pixels in self._batches(images, batch_size):
            logits = self.runner.run({self.input_name: pixels}, [self.output_name])[self.output_name]
            results.extend(_ranked(self.package, logits, top_k))
        return results

    __call__ = classify  # type: ignore[assignment]


# --- audio ----------------------------------------------------------------------------------------------

AudioInput = str | Path | np.ndarray  # a PCM WAV file path, or a mono float waveform [samples] in [-1, 1]

_PCM_FULL_SCALE = {2: 2.0**15, 3: 2.0**23, 4: 2.0**31}


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """A PCM WAV file (8, 16, 24 or 32 bit) as a mono float32 waveform in [-1, 1] (channels averaged) and its rate."""
    import wave  # the standard library's reader: no audio dependency for the runtime

    path = Path(path)
    if not path.is_file():
        problem = "is not a file" if path.exists() else "does not exist"
        raise BadInputError(f"audio file '{path}' {problem}; pass the path of a PCM WAV file")
    try:
        with wave.open(str(path), "rb") as wav:
            width, channels, rate = wav.getsampwidth(), wav.getnchannels(), wav.getframerate()
            frames = wav.readframes(wav.getnframes())
    # `wave` raises any of these on a malformed or non-PCM header (a bare RuntimeError on some)
    except (wave.Error, EOFError, RuntimeError, ValueError) as exc:
        raise BadInputError(
            f"audio file '{path}' is not a PCM WAV file ({exc or 'malformed header'}); convert it, "
            "e.g. ffmpeg -i IN -ac 1 -c:a pcm_s16le OUT.wav"
        ) from None
    raw = np.frombuffer(frames, dtype=np.uint8)
    if width == 1:  # 8-bit WAV is unsigned, centred on 128
        samples = (raw.astype(np.float32) - 128.0) / 128.0
    else:
        if width == 3:  # little-endian 24-bit: widen to int32 with the sign carried into the top byte
            triples = raw.reshape(-1, 3).astype(np.int32)
            ints = (triples[:, 0] | (triples[:, 1] << 8) | (triples[:, 2] << 16)) << 8 >> 8
        else:
            ints = raw.view(f"<i{width}")
        samples = (ints / _PCM_FULL_SCALE[width]).astype(np.float32)
    return samples.reshape(-1, channels).mean(axis=1, dtype=np.float32), rate


def preprocess_audio(
    clip: AudioInput, pre: AudioPreprocessing, sampling_rate: int | None = None
) -> np.ndarray:
    """A clip as the model takes it: float32 [samples] at the package's rate, normalised as its feature extractor.

    A waveform array is taken to be at `sampling_rate` (default: the package's); a WAV file says its own rate.
    Nothing is resampled: a clip at another rate is a BadInputError naming both rates.
    """
    if isinstance(clip, str | Path):
        waveform, rate = read_wav(clip)
        where = f"audio file '{clip}'"
    elif isinstance(clip, np.ndarray):
        if clip.ndim != 1 or clip.dtype.kind != "f":
            raise BadInputError(
                f"a waveform must be a 1-D float array of samples, got {clip.dtype} {list(clip.shape)}; "
                "average the channels (.mean(axis=1)) and convert with .astype(np.float32)"
            )
        waveform, rate, where = clip.astype(np.float32), sampling_rate or pre.sampling_rate, "waveform"
    else:
        raise BadInputError(
            f"a clip must be a WAV file path or a float waveform array, got {type(clip).__name__}"
        )
    if rate != pre.sampling_rate:
        raise BadInputError(
            f"{where} is sampled at {rate} Hz but the model takes {pre.sampling_rate} Hz; resample it first "
            f"(e.g. ffmpeg -i IN -ar {pre.sampling_rate} OUT.wav)"
        )
    if waveform.size == 0:
        raise BadInputError(f"{where} holds no samples")
    if pre.normalize:
        # in float32 and in this order, as transformers' Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm
        waveform = (waveform - waveform.mean()) / np.sqrt(waveform.var() + 1e-7)
    return np.ascontiguousarray(waveform, dtype=np.float32)


class _AudioPipeline(ModelPipeline):
    """Shared clip preprocessing and running for audio tasks.

    Clips run one at a time: wav2vec 2.0 base-style models take no attention mask, so zero-padding clips to
    a common length would change their outputs.
    """

    preferred_output = "last_hidden_state"

    @classmethod
    def accepts(cls, package: ModelPackage) -> bool:
        """Only waveform models: a package with a spectrogram front end (kws-cnn's MFCCs) takes raw feeds."""
        return isinstance(package.manifest.preprocessing, AudioPreprocessing)

    def __init__(self, package: ModelPackage, runner: Runner) -> None:
        super().__init__(package, runner)
        self.preprocessing = _required_preprocessing(
            package, AudioPreprocessing, " from a model with a waveform feature extractor"
        )
        self.input_name = runner.inputs[0].name
        self.output_name = _output_named(runner, self.preferred_output)
        self._takes_mask = any(spec.name == "attention_mask" for spec in runner.inputs)

    def _run_clip(self, clip: AudioInput, sampling_rate: int | None) -> np.ndarray:
        waveform = preprocess_audio(clip, self.preprocessing, sampling_rate)[None]
        feeds = {self.input_name: waveform}
        if self._takes_mask:
            feeds["attention_mask"] = np.ones(waveform.shape, dtype=np.int64)
        return self.runner.run(feeds, [self.output_name])[self.output_name]


def _clip_list(clips: Iterable[AudioInput]) -> Sequence[AudioInput]:
    if isinstance(clips, np.ndarray) and clips.ndim == 1:
        raise BadInputError("clips must be a list; wrap a single clip as [clip]")
    return item_list(clips, "clips", (str, Path))


class AudioEncoder(_AudioPipeline):
    """Speech or audio features: the encoder's frames for each clip (wav2vec 2.0: one 768-d frame per 20 ms)."""

    task = "audio-features"

    def encode(self, clips: Sequence[AudioInput], sampling_rate: int | None = None) -> list[np.ndarray]:
        """For each clip, its frames as float32 [frames, dim], in order."""
        return [self._run_clip(clip, sampling_rate)[0] for clip in _clip_list(clips)]

    __call__ = encode  # type: ignore[assignment]


class AudioClassifier(_AudioPipeline):
    """Clip classification (keyword spotting, sound events): softmax over the logits, labels from the manifest."""

    task = "audio-classify"
    preferred_output = "logits"

    def classify(
        self, clips: Sequence[AudioInput], top_k: int = 5, sampling_rate: int | None = None
    ) -> list[list[Classification]]:
        """For each clip, its `top_k` labels by probability (highest first); `scores` holds every label's."""
        if top_k < 1:
            raise BadInputError(f"top_k must be at least 1, got {top_k}")
        return [
            _ranked(self.package, self._run_clip(clip, sampling_rate), top_k)[0] for clip in _clip_list(clips)
        ]

    __call__ = classify  # type: ignore[assignment]


PIPELINES: dict[str, type[ModelPipeline]] = {
    "embed": TextEmbedding,
    "classify": TextClassifier,
    "image-classify": ImageClassifier,
    "audio-features": AudioEncoder,
    "audio-classify": AudioClassifier,
}


def load(
    path: str | Path,
    providers: str | Sequence[str] | None = None,
    *,
    variant: str = FP32_VARIANT,
    threads: int | None = None,
    strict: bool = False,
    config: ProviderConfig | None = None,
) -> ModelPipeline:
    """The pipeline for the package's task, on a `Runner` over `variant` (GPU options in `config`)."""
    package = ModelPackage.open(path)
    runner = Runner(package.model_path(variant), providers, threads=threads, strict=strict, config=config)
    return pipeline_class(package)(package, runner)


def pipeline_class(package: ModelPackage) -> type[ModelPipeline]:
    """The pipeline `load` builds for `package`: its task's, when the package has what that pipeline needs."""
    pipeline = PIPELINES.get(package.manifest.task, ModelPipeline)
    return pipeline if pipeline.accepts(package) else ModelPipeline
