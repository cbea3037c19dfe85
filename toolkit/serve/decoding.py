"""The served encoder-decoders: a decoding pipeline (`toolkit.tasks.base.ServesDecoding`: Whisper's
`SpeechRecognizer` as ``<name>-audio``, `Seq2SeqGenerator` as ``<name>-text``) behind the scheduler, as a
`DecodingModel` over a `DecodeEngine`. What a model takes and gives, and its request parameters, are its
pipeline's (`decoding_face`, `plan_decode`); this module bounds ``max_new_tokens`` and ``num_beams`` by the
server's `DecodeLimits` and runs the plan:

    ``<name>-audio``  ``audio`` BYTES [N], each element a WAV file's bytes (PCM 8/16/24/32-bit, any rate, any
                      channels, as ``edge run --audio`` reads) -> ``text`` BYTES [N], ``language`` BYTES [N]
                      (empty for an English-only model) and, with ``timestamps``, ``segments`` BYTES [N] (per clip
                      a JSON array of ``{"start", "end", "text"}``, seconds) and ``token_ids`` INT64 [N, T] (the
                      new tokens of every chunk, -1 after a clip's last). Request parameters: ``language``,
                      ``task`` (``transcribe`` / ``translate``), ``timestamps`` (bool), ``max_new_tokens``,
                      ``num_beams``.
    ``<name>-text``   ``text`` BYTES [N] (UTF-8) -> ``text`` BYTES [N] and ``token_ids`` INT64 [N, T] (-1
                      padded); parameters ``max_new_tokens``, ``num_beams``, ``length_penalty``,
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

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from toolkit.decoding.encoder_decoder import checked_steps
from toolkit.errors import BadInputError
from toolkit.manifest import TensorSpec
from toolkit.runner import Runner
from toolkit.serve.engine import Outputs
from toolkit.serve.errors import ServerClosingError
from toolkit.serve.models import Job, ServedModel, TensorMetadata, bytes_input, metadata_of
from toolkit.serve.tensors import InferenceRequest
from toolkit.tasks.base import DecodeCall, ServesDecoding
from toolkit.tasks.encoder_decoder import DecodeLimits

__all__ = ["DecodeEngine", "DecodeWork", "DecodingModel"]


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
        self,
        name: str,
        version: str,
        pipeline: ServesDecoding,
        runner: Runner,
        limits: DecodeLimits | None = None,
    ) -> None:
        self.name = name
        self.version = version
        self.pipeline = pipeline
        self.face = pipeline.decoding_face()
        self.limits = limits or DecodeLimits()
        self.runner = runner

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
    positions = engine.face.positions
    limits = engine.limits
    new_tokens = positions if limits.max_new_tokens is None else min(limits.max_new_tokens, positions)
    option = "--max-new-tokens" if new_tokens < positions else ""
    return (
        _int_parameter(parameters, "max_new_tokens", new_tokens, option),
        _int_parameter(parameters, "num_beams", limits.max_beam_width, "--max-beam-width"),
    )


class DecodingModel(ServedModel):
    """A served model that decodes (``<name>-<suffix>`` of its pipeline's `DecodingFace`): `prepare` checks the
    request and returns a `Job` whose feeds are `DecodeWork`, which decodes the plan's rows one at a time."""

    engine: DecodeEngine
    prepare_off_loop = True  # reads WAV files or tokenizes texts

    def __init__(self, engine: DecodeEngine) -> None:
        face = engine.face
        super().__init__(
            engine.name,
            engine,
            [TensorMetadata(face.input, "BYTES", (-1,))],
            [metadata_of(t) for t in face.outputs],
        )
        self.platform = face.platform

    @property
    def batched(self) -> bool:
        """The first dim of every input and output counts the request's clips or texts (its rows)."""
        return True

    def prepare(self, request: InferenceRequest) -> Job:
        """Bound the decoding parameters, let the pipeline check the rest and plan; the job decodes the plan's
        rows one by one, stopping between rows once abandoned."""
        face = self.engine.face
        max_new_tokens, num_beams = _decoding_parameters(request.parameters, self.engine)
        outputs = self.requested_outputs(request)
        data = bytes_input(self, request, face.input, face.holds)
        named = frozenset(o.name for o in request.outputs)
        plan = self.engine.pipeline.plan_decode(
            DecodeCall(data, request.parameters, outputs, named, max_new_tokens, num_beams)
        )

        def run(stopped: Callable[[], bool]) -> Outputs:
            results = []
            for item in plan.items:
                if stopped():
                    raise _abandoned(self.name)
                results.append(plan.decode(item))
            return plan.outputs(results)

        work = DecodeWork(self.name, {face.input: data}, run)
        return Job(work, len(plan.items), plan.answers, tokens=plan.tokens, cancel=work.cancel)
