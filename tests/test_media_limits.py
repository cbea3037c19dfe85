"""Issue 21 rows 5-7 in the library: images and WAVs whose headers declare absurd sizes or rates are refused
from the header, before anything is decoded or resampled (the served and `edge run` sides: test_detect.py,
test_serve_seq2seq.py)."""

from __future__ import annotations

import io
import resource
import struct
import warnings
import wave

import numpy as np
import pytest
from test_detect import _png

from toolkit.errors import BadInputError
from toolkit.preprocess import MAX_IMAGE_PIXELS, open_image, read_wav
from toolkit.speech import load_clip


def _wav(rate: int, seconds: float = 0.01) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(1000)
        out.writeframes(np.zeros(max(1, int(1000 * seconds)), dtype="<i2").tobytes())
    data = bytearray(buffer.getvalue())
    struct.pack_into("<I", data, 24, rate)  # the header's sample rate, whatever `wave` would allow writing
    struct.pack_into("<I", data, 28, (rate * 2) % 2**32)
    return bytes(data)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_a_small_png_declaring_a_huge_image_is_refused_before_decoding() -> None:
    bomb = _png(12000, 12000)
    assert len(bomb) < 64 * 1024
    before = _peak_rss_mb()
    with warnings.catch_warnings(record=True) as logged:
        warnings.simplefilter("always")
        with pytest.raises(BadInputError, match=f"{MAX_IMAGE_PIXELS:,}-pixel limit"):
            open_image(bomb)
    assert _peak_rss_mb() - before < 300
    # 144 M pixels is over Pillow's own warning size: the refusal is our one message, not also Pillow's warning
    assert [str(warning.message) for warning in logged] == []


@pytest.mark.parametrize(("width", "height"), [(1, 20000), (3000, 2)])
def test_degenerate_aspect_ratios_are_refused(width: int, height: int) -> None:
    with pytest.raises(BadInputError, match=f"{width}x{height} pixels, a side over"):
        open_image(_png(width, height, "RGB"))


def test_a_normal_image_still_opens() -> None:
    assert open_image(_png(64, 48, "RGB")).size == (64, 48)


@pytest.mark.parametrize("rate", [0, 1, 999, 384_001, 1_000_003, 4_294_967_291])
def test_wav_rates_outside_the_sane_range_are_refused(rate: int) -> None:
    before = _peak_rss_mb()
    with pytest.raises(BadInputError, match=f"at {rate} Hz, outside the 1000-384000 Hz"):
        read_wav(_wav(rate))
    assert _peak_rss_mb() - before < 300


def test_a_waveform_at_rate_zero_is_refused_not_read_as_the_default() -> None:
    with pytest.raises(BadInputError, match="at 0 Hz"):
        load_clip(np.zeros(1600, dtype=np.float32), 16000, sampling_rate=0)
    assert load_clip(np.zeros(1600, dtype=np.float32), 16000).shape == (1600,)
    waveform, rate = read_wav(_wav(16000))
    assert rate == 16000
    assert waveform.dtype == np.float32
