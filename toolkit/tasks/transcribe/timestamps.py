"""Whisper's timestamp tokens, as transformers 4.57 handles them.

- `TimestampRule`: the decoding rule (transformers' ``WhisperTimeStampLogitsProcessor``): ``<|notimestamps|>``
  never; timestamps in pairs (after a pair, text; after a lone timestamp that follows text, a timestamp or eos,
  nothing below eos); timestamps never decrease (a closing timestamp may repeat the opening one, a new one may
  not); the first new token is a timestamp no later than ``max_initial_timestamp_index``; and when the timestamps'
  summed probability beats every single text token's, a timestamp. It computes its own log-softmax, so it chooses
  the same from raw logits as from log-probabilities.
- `window_tokens`: what Whisper's ``generate(..., return_timestamps=True)`` keeps of one decode of a 30 s window
  and where it seeks next (``_retrieve_segment``): the decode up to its last timestamp pair, unless it ended on a
  lone timestamp (then all of it and the window is done).
- `merge_windows`: the ASR pipeline's ``_decode_asr`` over strided windows: text tokens of overlapping windows
  merged by their longest common sequence (``_find_longest_common_sequence``), timestamps shifted by each
  window's offset, timestamps inside a stride skipped, pieces closed at their end timestamp.

Token ids only: the caller decodes the text (`toolkit.tasks.transcribe`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "MergedPiece",
    "TimestampRule",
    "WindowOutput",
    "longest_common_sequence",
    "merge_windows",
    "window_tokens",
]

_NEG = np.float32(-np.inf)


@dataclass(frozen=True)
class TimestampRule:
    """Whisper's timestamp decoding rule for rows whose new tokens start at `begin_index`; the timestamp tokens
    are the ids from ``no_timestamps_id + 1`` up (the vocabulary's top)."""

    no_timestamps_id: int
    eos_id: int
    begin_index: int
    max_initial_index: int | None = None

    @property
    def timestamp_begin(self) -> int:
        """The id of ``<|0.00|>``."""
        return self.no_timestamps_id + 1

    def __call__(self, ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """`scores` [rows, vocab] (logits or log-probabilities) with the rule applied (a new float32 array)."""
        out = np.array(scores, dtype=np.float32, copy=True)
        begin = self.timestamp_begin
        out[:, self.no_timestamps_id] = _NEG
        for row in range(ids.shape[0]):
            seq = ids[row, self.begin_index :]
            last_was_timestamp = seq.size >= 1 and seq[-1] >= begin
            penultimate_was_timestamp = seq.size < 2 or seq[-2] >= begin
            if last_was_timestamp:
                if penultimate_was_timestamp:  # a pair just closed: text next
                    out[row, begin:] = _NEG
                else:  # a lone timestamp after text: a timestamp or eos
                    out[row, : self.eos_id] = _NEG
            stamps = seq[seq >= begin]
            if stamps.size:
                # the closing timestamp may repeat the opening one; a new one must be later than the last
                last = (
                    int(stamps[-1])
                    if last_was_timestamp and not penultimate_was_timestamp
                    else int(stamps[-1]) + 1
                )
                out[row, begin:last] = _NEG
        if ids.shape[1] == self.begin_index:
            out[:, :begin] = _NEG
            if self.max_initial_index is not None:
                out[:, begin + self.max_initial_index + 1 :] = _NEG
        logprobs = _log_softmax(out)
        for row in range(out.shape[0]):
            if _logsumexp(logprobs[row, begin:]) > logprobs[row, :begin].max():
                out[row, :begin] = _NEG
        return out


def _log_softmax(x: np.ndarray) -> np.ndarray:
    top = x.max(axis=-1, keepdims=True)
    shifted = x - np.where(np.isfinite(top), top, np.float32(0))
    return np.asarray(shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True)), dtype=np.float32)


def _logsumexp(x: np.ndarray) -> np.float32:
    top = x.max()
    if not np.isfinite(top):
        return np.float32(top)
    return np.float32(top + np.log(np.exp(x - top).sum(dtype=np.float32)))


def window_tokens(
    new_ids: Sequence[int], timestamp_begin: int, frames: int, frames_per_token: int
) -> tuple[list[int], int]:
    """Of one decode (new tokens, eos removed) over a window slice of `frames` mel frames: the tokens Whisper's
    ``generate`` keeps and the frames to seek forward (`frames_per_token` frames per timestamp step)."""
    ids = list(new_ids)
    stamp = [t >= timestamp_begin for t in ids]
    pairs = [i + 1 for i in range(len(ids) - 1) if stamp[i] and stamp[i + 1]]
    if not pairs:
        return ids, frames
    if stamp[-2:] == [False, True]:  # ended on a lone timestamp: nothing more to say in this window
        return ids, frames
    # otherwise the decode after the last pair is cut off mid-speech: keep up to the pair, seek to its first token
    return ids[: pairs[-1] + 1], (ids[pairs[-1] - 1] - timestamp_begin) * frames_per_token


def longest_common_sequence(sequences: Sequence[Sequence[int]]) -> list[int]:
    """Token sequences of overlapping windows joined where each overlaps the next best (transformers'
    ``tokenization_whisper._find_longest_common_sequence``: the best-matching alignment of at least two equal
    tokens, split at the middle of the overlap)."""
    left = list(sequences[0])
    total: list[int] = []
    for right in sequences[1:]:
        left_length, right_length = len(left), len(right)
        best = 0.0
        cut = (left_length, left_length, 0, 0)
        for i in range(1, left_length + right_length):
            left_start, left_stop = max(0, left_length - i), min(left_length, left_length + right_length - i)
            right_start, right_stop = max(0, i - left_length), min(right_length, i)
            matches = int(
                np.sum(np.array(left[left_start:left_stop]) == np.array(list(right[right_start:right_stop])))
            )
            matching = matches / i + i / 10000.0  # the epsilon favours long perfect matches
            if matches > 1 and matching > best:
                best = matching
                cut = (left_start, left_stop, right_start, right_stop)
        left_start, left_stop, right_start, right_stop = cut
        total.extend(left[: (left_stop + left_start) // 2])
        left = list(right[(right_stop + right_start) // 2 :])
    total.extend(left)
    return total


@dataclass(frozen=True)
class WindowOutput:
    """One window's decoded tokens (what Whisper's ``generate`` returns: no prompt, no eos) and its stride in
    seconds: its length and the overlaps shared with the window before and after."""

    tokens: tuple[int, ...]
    seconds: float
    stride_left: float
    stride_right: float


@dataclass(frozen=True)
class MergedPiece:
    """A piece of the transcript: its text tokens, language code and (with timestamps) start and end seconds,
    None where the model gave none."""

    tokens: tuple[int, ...]
    language: str | None
    start: float | None
    end: float | None


def merge_windows(
    windows: Sequence[WindowOutput],
    *,
    timestamps: bool,
    timestamp_begin: int,
    special_ids: frozenset[int],
    languages: dict[int, str],
    time_precision: float = 0.02,
    segment_size: int = 1500,
) -> list[MergedPiece]:
    """transformers' ``_decode_asr`` (segment timestamps, not words) over `windows`: `special_ids` are skipped,
    `languages` (token id -> code) name each piece's language, timestamp ids from `timestamp_begin` place the
    pieces (read as timestamps even where a tokenizer marks them special). Without `timestamps` a change of
    language token starts a new piece."""
    pieces: list[MergedPiece] = []
    last_language: str | None = None
    language: str | None = None
    start: float | None = None
    end: float | None = None
    time_offset = 0.0
    previous: list[list[int]] = []
    current: list[int] = []
    skip = False

    def close() -> None:
        nonlocal previous, current, language, start, end
        pieces.append(MergedPiece(tuple(longest_common_sequence(previous)), language, start, end))
        previous, current = [], []
        language, start, end = last_language, None, None

    for window in windows:
        token_ids = list(window.tokens)
        last_timestamp: int | None = None
        first_timestamp: float = timestamp_begin
        cur_max_timestamp = 0.0
        prev_segments_len = 0.0
        penultimate_timestamp = 0.0
        time_offset -= window.stride_left
        right_stride_start = window.seconds - window.stride_right
        if window.stride_left:
            first_timestamp = window.stride_left / time_precision + timestamp_begin
        if window.stride_right:
            for token in reversed(token_ids):
                if token >= timestamp_begin:
                    # several timestamps may fall in the right stride; the last one is always skipped
                    if (
                        last_timestamp is not None
                        and (token - timestamp_begin) * time_precision < right_stride_start
                    ):
                        break
                    last_timestamp = token
        current = []
        for i, token in enumerate(token_ids):
            if token >= timestamp_begin:
                stamp = float((token - timestamp_begin) * time_precision)
                if stamp < cur_max_timestamp:  # Whisper's generate restarted further into the window
                    single_ending = i >= 2 and not (
                        token_ids[i - 1] >= timestamp_begin and token_ids[i - 2] >= timestamp_begin
                    )
                    if single_ending:
                        prev_segments_len += time_precision * segment_size
                    else:
                        cur_max_timestamp = penultimate_timestamp
                        prev_segments_len += penultimate_timestamp
                penultimate_timestamp = cur_max_timestamp
                cur_max_timestamp = stamp
                time = round((token - timestamp_begin) * time_precision + time_offset + prev_segments_len, 2)
                if last_timestamp and token >= last_timestamp:
                    skip = True  # inside the right stride: resolved by the next window (and its pair too)
                elif skip or (previous and token < first_timestamp):
                    skip = False
                elif start is None:
                    start = time
                elif time != start:  # (a repeat of the start is a model glitch: it stays a start)
                    end = time
                    previous.append(current)
                    close()
            elif token in special_ids:
                code = languages.get(token)
                if code is not None:
                    if last_language and code != last_language and not timestamps:
                        previous.append(current)
                        close()
                    language = code
                    last_language = code
            else:
                current.append(token)
        time_offset += window.seconds - window.stride_right
        if current:
            previous.append(current)
        elif not any(previous):
            language, start, end = last_language, None, None
            previous, current = [], []
    if previous:
        close()
    return pieces
