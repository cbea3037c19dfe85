"""Modality preprocessing and post-processing shared by the tasks: one owner for each step.

Text: `TextTokenizer` (``tokenizers``, truncation to the package's max length, padding to the batch's longest)
and sentence-transformers `pool`ing. Images: `open_image` and `preprocess_image` (Pillow, imported when the
first image is read; resize, centre crop, rescale and normalise as the manifest says). Audio: `read_wav` (the
standard library's ``wave``), `read_clip` (a file, its bytes or a waveform, checked) and `preprocess_audio`. Scores: `softmax`, `l2_normalize`, `label_names` and
`ranked` (top-k `Classification`s), which the pipelines and the server both use.
"""

from __future__ import annotations

import io
import json
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from toolkit.checks import item_list, text_list
from toolkit.errors import BadInputError, BadModelError, first_line
from toolkit.manifest import AudioPreprocessing, ImagePreprocessing, Manifest

if TYPE_CHECKING:
    from PIL import Image as PILImage

__all__ = [
    "LETTERBOX_FILL",
    "MAX_ASPECT_RATIO",
    "MAX_IMAGE_PIXELS",
    "RESIZERS",
    "RUN_COST_ELEMENTS",
    "SAMPLE_RATES",
    "SERIAL_ENCODE_MAX",
    "AudioInput",
    "Classification",
    "ImageInput",
    "TextTokenizer",
    "check_sample_rate",
    "clean_up_tokenization",
    "cleans_up_spaces",
    "clip_list",
    "image_list",
    "l2_normalize",
    "label_names",
    "letterbox_geometry",
    "open_image",
    "padding_groups",
    "pool",
    "preprocess_audio",
    "preprocess_image",
    "ranked",
    "read_clip",
    "read_decoder_tokenizer",
    "read_tokenizer",
    "read_wav",
    "softmax",
]


def read_tokenizer(path: Path) -> Any:
    """The `tokenizers` tokenizer in the package file `path`; a missing or unreadable file is a BadModelError."""
    from tokenizers import Tokenizer  # a few hundred ms; only text packages pay it

    if not path.is_file():
        raise BadModelError(
            f"tokenizer file '{path}' is missing from the package; re-create it with `edge convert`"
        )
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # noqa: BLE001 - tokenizers raises a bare Exception for a file it cannot read
        raise BadModelError(
            f"tokenizer file '{path.name}' is not a tokenizers JSON file ({first_line(exc, 200)}); "
            "re-create the package with `edge convert`"
        ) from None


def read_decoder_tokenizer(path: Path) -> Any:
    """The tokenizer of a model that writes text (`read_tokenizer`) with padding and truncation off, whatever the
    file says: prompts are checked against the model's positions (or cut by the pipeline), never cut silently."""
    tokenizer = read_tokenizer(path)
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


# Up to this many texts (or pairs) are encoded one by one: `encode_batch` hands them to rayon's threads, which
# for a request's worth of short texts costs twice the CPU for the same wall time (32 sentences: 1.06 ms on 1.87
# cores against 0.98 ms on one, 2-core host), CPU that a server's onnxruntime threads are waiting for.
SERIAL_ENCODE_MAX = 64


class TextTokenizer:
    """A `tokenizers` tokenizer set up as the package says: truncation to the model's max length, no fixed padding."""

    def __init__(self, path: Path, max_length: int) -> None:
        self.tokenizer = read_tokenizer(path)
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=max_length)
        self.max_length = max_length
        self.pad_id = _pad_token_id(self.tokenizer, path.parent)
        self.vocab_size = int(self.tokenizer.get_vocab_size(with_added_tokens=True))

    def _encode_all(self, inputs: Sequence[str] | Sequence[tuple[str, str]]) -> list[Any]:
        """`encode_batch(inputs)`, one by one up to `SERIAL_ENCODE_MAX` inputs (the same encodings)."""
        if len(inputs) > SERIAL_ENCODE_MAX:
            return list(self.tokenizer.encode_batch(inputs))
        return [self.tokenizer.encode(x) if isinstance(x, str) else self.tokenizer.encode(*x) for x in inputs]

    def encodings(self, texts: Iterable[str]) -> list[Any]:
        """The `tokenizers` encodings of `texts` (ids, type ids, character offsets, special-token mask)."""
        return self._encode_all(text_list(texts))

    def encode(self, texts: Iterable[str]) -> list[tuple[list[int], list[int]]]:
        """Token ids and type ids for each text, unpadded."""
        return [(e.ids, e.type_ids) for e in self.encodings(texts)]

    def pair_encodings(self, first: str, seconds: Sequence[str]) -> list[Any]:
        """The encodings of (`first`, each of `seconds`) as one sequence pair each (``[CLS] a [SEP] b [SEP]`` for
        BERT), cut longest-first to the max length as transformers' ``truncation=True`` does."""
        return self._encode_all([(first, second) for second in seconds])

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


def _tokenizer_config(folder: Path) -> dict[str, Any]:
    """The package's tokenizer_config.json (empty when it has none, or only a symlink)."""
    config = folder / "tokenizer_config.json"
    if not config.is_file() or config.is_symlink():
        return {}
    try:
        settings = json.loads(config.read_text(encoding="utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise BadModelError(
            f"'{config}' is not valid UTF-8 JSON; re-create the package with `edge convert`"
        ) from None
    return settings if isinstance(settings, dict) else {}


# A run's fixed cost in padded elements (tokens, for text): what onnxruntime spends on a run beyond its rows'
# work (thread hand-offs, kernel dispatch). MiniLM-L6 at 2 threads takes about 2.9 ms + 0.12 ms per token
# (benchmarks/serve_retrieval.py's host): 24 tokens; rounded up, since a busy server pays more per hand-off.
RUN_COST_ELEMENTS = 32


def padding_groups(
    sizes: Sequence[int], rows: Sequence[int] | None = None, max_rows: int | None = None
) -> list[list[int]]:
    """Indices into `sizes` grouped into the runs of least total cost, each run padded to its largest size and
    costing `RUN_COST_ELEMENTS` plus its rows x that size (each index weighs its `rows`, 1 by default; a run
    holds at most `max_rows` rows unless one index alone holds more): padding is paid where it costs less
    than another run, and a short or long straggler is not left to a run of its own. Exact: the best cuts of
    the size-sorted order, by dynamic programming."""
    weights = rows if rows is not None else [1] * len(sizes)
    order = sorted(range(len(sizes)), key=sizes.__getitem__)
    best = [0] + [math.inf] * len(order)  # best[k]: the least cost of the first k sorted indices
    start = [0] * (len(order) + 1)  # where the last run of that best begins
    for end in range(1, len(order) + 1):
        largest, count = sizes[order[end - 1]], 0
        for begin in range(end - 1, -1, -1):
            count += weights[order[begin]]
            if max_rows is not None and count > max_rows and begin < end - 1:
                break
            cost = best[begin] + RUN_COST_ELEMENTS + count * largest
            if cost <= best[end]:
                best[end], start[end] = cost, begin
    groups: list[list[int]] = []
    end = len(order)
    while end:
        groups.append(order[start[end] : end])
        end = start[end]
    return groups[::-1]


def _pad_token_id(tokenizer: Any, folder: Path) -> int:
    padding = tokenizer.padding
    if padding and "pad_id" in padding:
        return int(padding["pad_id"])
    token = _tokenizer_config(folder).get("pad_token")
    if isinstance(token, dict):
        token = token.get("content")
    if isinstance(token, str) and tokenizer.token_to_id(token) is not None:
        return int(tokenizer.token_to_id(token))
    return 0


def cleans_up_spaces(folder: Path) -> bool:
    """Whether the package's tokenizer config sets ``clean_up_tokenization_spaces`` (transformers' default: no)."""
    return _tokenizer_config(folder).get("clean_up_tokenization_spaces") is True


def clean_up_tokenization(text: str) -> str:
    """transformers' ``clean_up_tokenization``: no space before ``.?!,`` and English contractions."""
    for spaced, joined in (
        (" .", "."),
        (" ?", "?"),
        (" !", "!"),
        (" ,", ","),
        (" ' ", "'"),
        (" n't", "n't"),
        (" 'm", "'m"),
        (" 's", "'s"),
        (" 've", "'ve"),
        (" 're", "'re"),
    ):
        text = text.replace(spaced, joined)
    return text


def pool(hidden: np.ndarray, mask: np.ndarray, mode: str | None) -> np.ndarray:
    """Sentence-transformers pooling of token embeddings [batch, seq, dim] under an attention mask."""
    if mode is None:
        return hidden
    if mode == "cls":
        return hidden[:, 0]
    weights = mask[..., None].astype(hidden.dtype)
    if mode == "mean":
        return np.asarray((hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None))
    if mode == "max":
        return np.asarray(np.where(weights > 0, hidden, np.finfo(hidden.dtype).min).max(axis=1))
    if mode == "mean_sqrt_len":
        return np.asarray((hidden * weights).sum(axis=1) / np.sqrt(np.clip(weights.sum(axis=1), 1e-9, None)))
    raise BadModelError(f"pooling mode '{mode}' is not supported; use mean, cls, max or mean_sqrt_len")


# --- images ---------------------------------------------------------------------------------------------

ImageInput = (
    str | Path | bytes | np.ndarray | Any
)  # a file path, encoded bytes, an RGB uint8 array [H, W, 3], a PIL image


def _pil() -> Any:
    try:
        from PIL import Image
    except ImportError:
        raise BadInputError(
            "image pipelines decode images with Pillow, which is not installed; pip install pillow"
        ) from None
    return Image


# An encoded image is checked from its header before it is decoded: a 17 KB 1-bit PNG can declare
# 12000x12000 pixels (over 400 MB as RGB), which Pillow's own bomb check (89 M pixels) lets through.
MAX_IMAGE_PIXELS = 40_000_000
# Resizing keeps the aspect ratio: a 1x20000 image scaled to a 224-pixel short side would be 4.5 M pixels wide.
MAX_ASPECT_RATIO = 50


def _decode(opened: PILImage.Image, where: str, max_pixels: int) -> PILImage.Image:
    """`opened` (header read, pixels not yet) decoded as RGB, after its size is checked."""
    width, height = opened.size
    if width < 1 or height < 1 or width * height > max_pixels:
        raise BadInputError(
            f"{where} is {width}x{height} pixels, over the {max_pixels:,}-pixel limit (or empty); "
            "scale it down before sending it"
        )
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise BadInputError(
            f"{where} is {width}x{height} pixels, a side over {MAX_ASPECT_RATIO} times the other; crop it to the "
            "part to look at"
        )
    return opened.convert("RGB")


@contextmanager
def _opened(source: io.BytesIO | Path) -> Iterator[PILImage.Image]:
    """Pillow's lazy open of `source`, without its DecompressionBombWarning: `_decode` checks the size against
    our own (lower) limit, so the warning would only log a second, misleading message for a refused image."""
    Image = _pil()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        opened = Image.open(source)
    with opened:
        yield opened


def open_image(
    image: ImageInput, max_pixels: int = MAX_IMAGE_PIXELS, name: str = "the image"
) -> PILImage.Image:
    """An RGB PIL image from a path, encoded bytes (`name` in errors), a uint8 array [H, W, 3] (or [H, W]) or a PIL
    image; an encoded image declaring over `max_pixels` pixels is refused from its header; bad input is a
    BadInputError."""
    Image = _pil()
    if isinstance(image, Image.Image):  # an RGB image as it is: a copy of a large one would double its memory
        rgb: PILImage.Image = image if image.mode == "RGB" else image.convert("RGB")
        return rgb
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
        from_array: PILImage.Image = Image.fromarray(image).convert("RGB")
        return from_array
    if isinstance(image, bytes):  # an encoded file's bytes (the server's image pipeline models)
        try:
            with _opened(io.BytesIO(image)) as opened:
                return _decode(opened, name, max_pixels)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise BadInputError(
                f"image bytes could not be decoded ({first_line(exc)}); send a JPEG, PNG, BMP, GIF, TIFF or WebP file"
            ) from None
    if not isinstance(image, str | Path):
        raise BadInputError(
            f"an image must be a file path, a uint8 array, a PIL image or encoded bytes, got {type(image).__name__}"
        )
    path = Path(image)
    if not path.is_file():
        problem = "is not a file" if path.exists() else "does not exist"
        raise BadInputError(f"image '{path}' {problem}; pass the path of a JPEG, PNG or other image file")
    try:
        with _opened(path) as opened:
            return _decode(opened, f"image '{path}'", max_pixels)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise BadInputError(
            f"image '{path}' could not be decoded ({first_line(exc)}); pass a JPEG, PNG, BMP, GIF, TIFF or WebP file"
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


def _shortest_longest_edge_size(width: int, height: int, size: tuple[int, int]) -> tuple[int, int]:
    # size = (shortest, longest): transformers' DETR/YOLOS get_size_with_aspect_ratio
    shortest, longest = size
    raw = None
    low, high = float(min(height, width)), float(max(height, width))
    if high / low * shortest > longest:
        raw = longest * low / high
        shortest = round(raw)
    if (height <= width and height == shortest) or (width <= height and width == shortest):
        return height, width
    if width < height:
        return (int(raw * height / width) if raw is not None else int(shortest * height / width)), shortest
    return shortest, (int(raw * width / height) if raw is not None else int(shortest * width / height))


def letterbox_geometry(width: int, height: int, size: tuple[int, int]) -> tuple[float, int, int, int, int]:
    """Ultralytics' letterbox into `size` (height, width): (gain, resized width, resized height, left, top pad)."""
    gain = min(size[0] / height, size[1] / width)
    new_w, new_h = round(width * gain), round(height * gain)
    left, top = round((size[1] - new_w) / 2 - 0.1), round((size[0] - new_h) / 2 - 0.1)
    return gain, new_w, new_h, left, top


def _letterbox_size(width: int, height: int, size: tuple[int, int]) -> tuple[int, int]:
    _, new_w, new_h, _, _ = letterbox_geometry(width, height, size)
    return new_h, new_w


LETTERBOX_FILL = 114  # the grey Ultralytics pads letterboxed images with

# manifest `resize` -> (width, height, size) -> the (height, width) to resize to; ``letterbox`` then pads to `size`
RESIZERS: dict[str, Callable[[int, int, tuple[int, int]], tuple[int, int]]] = {
    "exact": _exact_size,
    "shortest_edge": _shortest_edge_size,
    "shortest_longest_edge": _shortest_longest_edge_size,
    "letterbox": _letterbox_size,
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
    original = rgb.size
    height, width = RESIZERS[pre.resize](rgb.width, rgb.height, pre.size)
    if (width, height) != rgb.size:
        rgb = rgb.resize(
            (width, height), resample=Image.Resampling(_RESAMPLE[pre.resample]), reducing_gap=None
        )
    pixels = np.asarray(rgb)
    if pre.resize == "letterbox":
        _, _, _, left, top = letterbox_geometry(original[0], original[1], pre.size)
        canvas = np.full((*pre.size, 3), LETTERBOX_FILL, dtype=np.uint8)
        canvas[top : top + pixels.shape[0], left : left + pixels.shape[1]] = pixels
        pixels = canvas
    if pre.crop_size is not None:
        pixels = _centre_crop(pixels, pre.crop_size)
    # rescale in float64 then normalise in float32, in the order transformers' image processors do
    scaled = (pixels.astype(np.float64) * pre.rescale_factor).astype(np.float32)
    mean = np.asarray(pre.mean, dtype=np.float32)
    std = np.asarray(pre.std, dtype=np.float32)
    return np.ascontiguousarray(((scaled - mean) / std).transpose(2, 0, 1), dtype=np.float32)


def image_list(images: Iterable[ImageInput]) -> Sequence[ImageInput]:
    """`images` as a list, checked up front (a single image is a BadInputError saying to wrap it)."""
    return item_list(images, "images", (str, Path, np.ndarray))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities along the last axis, computed in float64."""
    values = logits.astype(np.float64)
    shifted = np.exp(values - values.max(axis=-1, keepdims=True))
    return np.asarray(shifted / shifted.sum(axis=-1, keepdims=True))


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero)."""
    return np.asarray(vectors / np.clip(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12, None))


def label_names(manifest: Manifest, count: int) -> tuple[str, ...]:
    """The manifest's labels, or ``LABEL_0`` ... ``LABEL_{count-1}`` when it has none."""
    return manifest.labels or tuple(f"LABEL_{i}" for i in range(count))


@dataclass(frozen=True)
class Classification:
    """A label and its probability, with every label's probability in `scores`."""

    label: str
    score: float
    scores: Mapping[str, float] = field(default_factory=dict)


def ranked(manifest: Manifest, logits: np.ndarray, top_k: int) -> list[list[Classification]]:
    """Per row of logits [N, classes], the `top_k` labels by probability, each holding every label's score."""
    probs = softmax(logits)
    labels = label_names(manifest, probs.shape[-1])
    result = []
    for row in probs:
        scores = dict(zip(labels, map(float, row), strict=True))
        order = np.argsort(-row, kind="stable")[:top_k]
        result.append([Classification(labels[i], float(row[i]), scores) for i in order])
    return result


# --- audio ----------------------------------------------------------------------------------------------

AudioInput = str | Path | bytes | np.ndarray
"""A clip: a PCM WAV file's path or its bytes, or a mono float waveform [samples] in [-1, 1]."""

_PCM_FULL_SCALE = {2: 2.0**15, 3: 2.0**23, 4: 2.0**31}
# WAV format tags `wave` refuses, by what they hold (the fix is the same: convert to PCM)
_WAV_FORMATS = {
    3: "32/64-bit float samples",
    6: "A-law samples",
    7: "mu-law samples",
    0xFFFE: "an extensible header",
}


# Sample rates a clip may declare: below 1 kHz nothing is speech, above 384 kHz no audio interface records; a
# rate outside makes resampling allocate (or loop) in proportion to a number the client chose.
SAMPLE_RATES = (1_000, 384_000)


def check_sample_rate(rate: Any, where: str) -> int:
    """`rate` when it is an integer within `SAMPLE_RATES`, else a BadInputError naming `where`."""
    low, high = SAMPLE_RATES
    if isinstance(rate, bool) or not isinstance(rate, int | np.integer) or not low <= rate <= high:
        raise BadInputError(
            f"{where} is at {rate} Hz, outside the {low}-{high} Hz this toolkit reads; resample it, "
            "e.g. ffmpeg -i IN -ar 16000 OUT.wav"
        )
    return int(rate)


def read_wav(source: str | Path | bytes, name: str | None = None) -> tuple[np.ndarray, int]:
    """A PCM WAV file (8, 16, 24 or 32 bit; a path or the file's bytes) as a mono float32 waveform in [-1, 1]
    (channels averaged) and its rate; `name` is what error messages call it."""
    import io
    import wave  # the standard library's reader: no audio dependency for the runtime

    if isinstance(source, bytes):
        where = name or f"audio data ({len(source)} bytes)"
        stream: io.BytesIO | str = io.BytesIO(source)
    else:
        path = Path(source)
        where = name or f"audio file '{path}'"
        if not path.is_file():
            problem = "is not a file" if path.exists() else "does not exist"
            raise BadInputError(f"{where} {problem}; pass the path of a PCM WAV file")
        stream = str(path)
    try:
        with wave.open(stream, "rb") as wav:
            width, channels, rate = wav.getsampwidth(), wav.getnchannels(), wav.getframerate()
            check_sample_rate(rate, where)  # before reading the frames
            frames = wav.readframes(wav.getnframes())
    # `wave` raises any of these on a malformed or non-PCM header (a bare RuntimeError on some)
    except (wave.Error, EOFError, RuntimeError, ValueError) as exc:
        reason = str(exc) or "malformed header"
        if reason.startswith("unknown format: "):
            tag = reason.rsplit(" ", 1)[-1]
            reason = f"it holds {_WAV_FORMATS.get(int(tag), f'format {tag}') if tag.isdigit() else reason}"
        raise BadInputError(
            f"{where} is not a PCM WAV file ({reason}); convert it, e.g. ffmpeg -i IN -ac 1 -c:a pcm_s16le OUT.wav"
        ) from None
    if width not in (1, *_PCM_FULL_SCALE) or channels < 1:
        raise BadInputError(
            f"{where} has {width * 8}-bit samples in {channels} channels; send 8, 16, 24 or 32-bit PCM, "
            "e.g. ffmpeg -i IN -ac 1 -c:a pcm_s16le OUT.wav"
        )
    frame = width * channels
    raw = np.frombuffer(
        frames[: len(frames) // frame * frame], dtype=np.uint8
    )  # a truncated last frame dropped
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


def read_clip(
    clip: AudioInput, default_rate: int, sampling_rate: int | None = None
) -> tuple[np.ndarray, int, str]:
    """A clip's mono waveform, its rate and what error messages call it: a WAV file or its bytes (PCM at their
    own rate, channels averaged) or a 1-D float waveform at `sampling_rate` (default `default_rate`); a clip of
    another kind or with no samples is a BadInputError."""
    if isinstance(clip, str | Path | bytes):
        waveform, rate = read_wav(clip)
        where = f"audio file '{clip}'" if not isinstance(clip, bytes) else "audio data"
    elif isinstance(clip, np.ndarray):
        if clip.ndim != 1 or clip.dtype.kind != "f":
            raise BadInputError(
                f"a waveform must be a 1-D float array of samples, got {clip.dtype} {list(clip.shape)}; "
                "average the channels (.mean(axis=1)) and convert with .astype(np.float32)"
            )
        given = default_rate if sampling_rate is None else sampling_rate
        waveform, rate, where = clip, check_sample_rate(given, "waveform"), "waveform"
    else:
        raise BadInputError(
            f"a clip must be a WAV file path, its bytes or a float waveform array, got {type(clip).__name__}"
        )
    if waveform.size == 0:
        raise BadInputError(f"{where} holds no samples (a zero-length clip); pass some audio")
    return waveform, rate, where


def preprocess_audio(
    clip: AudioInput, pre: AudioPreprocessing, sampling_rate: int | None = None
) -> np.ndarray:
    """A clip as the model takes it: float32 [samples] at the package's rate, normalised as its feature extractor.

    A waveform array is taken to be at `sampling_rate` (default: the package's); a WAV file says its own rate.
    Nothing is resampled: a clip at another rate is a BadInputError naming both rates.
    """
    waveform, rate, where = read_clip(clip, pre.sampling_rate, sampling_rate)
    if rate != pre.sampling_rate:
        raise BadInputError(
            f"{where} is sampled at {rate} Hz but the model takes {pre.sampling_rate} Hz; resample it first "
            f"(e.g. ffmpeg -i IN -ar {pre.sampling_rate} OUT.wav)"
        )
    waveform = waveform.astype(np.float32)
    if pre.normalize:
        # in float32 and in this order, as transformers' Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm
        waveform = (waveform - waveform.mean()) / np.sqrt(waveform.var() + 1e-7)
    return np.ascontiguousarray(waveform, dtype=np.float32)


def clip_list(clips: Iterable[AudioInput]) -> Sequence[AudioInput]:
    """`clips` as a list, checked up front (a single clip is a BadInputError saying to wrap it)."""
    if isinstance(clips, np.ndarray) and clips.ndim == 1:
        raise BadInputError("clips must be a list; wrap a single clip as [clip]")
    return item_list(clips, "clips", (str, Path, bytes))
