"""`Seq2SeqPipeline`: an encoder `Runner` (the package's variant file) plus its two decoder sessions, and the
decoding both encoder-decoder tasks share over the decoding engine: greedy through `toolkit.decoding.decode`, or
beam search; `Seq2SeqTask`, the family's task base. The family module of `text2text` and `transcribe`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import numpy as np

from toolkit.agreement import COSINE, TOP1, TOP5, Meaning
from toolkit.checks import check_finite_number
from toolkit.decoding.encoder_decoder import (
    BeamSettings,
    DecodingRules,
    LogitsRule,
    Seq2SeqStepper,
    beam_search,
)
from toolkit.decoding.loop import RowPlan, decode
from toolkit.decoding.sampling import GenerationOptions, LogitsChooser
from toolkit.errors import BadInputError, BadModelError
from toolkit.manifest import ModelPackage, OutputCheck, Seq2SeqSpec, seq2seq_files
from toolkit.runner import Runner
from toolkit.tasks.base import Family, Pipeline, Task
from toolkit.tasks.modality import Modality

__all__ = [
    "DECODING_SETTINGS",
    "DecodeLimits",
    "Seq2SeqOutput",
    "Seq2SeqPipeline",
    "Seq2SeqTask",
    "SpeedRow",
    "checked_settings",
]

_M = TypeVar("_M", bound=Modality)


@dataclass(frozen=True)
class Seq2SeqOutput:
    """One input's decoded text and new token ids (its eos included when it ended on one)."""

    text: str
    token_ids: tuple[int, ...]


@dataclass(frozen=True)
class DecodeLimits:
    """What one request to a served encoder-decoder (``NAME-audio``, ``NAME-text``) may ask for; over either is a
    400 (``edge serve --max-beam-width``, ``--max-new-tokens``).

    ``max_beam_width`` bounds its ``num_beams`` (TensorRT-LLM's and Triton's name: every beam is a decoder row with
    its own cache, so beams multiply a decode's memory and time); ``max_new_tokens`` bounds its ``max_new_tokens``
    (None: the decoder's own positions, which bound it in any case).
    """

    max_beam_width: int = 16
    max_new_tokens: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_beam_width", "max_new_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise BadInputError(f"{name} must be at least 1, got {value}")


_COUNTS = ("no_repeat_ngram_size", "min_length")
DECODING_SETTINGS = (*_COUNTS, "length_penalty", "early_stopping")  # what `generate` takes over the config


def checked_settings(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The given (not None) decoding overrides, each checked; a bad one is a BadInputError."""
    given = {name: value for name, value in overrides.items() if value is not None}
    for name, value in given.items():
        if name in _COUNTS:
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
            want = "an integer of at least 0"
        elif name == "length_penalty":
            check_finite_number(name, value)  # 10**400 too, which np.isfinite cannot take
            continue
        elif name == "early_stopping":
            ok = isinstance(value, bool) or value == "never"
            want = 'true, false or "never"'
        else:
            raise BadInputError(f"unknown decoding setting '{name}'; use {', '.join(DECODING_SETTINGS)}")
        if not ok:
            raise BadInputError(f"{name} must be {want}, got {value!r}")
    return given


class Seq2SeqTask(Task[_M], Generic[_M]):
    """What every encoder-decoder task shares: its package has a ``seq2seq`` section (the decoder contract), its
    graph is the encoder (validated on its states) and its pipeline runs the decoder."""

    family = Family.ENCODER_DECODER
    metric = "max_abs_diff"
    preferred_output = "last_hidden_state"
    meaning: ClassVar[Meaning] = {"last_hidden_state": (COSINE,), "log_probs": (TOP1, TOP5)}

    @classmethod
    def accepts(cls, package: ModelPackage) -> bool:
        """The modality's section and a seq2seq section."""
        return super().accepts(package) and package.manifest.seq2seq is not None

    @property
    def spec(self) -> Seq2SeqSpec:
        """The manifest's seq2seq section."""
        return self.package.seq2seq_spec()

    def decoded_text_checks(self, got: Sequence[str], want: Sequence[str]) -> tuple[OutputCheck, ...]:
        """What a quantized variant's decoded texts (`got`) are judged by against fp32's (`want`) beside token
        agreement: nothing unless the task says (speech: its word error rate)."""
        return ()


class SpeedRow(Protocol):
    """One variant's speed as `edge bench` prints it (a frozen dataclass, so it also goes to JSON)."""

    @property
    def variant(self) -> str:
        """The variant timed."""
        ...

    def line(self) -> str:
        """The printed line."""
        ...


class _Silent:
    """A `RowWatcher` that settles no text (the pipeline detokenizes once at the end)."""

    stopped = False

    def add(self, token: int) -> str:
        return ""


class Seq2SeqPipeline(Pipeline[_M], Generic[_M]):
    """The encoder on `runner`, the decoders beside it (same variant, same providers)."""

    def __init__(self, package: ModelPackage, runner: Runner, task: Task[_M] | None = None) -> None:
        super().__init__(package, runner, task)
        self.spec: Seq2SeqSpec = package.seq2seq_spec()
        variant = next(
            (name for name, v in package.manifest.variants.items() if v.file == runner.path.name), "fp32"
        )
        _, first, with_past = seq2seq_files(variant)
        self.decoders = tuple(
            Runner(
                package.asset(name, "decoder file"),
                runner.config.providers,
                threads=runner._threads,
                config=runner.config,
            )
            for name in (first, with_past)
        )
        self._check_token_ids()
        self.tokenizer  # noqa: B018 - read at load: a broken tokenizer.json fails here, not at the first request

    @property
    def tokenizer(self) -> Any:
        """The package's `tokenizers` tokenizer (each task reads its own)."""
        raise NotImplementedError

    def _check_token_ids(self) -> None:
        """A BadModelError when a token id of the seq2seq section lies outside the decoder's vocabulary (its logits'
        last dim)."""
        logits = next((t for t in self.decoders[0].outputs if t.name == "logits"), None)
        vocab = logits.shape[-1] if logits is not None and logits.shape else None
        if not isinstance(vocab, int):
            return
        spec = self.spec
        singles = ("pad_token_id", "forced_bos_token_id", "forced_eos_token_id", "no_timestamps_token_id")
        fields = {name: (getattr(spec, name),) for name in singles}
        fields.update({name: getattr(spec, name) for name in ("decoder_start_ids", "eos_token_ids")})
        for name, values in fields.items():
            bad = next((v for v in values if v is not None and v >= vocab), None)
            if bad is not None:
                raise BadModelError(
                    f"package '{self.package.path}': seq2seq.{name} holds {bad}, outside the decoder's vocabulary "
                    f"of {vocab}; re-create the package with `edge convert`"
                )

    def _setting(self, name: str, value: Any, default: Any) -> Any:
        return value if value is not None else self.spec.defaults.get(name, default)

    def stepper(
        self,
        states: np.ndarray,
        mask: np.ndarray | None,
        prompt: np.ndarray,
        rules: DecodingRules,
        new_tokens: int,
        *,
        log_probs: bool = True,
    ) -> Seq2SeqStepper:
        """A decoder stepper over encoder `states` (a row per prompt row, or one shared row) that has run the
        decoder `prompt` [rows, length] and has room for `new_tokens` more."""
        first, with_past = (r.session for r in self.decoders)
        prompt = np.asarray(prompt, dtype=np.int64)
        return Seq2SeqStepper(
            first,
            with_past,
            self.spec,
            states,
            mask,
            prompt,
            rules,
            capacity=prompt.shape[1] + new_tokens,
            log_probs=log_probs,
            device=self.runner.device,
        )

    def decode_rows(
        self,
        states: np.ndarray,
        mask: np.ndarray | None,
        prompt: Sequence[int],
        max_new_tokens: int | None,
        num_beams: int | None,
        overrides: Mapping[str, Any] | None = None,
        task_rule: LogitsRule | None = None,
    ) -> list[list[int]]:
        """New token ids per row of the encoder `states` [rows, ...], each decoded from `prompt` (with the task's
        own logits rule last when given: Whisper's timestamps); `overrides` replace the generation config's `length_penalty`,
        `early_stopping`, `no_repeat_ngram_size` and `min_length` (None values are ignored)."""
        beams = self._setting("num_beams", num_beams, 1)
        limit = self._setting("max_new_tokens", max_new_tokens, None)
        settings = {**self.spec.defaults, **checked_settings(overrides or {})}
        room = self.spec.max_target_positions - len(prompt)
        if limit is None:
            max_length = self.spec.defaults.get("max_length")
            limit = (int(max_length) - len(prompt)) if max_length is not None else room
        if not isinstance(limit, int) or limit < 1:
            raise BadInputError(f"max_new_tokens must be an integer of at least 1, got {limit!r}")
        if not isinstance(beams, int) or beams < 1:
            raise BadInputError(f"num_beams must be an integer of at least 1, got {beams!r}")
        limit = min(limit, room)
        if limit < 1:
            raise BadInputError(
                f"the decoder prompt of {len(prompt)} tokens leaves no room in the model's "
                f"{self.spec.max_target_positions} positions; use a shorter prompt"
            )
        spec = self.spec
        rules = DecodingRules(
            prompt_length=len(prompt),
            max_length=len(prompt) + limit,
            eos_ids=frozenset(spec.eos_token_ids),
            suppress=tuple(spec.suppress_tokens),
            begin_suppress=spec.begin_suppress_tokens,
            forced_bos=spec.forced_bos_token_id,
            forced_eos=spec.forced_eos_token_id,
            min_length=int(settings.get("min_length", 0) or 0),
            no_repeat_ngram=int(settings.get("no_repeat_ngram_size", 0) or 0),
            task_rule=task_rule,
        )
        if beams == 1:
            rows = states.shape[0]
            stepper = self.stepper(states, mask, np.tile(prompt, (rows, 1)), rules, limit, log_probs=False)
            plan = RowPlan(
                LogitsChooser(GenerationOptions(max_new_tokens=limit)), frozenset(spec.eos_token_ids), limit
            )
            out: list[list[int]] = [[] for _ in range(rows)]
            done = [False] * rows
            for step in decode(
                stepper,
                stepper.logits,
                stepper.ids,
                [plan] * rows,
                [_Silent() for _ in range(rows)],
                spec.pad_token_id,
            ):
                for row in range(rows):
                    if not done[row]:
                        out[row].append(int(step.tokens[row]))
                        done[row] = step.finished[row] is not None
            return out
        beam_settings = BeamSettings(
            beams, float(settings.get("length_penalty", 1.0)), settings.get("early_stopping", False)
        )
        results = []
        for row in range(states.shape[0]):
            row_mask = mask[row : row + 1] if mask is not None else None
            stepper = self.stepper(states[row : row + 1], row_mask, np.tile(prompt, (beams, 1)), rules, limit)
            results.append(beam_search(stepper, limit, spec.eos_token_ids, spec.pad_token_id, beam_settings))
        return results

    run_options: ClassVar[frozenset[str]] = frozenset({"max_new_tokens", "num_beams"})
    """The keyword options `run_with` takes (what `edge run` flags may set)."""

    def run_with(self, items: Sequence[Any], options: Mapping[str, Any]) -> list[Any]:
        """`run_items` with `options` (a subset of `run_options`)."""
        raise NotImplementedError(f"{type(self).__name__} has no run options")

    def speed(self, variant: str, runs: int = 3) -> SpeedRow:
        """This pipeline's speed on a sample input, after one warm-up (`edge bench`)."""
        raise NotImplementedError(f"{type(self).__name__} has no speed benchmark")

    def close(self) -> None:
        """Release the encoder and decoder sessions."""
        for runner in self.decoders:
            runner.close()
        super().close()

    def held_out_outputs(self, max_new_tokens: int) -> list[Seq2SeqOutput]:
        """Greedy outputs of at most `max_new_tokens` for the task's held-out inputs (quantization compares a
        variant's with fp32's)."""
        raise NotImplementedError(f"{type(self).__name__} has no held-out inputs")
