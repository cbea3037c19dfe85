"""The served encoder-decoders: ``<name>-audio`` (speech recognition) and ``<name>-text`` (text to text) run the
task's own decoding pipeline (`SpeechRecognizer.transcribe`, `Seq2SeqGenerator.generate`) behind the scheduler.

Models (one table, `DECODING_MODELS`, keyed by task)
    ``transcribe``  ``<name>-audio``: ``audio`` BYTES [N], each element a WAV file's bytes (PCM 8/16/24/32-bit, any
                    rate, any channels, as ``edge run --audio`` reads) -> ``text`` BYTES [N], ``language`` BYTES [N]
                    (empty for an English-only model) and, with ``timestamps``, ``segments`` BYTES [N] (per clip a
                    JSON array of ``{"start", "end", "text"}``, seconds) and ``token_ids`` INT64 [N, T] (the new
                    tokens of every chunk, -1 after a clip's last). Request parameters: ``language``,
                    ``task`` (``transcribe`` / ``translate``), ``timestamps`` (bool), ``max_new_tokens``,
                    ``num_beams``.
    ``text2text``   ``<name>-text``: ``text`` BYTES [N] (UTF-8) -> ``text`` BYTES [N] and ``token_ids`` INT64 [N, T]
                    (-1 padded); parameters ``max_new_tokens``, ``num_beams``, ``length_penalty``,
                    ``early_stopping``, ``no_repeat_ngram_size``, ``min_length`` (as `Seq2SeqGenerator.generate`).
The raw encoder stays served under ``<name>`` (its states, for clients that decode themselves).

Scheduling
    A `DecodeEngine` takes the place of the ONNX `Engine` in the scheduler, so these models share the server's
    queue limit (503), request timeout (504), metrics (under the served model's own name) and shutdown. Each
    request runs alone on the batcher's worker thread (`requests_per_run`: decoding is seconds of work, and a
    request must not wait for its batch-mates' decodes); `--workers` decodes run at once. A request abandoned
    by its client or its deadline stops at its next decoder step (`DecodeWork.cancel`), so a timed-out decode
    does not keep a worker, or a graceful shutdown, waiting for the rest of it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from toolkit.errors import BadInputError
from toolkit.manifest import ModelPackage, TensorSpec
from toolkit.preprocess import read_wav
from toolkit.runner import Runner
from toolkit.seq2seq import DecodeLimits, Seq2SeqPipeline
from toolkit.seq2seq.decoding import checked_steps
from toolkit.seq2seq.pipeline import DECODING_SETTINGS, checked_settings
from toolkit.serve.errors import ServerClosingError
from toolkit.serve.models import Job, ServedModel, TensorMetadata, bytes_input, request_texts
from toolkit.serve.protocol import InferenceRequest
from toolkit.tasks.text2text import Seq2SeqGenerator
from toolkit.tasks.transcribe import SpeechRecognizer, Transcript

__all__ = [
    "DECODING_MODELS",
    "PAD_ID",
    "DecodeEngine",
    "DecodeWork",
    "DecodingModel",
    "SpeechModel",
    "TextDecodingModel",
    "decoding_models",
]

Outputs = dict[str, np.ndarray]
_BYTES_N = (-1,)
PAD_ID = -1  # fills ``token_ids`` after a row's last token


class DecodeWork(Mapping[str, np.ndarray]):
    """One request's decoded inputs as the scheduler carries them, and the call that answers it.

    `run` is called on a worker thread; it receives `stopped`, which turns true once the request is abandoned
    (`cancel`), and checks it between clips or texts; every decoder step checks it too (`checked_steps`).
    """

    def __init__(
        self, name: str, inputs: Mapping[str, np.ndarray], run: Callable[[Callable[[], bool]], Outputs]
    ) -> None:
        self.name = name
        self._inputs = dict(inputs)
        self._run = run
        self._cancelled = threading.Event()

    def __getitem__(self, name: str) -> np.ndarray:
        return self._inputs[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._inputs)

    def __len__(self) -> int:
        return len(self._inputs)

    def cancel(self) -> None:
        """The client or its deadline gave up: stop at the next decoder step."""
        self._cancelled.set()

    def _check(self) -> None:
        if self._cancelled.is_set():
            raise _abandoned(self.name)

    def run(self) -> Outputs:
        """The request's outputs (a ServerClosingError when it was abandoned part-way)."""
        with checked_steps(self._check):
            return self._run(self._cancelled.is_set)


class DecodeEngine:
    """A decoding pipeline in the scheduler's place of an ONNX `Engine`: each request runs alone (see the module
    docstring), on the encoder's `runner` and the pipeline's decoder sessions."""

    merge = False
    batch_dim: str | None = None
    requests_per_run: int | None = 1
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()

    def __init__(
        self, name: str, version: str, pipeline: Seq2SeqPipeline[Any], limits: DecodeLimits | None = None
    ) -> None:
        self.name = name
        self.version = version
        self.pipeline = pipeline
        self.limits = limits or DecodeLimits()
        self.runner: Runner = pipeline.runner

    @property
    def label(self) -> tuple[str, str]:
        """(model, version), for metrics and thread names."""
        return (self.name, self.version)

    def run_many(self, jobs: Sequence[Mapping[str, np.ndarray]]) -> list[Outputs | BaseException]:
        """Each request's outputs, or the error its decoding raised."""
        results: list[Outputs | BaseException] = []
        for job in jobs:
            if not isinstance(job, DecodeWork):
                results.append(TypeError(f"model '{self.name}' runs decode work, got {type(job).__name__}"))
                continue
            try:
                results.append(job.run())
            except Exception as exc:  # noqa: BLE001 - handed to the request's future and answered there
                results.append(exc)
        return results


def _abandoned(name: str) -> ServerClosingError:
    return ServerClosingError(f"model '{name}': the request was abandoned (timeout or client gone)")


def _int_parameter(
    parameters: Mapping[str, Any], key: str, most: int | None = None, option: str = ""
) -> int | None:
    value = parameters.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadInputError(f"parameter '{key}' must be an integer of at least 1, got {value!r}")
    if most is not None and value > most:
        raise BadInputError(
            f"parameter '{key}' is {value}, over this server's limit of {most}; ask for {most} or fewer"
            + (f" (or raise {option})" if option else "")
        )
    return value


def _decoding_parameters(
    parameters: Mapping[str, Any], engine: DecodeEngine
) -> tuple[int | None, int | None]:
    """The request's (max_new_tokens, num_beams), each bounded: the server's `DecodeLimits` (a max_new_tokens limit
    never above the decoder's positions)."""
    positions = engine.pipeline.spec.max_target_positions
    limits = engine.limits
    new_tokens = positions if limits.max_new_tokens is None else min(limits.max_new_tokens, positions)
    option = "--max-new-tokens" if new_tokens < positions else ""
    return (
        _int_parameter(parameters, "max_new_tokens", new_tokens, option),
        _int_parameter(parameters, "num_beams", limits.max_beam_width, "--max-beam-width"),
    )


def _str_parameter(parameters: Mapping[str, Any], key: str, example: str) -> str | None:
    value = parameters.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise BadInputError(f"parameter '{key}' must be a string such as {example!r}, got {value!r}")
    return value


def _bool_parameter(parameters: Mapping[str, Any], key: str) -> bool:
    value = parameters.get(key, False)
    if not isinstance(value, bool):
        raise BadInputError(f"parameter '{key}' must be true or false, got {value!r}")
    return value


class DecodingModel(ServedModel):
    """A served model that decodes: `prepare` checks the request and returns a `Job` whose feeds are `DecodeWork`."""

    engine: DecodeEngine
    prepare_off_loop = True  # reads WAV files or tokenizes texts

    @property
    def batched(self) -> bool:
        """The first dim of every input and output counts the request's clips or texts (its rows)."""
        return True

    def _job(
        self,
        inputs: Mapping[str, np.ndarray],
        rows: int,
        outputs: tuple[str, ...],
        run: Callable[[Callable[[], bool]], Outputs],
        tokens: int | None = None,
    ) -> Job:
        work = DecodeWork(self.name, inputs, run)
        return Job(work, rows, outputs, tokens=tokens, cancel=work.cancel)


class SpeechModel(DecodingModel):
    """``<name>-audio``: WAV files' bytes in, transcripts out (`SpeechRecognizer.transcribe` per clip)."""

    platform = "edge_speech_pipeline"
    suffix: ClassVar[str] = "audio"

    def __init__(self, engine: DecodeEngine) -> None:
        if not isinstance(engine.pipeline, SpeechRecognizer):
            raise TypeError(f"model '{engine.name}' is not a speech recognizer")
        super().__init__(
            engine.name,
            engine,
            [TensorMetadata("audio", "BYTES", _BYTES_N)],
            [
                *(TensorMetadata(n, "BYTES", _BYTES_N) for n in ("text", "language", "segments")),
                TensorMetadata("token_ids", "INT64", (-1, -1)),
            ],
        )
        self.recognizer: SpeechRecognizer = engine.pipeline

    def prepare(self, request: InferenceRequest) -> Job:
        """Read every WAV (a bad one is a 400 naming its element) and the parameters; the job transcribes."""
        parameters = request.parameters
        language = _str_parameter(parameters, "language", "en")
        task = _str_parameter(parameters, "task", "transcribe") or "transcribe"
        timestamps = _bool_parameter(parameters, "timestamps")
        max_new_tokens, num_beams = _decoding_parameters(parameters, self.engine)
        self.recognizer.check_options(language, task)  # a 400 before the request waits in the queue
        outputs = self.requested_outputs(request)
        if "segments" in outputs and not timestamps:
            if any(o.name == "segments" for o in request.outputs):
                raise BadInputError(
                    "output 'segments' needs the request parameter timestamps=true; set it or drop the output"
                )
            outputs = tuple(n for n in outputs if n != "segments")
        data = bytes_input(self, request, "audio", "WAV files' bytes")
        clips = []
        for index, item in enumerate(data):
            where = f"input 'audio' element {index}"
            waveform, rate = read_wav(bytes(item), where)
            if waveform.size == 0:
                raise BadInputError(f"{where} holds no samples (a zero-length clip); send some audio")
            clips.append((waveform, rate))
        recognizer = self.recognizer

        def run(stopped: Callable[[], bool]) -> Outputs:
            transcripts: list[Transcript] = []
            for waveform, rate in clips:
                if stopped():
                    raise _abandoned(self.name)
                (transcript,) = recognizer.transcribe(
                    [waveform],
                    sampling_rate=rate,
                    language=language,
                    task=task,
                    timestamps=timestamps,
                    max_new_tokens=max_new_tokens,
                    num_beams=num_beams,
                )
                transcripts.append(transcript)
            return {
                "text": _bytes([t.text for t in transcripts]),
                "language": _bytes([t.language or "" for t in transcripts]),
                "segments": _bytes([_segments_json(t) for t in transcripts]),
                "token_ids": _token_ids([t.token_ids for t in transcripts]),
            }

        return self._job({"audio": data}, len(clips), outputs, run)


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _segments_json(transcript: Transcript) -> str:
    """One clip's segments as JSON: start and end in seconds, null where the model left a segment open."""
    return json.dumps(
        [{"start": _seconds(s.start), "end": _seconds(s.end), "text": s.text} for s in transcript.segments],
        ensure_ascii=False,
    )


def _token_ids(rows: Sequence[Sequence[int]]) -> np.ndarray:
    """Token ids int64 [N, longest], -1 after each row's last."""
    array = np.full((len(rows), max((len(r) for r in rows), default=0)), PAD_ID, dtype=np.int64)
    for index, row in enumerate(rows):
        array[index, : len(row)] = row
    return array


def _bytes(texts: Sequence[str]) -> np.ndarray:
    array = np.empty(len(texts), dtype=object)
    array[:] = [t.encode("utf-8") for t in texts]
    return array


class TextDecodingModel(DecodingModel):
    """``<name>-text`` of a text-to-text package: texts in, generated texts out (`Seq2SeqGenerator.generate`)."""

    platform = "edge_text2text_pipeline"
    suffix: ClassVar[str] = "text"

    def __init__(self, engine: DecodeEngine) -> None:
        if not isinstance(engine.pipeline, Seq2SeqGenerator):
            raise TypeError(f"model '{engine.name}' is not a text-to-text generator")
        super().__init__(
            engine.name,
            engine,
            [TensorMetadata("text", "BYTES", _BYTES_N)],
            [TensorMetadata("text", "BYTES", _BYTES_N), TensorMetadata("token_ids", "INT64", (-1, -1))],
        )
        self.generator: Seq2SeqGenerator = engine.pipeline

    def prepare(self, request: InferenceRequest) -> Job:
        """Check the texts (UTF-8) and parameters; the job's tokens (rows x longest) count against the limit."""
        parameters = request.parameters
        max_new_tokens, num_beams = _decoding_parameters(parameters, self.engine)
        settings = checked_settings({name: parameters.get(name) for name in DECODING_SETTINGS})
        outputs = self.requested_outputs(request)
        texts = request_texts(self, request)
        limit = self.generator.task.data.pre.max_length
        lengths = [min(len(e.ids), limit) for e in self.generator.tokenizer.encode_batch(texts)]
        if 0 in lengths:
            raise BadInputError(
                f"input 'text' element {lengths.index(0)} holds no tokens (an empty text); send some text"
            )
        longest = max(lengths)
        generator = self.generator

        def run(stopped: Callable[[], bool]) -> Outputs:
            generated = []
            for text in texts:
                if stopped():
                    raise _abandoned(self.name)
                (output,) = generator.generate(
                    [text], max_new_tokens=max_new_tokens, num_beams=num_beams, **settings
                )
                generated.append(output)
            return {
                "text": _bytes([g.text for g in generated]),
                "token_ids": _token_ids([g.token_ids for g in generated]),
            }

        return self._job({"text": request.inputs[0].data}, len(texts), outputs, run, len(texts) * longest)


# One line per task whose pipeline decodes: the served model class (its name is `<package name>-<suffix>`).
DECODING_MODELS: dict[str, type[SpeechModel] | type[TextDecodingModel]] = {
    "transcribe": SpeechModel,
    "text2text": TextDecodingModel,
}


def decoding_models(
    package: ModelPackage, variant: str, runner: Runner, limits: DecodeLimits | None = None
) -> list[ServedModel]:
    """The package's decoding model for `variant` over the encoder's `runner`, its requests held to `limits` (none
    when its task does not decode)."""
    model_class = DECODING_MODELS.get(package.manifest.task)
    if model_class is None or package.manifest.seq2seq is None:
        return []
    from toolkit.tasks import pipeline_class

    pipeline = pipeline_class(package)(package, runner)
    if not isinstance(pipeline, Seq2SeqPipeline):
        raise TypeError(f"task '{package.manifest.task}' has no decoding pipeline")
    name = f"{package.manifest.name}-{model_class.suffix}"
    return [model_class(DecodeEngine(name, variant, pipeline, limits))]
