"""Whisper's front end in numpy: clips read and resampled (`load_clip`), cut into overlapping 30 s windows
(`windows`), and each window's log-mel spectrogram (`log_mel`), equal to transformers' `WhisperFeatureExtractor`.

Resampling is scipy's polyphase filter (`scipy.signal.resample_poly`, the ``speech`` extra), imported only when a
clip is not at the model's rate.

The clip is zero-padded (or cut) to `chunk_length` seconds, framed with a periodic Hann window (`n_fft`, `hop`,
centred with reflect padding), its power spectrum projected on a Slaney-normalised mel filter bank (0 to 8 kHz),
``log10`` of it floored at 1e-10, clamped to 8 below its maximum and scaled as ``(x + 4) / 4``; the last frame is
dropped, as Whisper does.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from math import gcd

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from toolkit.errors import BadInputError
from toolkit.preprocess import AudioInput, read_clip

__all__ = ["LogMelSpec", "Window", "load_clip", "log_mel", "mel_filters", "resample", "windows"]


@dataclass(frozen=True)
class LogMelSpec:
    """Whisper's front-end settings (its ``preprocessor_config.json``)."""

    n_mels: int = 80
    sampling_rate: int = 16000
    n_fft: int = 400
    hop_length: int = 160
    chunk_length: int = 30

    @property
    def n_samples(self) -> int:
        """Samples in one chunk."""
        return self.chunk_length * self.sampling_rate

    @property
    def frames(self) -> int:
        """Frames in one chunk's spectrogram."""
        return self.n_samples // self.hop_length


def _hz_to_mel(freq: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above."""
    mels = 3.0 * freq / 200.0
    log_region = freq >= 1000.0
    logstep = 27.0 / np.log(6.4)
    return np.where(log_region, 15.0 + np.log(np.maximum(freq, 1e-10) / 1000.0) * logstep, mels)


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    freq = 200.0 * mels / 3.0
    logstep = np.log(6.4) / 27.0
    return np.where(mels >= 15.0, 1000.0 * np.exp(logstep * (mels - 15.0)), freq)


@cache
def mel_filters(n_mels: int, n_fft: int, sampling_rate: int) -> np.ndarray:
    """The Slaney-normalised triangular mel filter bank [n_fft // 2 + 1, n_mels] over 0 to 8 kHz."""
    fft_freqs = np.linspace(0, sampling_rate // 2, 1 + n_fft // 2)
    mel_points = np.linspace(_hz_to_mel(np.array(0.0)), _hz_to_mel(np.array(8000.0)), n_mels + 2)
    filter_freqs = _mel_to_hz(mel_points)
    diff = np.diff(filter_freqs)
    slopes = filter_freqs[None, :] - fft_freqs[:, None]
    down = -slopes[:, :-2] / diff[:-1]
    up = slopes[:, 2:] / diff[1:]
    bank = np.maximum(np.zeros(1), np.minimum(down, up))
    return np.asarray(bank * (2.0 / (filter_freqs[2 : n_mels + 2] - filter_freqs[:n_mels]))[None, :])


@cache
def _sparse_filters(n_mels: int, n_fft: int, sampling_rate: int) -> tuple[np.ndarray, ...]:
    """The mel filter bank's nonzeros: FFT bin and weight of each, filter by filter, the filters that have any,
    and where each of those starts."""
    bank = mel_filters(n_mels, n_fft, sampling_rate)
    bins = [np.flatnonzero(bank[:, m]) for m in range(n_mels)]
    filled = [m for m in range(n_mels) if bins[m].size]
    rows = np.concatenate([bins[m] for m in filled])
    weights = np.concatenate([bank[bins[m], m] for m in filled])
    starts = np.cumsum([0] + [bins[m].size for m in filled[:-1]])
    return rows, weights, np.asarray(filled), starts


def log_mel(waveform: np.ndarray, spec: LogMelSpec) -> np.ndarray:
    """One chunk's log-mel features float32 [n_mels, frames] of a mono float waveform at `spec.sampling_rate`."""
    clip = np.asarray(waveform, dtype=np.float64)[: spec.n_samples]
    half = spec.n_fft // 2
    count = spec.n_samples // spec.hop_length + 1
    # frames past the clip's last sample see only zero padding and have zero power: skip their FFTs (a 10 s
    # clip fills a third of the 30 s window); a clip reaching the end reflects back into the last frames
    audible = count
    if clip.size < spec.n_samples - half:
        nonzero = np.flatnonzero(clip)
        audible = min(count, (int(nonzero[-1]) + half) // spec.hop_length + 1) if nonzero.size else 0
    samples = np.zeros(spec.n_samples, dtype=np.float64)
    samples[: clip.size] = clip
    padded = np.pad(samples, (half, half), mode="reflect")
    frames = sliding_window_view(padded, spec.n_fft)[: audible * spec.hop_length : spec.hop_length]
    window = np.hanning(spec.n_fft + 1)[:-1]
    spectrum = np.fft.rfft(frames * window, n=spec.n_fft, axis=-1)
    power = spectrum.real**2 + spectrum.imag**2
    # the filter bank is sparse (each FFT bin feeds at most two filters): gather and sum instead of a matmul,
    # which would also wake OpenBLAS's threads, and they spin on the cores the encoder runs on next
    rows, weights, filled, starts = _sparse_filters(spec.n_mels, spec.n_fft, spec.sampling_rate)
    mel = np.zeros((count, spec.n_mels))
    mel[:audible, filled] = np.add.reduceat(power[:, rows] * weights, starts, axis=1)
    log_spec = np.log10(np.maximum(mel, 1e-10)).T[:, :-1]
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return np.asarray((log_spec + 4.0) / 4.0, dtype=np.float32)


def resample(waveform: np.ndarray, rate: int, target: int) -> np.ndarray:
    """`waveform` at `rate` Hz resampled to `target` Hz (scipy's polyphase resampler), float32."""
    if rate == target:
        return np.asarray(waveform, dtype=np.float32)
    try:
        from scipy.signal import resample_poly
    except ImportError:
        raise BadInputError(
            f"the clip is sampled at {rate} Hz and the model takes {target} Hz; resampling needs scipy: "
            "pip install 'edge-toolkit[speech]'"
        ) from None
    common = gcd(rate, target)
    return np.asarray(resample_poly(waveform, target // common, rate // common), dtype=np.float32)


def load_clip(clip: AudioInput, rate: int, sampling_rate: int | None = None) -> np.ndarray:
    """A WAV file or its bytes (PCM at any rate, channels averaged) or a mono float waveform (at `sampling_rate`, default
    `rate`) as float32 at `rate` Hz; an empty clip is a BadInputError."""
    waveform, source_rate, _ = read_clip(clip, rate, sampling_rate)
    return resample(waveform, source_rate, rate)


@dataclass(frozen=True)
class Window:
    """One window of a clip for the model: its samples and how many of them it shares with the window before
    (`stride_left`) and after (`stride_right`)."""

    samples: np.ndarray
    stride_left: int
    stride_right: int


def windows(waveform: np.ndarray, spec: LogMelSpec, stride_s: float | None = None) -> list[Window]:
    """The waveform in `spec.chunk_length`-second windows overlapping by `stride_s` seconds on each side (default
    a sixth of the window, 5 s of 30: transformers' ASR pipeline with ``chunk_length_s``, its ``chunk_iter``); a
    clip no longer than one window is one window."""
    stride_s = spec.chunk_length / 6 if stride_s is None else stride_s
    size = spec.n_samples
    valid = (
        isinstance(stride_s, int | float)
        and not isinstance(stride_s, bool)
        and 0 <= stride_s < spec.chunk_length
    )
    stride = round(stride_s * spec.sampling_rate) if valid else size
    if 2 * stride >= size:
        raise BadInputError(
            f"stride {stride_s!r} s: windows of {spec.chunk_length} s need a stride of at least 0 and under "
            f"{spec.chunk_length / 2:g} s on each side; pass a smaller stride (default {spec.chunk_length / 6:g})"
        )
    out = []
    for start in range(0, waveform.size, size - 2 * stride):
        piece = waveform[start : start + size]
        last = start + size >= waveform.size
        left = 0 if start == 0 else stride
        if piece.size > left:
            out.append(Window(piece, left, 0 if last else stride))
        if last:
            break
    return out
