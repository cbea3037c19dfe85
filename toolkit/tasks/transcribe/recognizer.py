"""``transcribe``: speech recognition with Whisper: `SpeechRecognizer.transcribe(clips, ...)`.

Clips (WAV at any rate, or float waveforms) are resampled to 16 kHz and cut into 30 s windows that overlap by
`stride_s` seconds on each side (default 5 s, transformers' ASR pipeline with ``chunk_length_s=30``); each window
becomes log-mel features (`toolkit.speech`), is encoded, and decoded from Whisper's prompt
``<|startoftranscript|> <|lang|> <|task|> [<|notimestamps|>]``. Without a language each window's first decoder
step picks the most likely language token. The windows are merged as the pipeline's ``_decode_asr`` does
(`timestamps.merge_windows`): text tokens by their longest common sequence in the overlaps.

A window is decoded as Whisper's ``generate`` does, with or without timestamps: when a decode stops after a
timestamp pair without a closing lone timestamp, the tail is dropped and decoding resumes from that timestamp's
frame. With ``timestamps=True`` the prompt leaves out ``<|notimestamps|>``, Whisper's timestamp rule constrains
decoding (`TimestampRule`, handed to the engine as the decode's task rule), and the timestamps split the text into segments (seconds from the clip's start).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from toolkit.decoding.encoder_decoder import DecodingRules
from toolkit.errors import BadInputError, BadModelError
from toolkit.manifest import OutputCheck
from toolkit.preprocess import (
    AudioInput,
    clean_up_tokenization,
    cleans_up_spaces,
    clip_list,
    read_decoder_tokenizer,
    read_wav,
)
from toolkit.speech import LogMelSpec, load_clip, log_mel, windows
from toolkit.tasks.accuracy import word_error_rate
from toolkit.tasks.base import (
    DecodeCall,
    DecodePlan,
    DecodingFace,
    Feeds,
    ServedTensor,
    bytes_array,
    flag_parameter,
    string_parameter,
    token_id_rows,
)
from toolkit.tasks.encoder_decoder import Seq2SeqOutput, Seq2SeqPipeline, Seq2SeqTask
from toolkit.tasks.modality import PURPOSE_SEEDS, AudioModality, synthetic_waveform
from toolkit.tasks.transcribe.timestamps import TimestampRule, WindowOutput, merge_windows, window_tokens

if TYPE_CHECKING:
    from tokenizers import Tokenizer

__all__ = [
    "RealTimeFactor",
    "Segment",
    "SpeechRecognizer",
    "TranscribeTask",
    "Transcript",
    "real_time_factor",
]

TIME_PRECISION = 0.02  # seconds per timestamp token (Whisper: a 30 s window over 1500 encoder positions)


@dataclass(frozen=True)
class Segment:
    """A piece of the transcript between two timestamps (seconds from the clip's start); None where the model
    gave none (a segment it did not close, as transformers' pipeline reports it)."""

    start: float | None
    end: float | None
    text: str


@dataclass(frozen=True)
class Transcript:
    """One clip's text, its language code (of its first window), the new token ids of every window (those
    Whisper's ``generate`` returns: eos dropped, every seek within the window), its segments (with timestamps
    only; empty otherwise) and the clip's length in seconds."""

    text: str
    language: str | None
    token_ids: tuple[int, ...]
    segments: tuple[Segment, ...]
    seconds: float


class TranscribeTask(Seq2SeqTask[AudioModality]):
    """Whisper: log-mel features in, the encoder's states out; the pipeline runs the decoder."""

    name = "transcribe"
    modality = AudioModality
    source_hint = " from a Whisper model directory"
    run_input = "audio"

    @property
    def features(self) -> LogMelSpec:
        """The front end's settings."""
        return LogMelSpec(
            n_mels=self.spec.n_mels,
            sampling_rate=self.data.pre.sampling_rate,
            chunk_length=self.spec.chunk_length,
        )

    def samples(self, purpose: str, count: int | None, exclude_texts: Sequence[str] = ()) -> list[Feeds]:
        """Log-mel features of speech-like clips of 1 to 3 s."""
        rng = np.random.default_rng(PURPOSE_SEEDS.get(purpose, 7))
        rate = self.data.pre.sampling_rate
        return [
            {
                "input_features": log_mel(
                    0.1 * synthetic_waveform(rate * (1 + i % 3), rate, rng), self.features
                )[None]
            }
            for i in range(count or 8)
        ]

    def timing_feeds(self, batch: int = 1, seq: int = 128) -> Feeds:
        """One chunk's features, `batch` rows."""
        return {"input_features": np.repeat(self.samples("latency", 1)[0]["input_features"], batch, axis=0)}

    def run_lines(self, items: Sequence[str], results: Sequence[Any]) -> list[str]:
        """``clip.wav [en, 3.2 s]: the text`` (and one line per segment when there are timestamps)."""
        lines = []
        for item, transcript in zip(items, results, strict=True):
            lines.append(
                f"{item} [{transcript.language or '?'}, {transcript.seconds:.1f} s]: {transcript.text}"
            )
            lines.extend(
                f"  [{_seconds(s.start)} -> {_seconds(s.end)}] {s.text}" for s in transcript.segments
            )
        return lines

    def run_json(self, results: Sequence[Any]) -> dict[str, Any]:
        """``transcripts``: one per clip."""
        return {"transcripts": list(results)}

    def decoded_text_checks(self, got: Sequence[str], want: Sequence[str]) -> tuple[OutputCheck, ...]:
        """Speech is judged by its words too: the mean word error rate of the variant's transcripts against
        fp32's (``wer_vs_fp32``)."""
        wer = float(np.mean([word_error_rate(g, w) for g, w in zip(got, want, strict=True)]))
        return (OutputCheck("wer_vs_fp32", round(wer, 6), round(wer, 6), True),)


def _seconds(value: float | None) -> str:
    return f"{value:6.2f}" if value is not None else "     ?"


class SpeechRecognizer(Seq2SeqPipeline[AudioModality]):
    """Whisper speech recognition: `SpeechRecognizer.load(path).transcribe(clips)`."""

    task_class = TranscribeTask
    task: TranscribeTask

    @cached_property
    def tokenizer(self) -> Tokenizer:
        """The package's tokenizer (no padding or truncation)."""
        tokenizer: Tokenizer = read_decoder_tokenizer(self.package.asset("tokenizer.json", "tokenizer"))
        return tokenizer

    def _language_id(self, language: str) -> int:
        code = language.strip().lower().strip("<|>")
        if code not in self.spec.languages:
            known = ", ".join(sorted(self.spec.languages)[:12]) or "none (an English-only model)"
            raise BadInputError(
                f"unknown language code '{language}'; this model knows: {known}"
                + (" ..." if len(self.spec.languages) > 12 else "")
            )
        return self.spec.languages[code]

    def detect_language(self, states: np.ndarray) -> str | None:
        """The most likely language code for one window's encoder states [1, ...] (None: an English-only model)."""
        if not self.spec.languages:
            return None
        rules = DecodingRules(1, 10**9, frozenset(self.spec.eos_token_ids))
        stepper = self.stepper(states, None, np.asarray([self.spec.decoder_start_ids[:1]]), rules, 0)
        codes = sorted(self.spec.languages)
        scores = stepper.logits[0, [self.spec.languages[c] for c in codes]]
        return codes[int(np.argmax(scores))]

    def check_options(self, language: str | None, task: str) -> None:
        """A BadInputError now, before any audio is decoded, for an unknown language code or task."""
        self._prompt(language, task, timestamps=False)

    def _prompt(self, language: str | None, task: str, timestamps: bool) -> list[int]:
        spec = self.spec
        prompt = list(spec.decoder_start_ids[:1])
        if spec.languages and language is not None:
            prompt.append(self._language_id(language))
        if spec.tasks:
            if task not in spec.tasks:
                raise BadInputError(f"unknown task '{task}'; use one of {', '.join(sorted(spec.tasks))}")
            prompt.append(spec.tasks[task])
        elif task != "transcribe":
            raise BadInputError(f"this model only transcribes (task 'transcribe'), got task '{task}'")
        if not timestamps and spec.no_timestamps_token_id is not None:
            prompt.append(spec.no_timestamps_token_id)
        return prompt

    @cached_property
    def _cleans_up(self) -> bool:
        """Whether decoded text is cleaned up as the tokenizer config says (transformers' ``decode`` does)."""
        return cleans_up_spaces(self.package.path)

    @cached_property
    def _special_ids(self) -> frozenset[int]:
        """The tokenizer's special tokens (control tokens, eos) and the eos ids."""
        added = self.tokenizer.get_added_tokens_decoder()
        return frozenset(i for i, token in added.items() if token.special) | frozenset(
            self.spec.eos_token_ids
        )

    def _timestamp_begin(self) -> int:
        if self.spec.no_timestamps_token_id is None:
            raise BadModelError(
                f"package '{self.package.path}' records no <|notimestamps|> token, so no timestamp tokens; "
                "transcribe without timestamps or re-convert a Whisper model with `edge convert`"
            )
        return self.spec.no_timestamps_token_id + 1

    def _text(self, ids: Sequence[int], strip: bool = True) -> str:
        """The text of `ids` (timestamp and special tokens left out)."""
        begin = self.spec.no_timestamps_token_id
        kept = [t for t in ids if begin is None or t <= begin]
        text = str(self.tokenizer.decode(kept, skip_special_tokens=True))
        if self._cleans_up:
            text = clean_up_tokenization(text)
        return text.strip() if strip else text

    def _encode(self, mel: np.ndarray) -> np.ndarray:
        return self.runner.run({"input_features": mel[None]})[self.task.output_name(self.runner.outputs)]

    def _decode_window(
        self,
        mel: np.ndarray,
        states: np.ndarray,
        prompt: list[int],
        timestamps: bool,
        max_new_tokens: int | None,
        num_beams: int | None,
    ) -> list[int]:
        """One window's new tokens as Whisper's ``generate`` returns them (eos dropped): decode (with the timestamp
        rule when asked), keep up to the last timestamp pair unless the decode ended on a lone timestamp, and then
        seek to that pair (the mel frames from it, zero-padded) and decode again, until the window is done."""
        spec = self.spec
        begin = self._timestamp_begin() if timestamps or spec.no_timestamps_token_id is not None else None
        rule = (
            TimestampRule(begin - 1, spec.eos_token_ids[0], len(prompt), spec.max_initial_timestamp_index)
            if timestamps and begin is not None
            else None
        )
        features = self.task.features
        per_token = round(TIME_PRECISION * features.sampling_rate / features.hop_length)
        frames = mel.shape[-1]
        kept: list[int] = []
        seek = 0
        while seek < frames:
            span = frames - seek
            if seek:
                piece = np.zeros_like(mel)
                piece[:, :span] = mel[:, seek:]
                states = self._encode(piece)
            ids = self.decode_rows(states, None, prompt, max_new_tokens, num_beams, task_rule=rule)[0]
            if ids and ids[-1] == spec.eos_token_ids[0]:
                ids = ids[:-1]
            if begin is None:
                return ids
            tokens, advance = window_tokens(ids, begin, span, per_token)
            kept.extend(tokens)
            # a later timestamp pair is never <|0.00|> (the rule forbids it), so `advance` is positive
            seek += advance if advance > 0 else span
        return kept

    def transcribe(
        self,
        clips: Sequence[AudioInput],
        *,
        language: str | None = None,
        task: str = "transcribe",
        timestamps: bool = False,
        stride_s: float | None = None,
        sampling_rate: int | None = None,
        max_new_tokens: int | None = None,
        num_beams: int | None = None,
    ) -> list[Transcript]:
        """One `Transcript` per clip; `language` None detects it per window; `stride_s`: seconds each 30 s window
        shares with its neighbours on each side (default 5)."""
        if language is not None:
            self._language_id(language)
        features = self.task.features
        rate = features.sampling_rate
        # transformers reads ids past <|notimestamps|> as timestamps with or without them (none: no timestamps)
        begin = (
            self._timestamp_begin()
            if timestamps or self.spec.no_timestamps_token_id is not None
            else self.tokenizer.get_vocab_size()
        )
        codes = {token: code for code, token in self.spec.languages.items()}
        results = []
        for clip in clip_list(clips):
            waveform = load_clip(clip, rate, sampling_rate)
            token_ids: list[int] = []
            outputs: list[WindowOutput] = []
            first_language: str | None = None
            for index, window in enumerate(windows(waveform, features, stride_s)):
                mel = log_mel(window.samples, features)
                states = self._encode(mel)
                detected = language if language is not None else self.detect_language(states)
                if index == 0:
                    first_language = detected
                prompt = self._prompt(detected, task, timestamps)
                ids = self._decode_window(mel, states, prompt, timestamps, max_new_tokens, num_beams)
                token_ids.extend(ids)
                outputs.append(
                    WindowOutput(
                        tuple(ids),
                        window.samples.size / rate,
                        window.stride_left / rate,
                        window.stride_right / rate,
                    )
                )
            pieces = merge_windows(
                outputs,
                timestamps=timestamps,
                timestamp_begin=begin,
                special_ids=self._special_ids,
                languages=codes,
                time_precision=TIME_PRECISION,
                segment_size=round(features.chunk_length / TIME_PRECISION),
            )
            text = "".join(self._text(p.tokens, strip=False) for p in pieces).strip()
            segments = (
                tuple(Segment(p.start, p.end, self._text(p.tokens)) for p in pieces) if timestamps else ()
            )
            results.append(Transcript(text, first_language, tuple(token_ids), segments, waveform.size / rate))
        return results

    run_options = frozenset({"language", "task", "timestamps", "stride_s", "max_new_tokens", "num_beams"})

    def run_items(self, items: Sequence[Any]) -> list[Any]:
        """Transcripts of the WAV files (`edge run --audio`)."""
        return self.transcribe(items)

    def run_with(self, items: Sequence[Any], options: Mapping[str, Any]) -> list[Any]:
        """Transcripts of the WAV files with `transcribe`'s keyword options (`edge run --audio --language ...`)."""
        return self.transcribe(items, **options)

    def speed(self, variant: str, runs: int = 3) -> RealTimeFactor:
        """The real-time factor on a 10 s speech-like clip (`edge bench`)."""
        return real_time_factor(self, variant, runs=runs)

    # -- served as NAME-audio (`toolkit.tasks.base.ServesDecoding`) ------------------------------------------

    def decoding_face(self) -> DecodingFace:
        """``NAME-audio``: WAV files' bytes in; text, language, timestamped segments (JSON) and token ids out."""
        return DecodingFace(
            "audio",
            "edge_speech_pipeline",
            "audio",
            "WAV files' bytes",
            (
                *(ServedTensor(n, "BYTES", (-1,)) for n in ("text", "language", "segments")),
                ServedTensor("token_ids", "INT64", (-1, -1)),
            ),
            self.spec.max_target_positions,
        )

    def plan_decode(self, call: DecodeCall) -> DecodePlan:
        """Check the parameters (``language``, ``task``, ``timestamps``) and read every WAV (a bad one is a
        BadInputError naming its element); each clip is then transcribed alone."""
        parameters = call.parameters
        language = string_parameter(parameters, "language", "en")
        task = string_parameter(parameters, "task", "transcribe") or "transcribe"
        timestamps = flag_parameter(parameters, "timestamps")
        self.check_options(language, task)
        outputs = call.outputs
        if "segments" in outputs and not timestamps:
            if "segments" in call.named:
                raise BadInputError(
                    "output 'segments' needs the request parameter timestamps=true; set it or drop the output"
                )
            outputs = tuple(n for n in outputs if n != "segments")
        clips = []
        for index, item in enumerate(call.data):
            where = f"input 'audio' element {index}"
            waveform, rate = read_wav(bytes(item), where)
            if waveform.size == 0:
                raise BadInputError(f"{where} holds no samples (a zero-length clip); send some audio")
            clips.append((waveform, rate))

        def decode(clip: tuple[np.ndarray, int]) -> Transcript:
            (transcript,) = self.transcribe(
                [clip[0]],
                sampling_rate=clip[1],
                language=language,
                task=task,
                timestamps=timestamps,
                max_new_tokens=call.max_new_tokens,
                num_beams=call.num_beams,
            )
            return transcript

        return DecodePlan(tuple(clips), decode, self._served_transcripts, outputs)

    @staticmethod
    def _served_transcripts(transcripts: Sequence[Transcript]) -> dict[str, np.ndarray]:
        def seconds(value: float | None) -> float | None:
            return None if value is None else round(value, 3)

        # each clip's segments as JSON: start and end in seconds, null where the model left a segment open
        segments = [
            json.dumps(
                [{"start": seconds(s.start), "end": seconds(s.end), "text": s.text} for s in t.segments],
                ensure_ascii=False,
            )
            for t in transcripts
        ]
        return {
            "text": bytes_array([t.text for t in transcripts]),
            "language": bytes_array([t.language or "" for t in transcripts]),
            "segments": bytes_array(segments),
            "token_ids": token_id_rows([t.token_ids for t in transcripts]),
        }

    def held_out_outputs(self, max_new_tokens: int) -> list[Seq2SeqOutput]:
        """Greedy transcripts of six speech-like clips of 1 to 3 s (English when the model has languages)."""
        rate = self.task.features.sampling_rate
        rng = np.random.default_rng(1_000_003)
        clips = [0.1 * synthetic_waveform(rate * (1 + i % 3), rate, rng) for i in range(6)]
        language = "en" if "en" in self.spec.languages else None
        transcripts = self.transcribe(clips, language=language, max_new_tokens=max_new_tokens, num_beams=1)
        return [Seq2SeqOutput(t.text, t.token_ids) for t in transcripts]


@dataclass(frozen=True)
class RealTimeFactor:
    """Transcription speed: median wall seconds per clip over the clip's length (below 1: faster than real time)."""

    variant: str
    clip_seconds: float
    median_seconds: float
    runs: int
    new_tokens: int

    @property
    def rtf(self) -> float:
        """Median seconds of work per second of audio."""
        return self.median_seconds / self.clip_seconds

    def line(self) -> str:
        """``fp32: real-time factor 0.0465 (0.465 s for a 10 s clip, ...)``."""
        return (
            f"{self.variant}: real-time factor {self.rtf:.4f} ({self.median_seconds:.3f} s for a "
            f"{self.clip_seconds:.0f} s clip, {self.new_tokens} new tokens at most, median of {self.runs})"
        )


def real_time_factor(
    recognizer: SpeechRecognizer,
    variant: str,
    clip_seconds: float = 10.0,
    runs: int = 3,
    new_tokens: int = 32,
) -> RealTimeFactor:
    """Time `runs` transcriptions (after one warm-up) of a speech-like clip of `clip_seconds`, greedy, English when
    the model has languages, at most `new_tokens` new tokens."""
    import time

    rate = recognizer.task.features.sampling_rate
    clip = (0.1 * synthetic_waveform(int(clip_seconds * rate), rate, np.random.default_rng(7))).astype(
        np.float32
    )
    language = "en" if "en" in recognizer.spec.languages else None
    recognizer.transcribe([clip], language=language, max_new_tokens=new_tokens, num_beams=1)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        recognizer.transcribe([clip], language=language, max_new_tokens=new_tokens, num_beams=1)
        times.append(time.perf_counter() - started)
    return RealTimeFactor(variant, clip_seconds, float(np.median(times)), runs, new_tokens)
