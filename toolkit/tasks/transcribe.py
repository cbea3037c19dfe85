"""``transcribe``: speech recognition with Whisper: `SpeechRecognizer.transcribe(clips, ...)`.

Clips (WAV at any rate, or float waveforms) are resampled to 16 kHz, cut into 30 s chunks, turned into log-mel
features (`toolkit.speech`), encoded, and decoded from Whisper's prompt ``<|startoftranscript|> <|lang|>
<|task|> [<|notimestamps|>]``. Without a language the first decoder step picks the most likely language token.
With ``timestamps=True`` the prompt leaves out ``<|notimestamps|>`` and the timestamp tokens the model emits
split the text into segments (seconds from the clip's start).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from toolkit.errors import BadInputError, BadModelError
from toolkit.manifest import ModelPackage, Seq2SeqSpec
from toolkit.preprocess import AudioInput, clip_list
from toolkit.seq2seq import Seq2SeqPipeline
from toolkit.seq2seq.decoding import DecodingRules
from toolkit.speech import LogMelSpec, chunks, load_clip, log_mel
from toolkit.tasks.base import Feeds, Task
from toolkit.tasks.modality import PURPOSE_SEEDS, AudioModality, synthetic_waveform

if TYPE_CHECKING:
    from tokenizers import Tokenizer

__all__ = [
    "PIPELINE",
    "TASK",
    "RealTimeFactor",
    "Segment",
    "SpeechRecognizer",
    "TranscribeTask",
    "Transcript",
    "real_time_factor",
]

TIME_PRECISION = 0.02  # seconds per timestamp token


@dataclass(frozen=True)
class Segment:
    """A piece of the transcript between two timestamps (seconds from the clip's start)."""

    start: float
    end: float
    text: str


@dataclass(frozen=True)
class Transcript:
    """One clip's text, its language code, the new token ids of every chunk, segments (with timestamps) and the
    clip's length in seconds."""

    text: str
    language: str | None
    token_ids: tuple[int, ...]
    segments: tuple[Segment, ...]
    seconds: float


def _tokenizer(package: ModelPackage) -> Tokenizer:
    from tokenizers import Tokenizer

    path = package.asset("tokenizer.json", "tokenizer")
    if not path.is_file():
        raise BadModelError(
            f"package '{package.path}' has no tokenizer.json; re-create it with `edge convert`"
        )
    return Tokenizer.from_file(str(path))


class TranscribeTask(Task[AudioModality]):
    """Whisper: log-mel features in, the encoder's states out; the pipeline runs the decoder."""

    name = "transcribe"
    modality = AudioModality
    metric = "max_abs_diff"
    preferred_output = "last_hidden_state"
    source_hint = " from a Whisper model directory"
    run_input = "audio"

    @classmethod
    def accepts(cls, package: ModelPackage) -> bool:
        """An audio section and a seq2seq section."""
        return super().accepts(package) and package.manifest.seq2seq is not None

    @property
    def spec(self) -> Seq2SeqSpec:
        """The manifest's seq2seq section."""
        return self.package.seq2seq_spec()

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
            if len(transcript.segments) > 1 or any(s.end > 0 for s in transcript.segments):
                lines.extend(f"  [{s.start:6.2f} -> {s.end:6.2f}] {s.text}" for s in transcript.segments)
        return lines

    def run_json(self, results: Sequence[Any]) -> dict[str, Any]:
        """``transcripts``: one per clip."""
        return {"transcripts": list(results)}


class SpeechRecognizer(Seq2SeqPipeline[AudioModality]):
    """Whisper speech recognition: `SpeechRecognizer.load(path).transcribe(clips)`."""

    task_class = TranscribeTask
    task: TranscribeTask

    @cached_property
    def tokenizer(self) -> Tokenizer:
        """The package's tokenizer."""
        return _tokenizer(self.package)

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
        """The most likely language code for one chunk's encoder states [1, ...] (None: an English-only model)."""
        if not self.spec.languages:
            return None
        rules = DecodingRules(1, 10**9, frozenset(self.spec.eos_token_ids))
        stepper = self.stepper(states, None, np.asarray([self.spec.decoder_start_ids[:1]]), rules, 0)
        codes = sorted(self.spec.languages)
        scores = stepper.logits[0, [self.spec.languages[c] for c in codes]]
        return codes[int(np.argmax(scores))]

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

    def _segments(self, ids: Sequence[int], offset: float) -> list[Segment]:
        begin = self.spec.no_timestamps_token_id + 1 if self.spec.no_timestamps_token_id is not None else None
        text_ids: list[int] = []
        segments: list[Segment] = []
        start = None
        for token in ids:
            if begin is not None and token >= begin:
                stamp = offset + (token - begin) * TIME_PRECISION
                if start is None:
                    start = stamp
                else:
                    segments.append(Segment(start, stamp, self._text(text_ids)))
                    start, text_ids = None, []
            elif token not in self.spec.eos_token_ids:
                text_ids.append(token)
        if text_ids:
            segments.append(Segment(start if start is not None else offset, offset, self._text(text_ids)))
        return segments

    def _text(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True)).strip()

    def transcribe(
        self,
        clips: Sequence[AudioInput],
        *,
        language: str | None = None,
        task: str = "transcribe",
        timestamps: bool = False,
        sampling_rate: int | None = None,
        max_new_tokens: int | None = None,
        num_beams: int | None = None,
    ) -> list[Transcript]:
        """One `Transcript` per clip; `language` None detects it per clip (from its first chunk)."""
        if language is not None:
            self._language_id(language)
        features = self.task.features
        results = []
        for clip in clip_list(clips):
            waveform = load_clip(clip, features.sampling_rate, sampling_rate)
            pieces = chunks(waveform, features)
            detected = language
            token_ids: list[int] = []
            segments: list[Segment] = []
            for index, piece in enumerate(pieces):
                feeds = {"input_features": log_mel(piece, features)[None]}
                states = self.runner.run(feeds)[self.task.output_name(self.runner.outputs)]
                if detected is None and index == 0:
                    detected = self.detect_language(states)
                ids = self.decode_rows(
                    states, None, self._prompt(detected, task, timestamps), max_new_tokens, num_beams
                )[0]
                token_ids.extend(ids)
                offset = index * features.chunk_length
                segments.extend(
                    self._segments(ids, offset) if timestamps else [Segment(offset, 0.0, self._text(ids))]
                )
            text = " ".join(s.text for s in segments if s.text)
            results.append(
                Transcript(
                    text, detected, tuple(token_ids), tuple(segments), waveform.size / features.sampling_rate
                )
            )
        return results

    def run_items(self, items: Sequence[Any]) -> list[Any]:
        """Transcripts of the WAV files (`edge run --audio`)."""
        return self.transcribe(items)

    def speed(self, variant: str, runs: int = 3) -> RealTimeFactor:
        """The real-time factor on a 10 s speech-like clip (`edge bench`)."""
        return real_time_factor(self, variant, runs=runs)


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


TASK = TranscribeTask
PIPELINE = SpeechRecognizer
