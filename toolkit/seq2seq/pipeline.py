"""`Seq2SeqPipeline`: an encoder `Runner` (the package's variant file) plus its two decoder sessions, and the
decoding both encoder-decoder tasks share: greedy through `toolkit.generation.decode`, or beam search."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np

from toolkit.errors import BadInputError
from toolkit.generation.decoding import RowPlan, decode
from toolkit.generation.sampling import GenerationOptions, LogitsChooser
from toolkit.manifest import ModelPackage, Seq2SeqSpec, seq2seq_files
from toolkit.runner import Runner
from toolkit.seq2seq.decoding import BeamSettings, DecodingRules, Seq2SeqStepper, beam_search
from toolkit.seq2seq.timestamps import TimestampRule
from toolkit.tasks.base import Pipeline, Task
from toolkit.tasks.modality import Modality

__all__ = ["Seq2SeqOutput", "Seq2SeqPipeline"]

_M = TypeVar("_M", bound=Modality)


@dataclass(frozen=True)
class Seq2SeqOutput:
    """One input's decoded text and new token ids (its eos included when it ended on one)."""

    text: str
    token_ids: tuple[int, ...]


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

    def _setting(self, name: str, value: Any, default: Any) -> Any:
        return value if value is not None else self.spec.defaults.get(name, default)

    def decode_rows(
        self,
        states: np.ndarray,
        mask: np.ndarray | None,
        prompt: Sequence[int],
        max_new_tokens: int | None,
        num_beams: int | None,
        extra_suppress: Sequence[int] = (),
        timestamps: TimestampRule | None = None,
    ) -> list[list[int]]:
        """New token ids per row of the encoder `states` [rows, ...], each decoded from `prompt` (with Whisper's
        timestamp rule when `timestamps` is given)."""
        beams = int(self._setting("num_beams", num_beams, 1))
        limit = self._setting("max_new_tokens", max_new_tokens, None)
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
            suppress=tuple(spec.suppress_tokens) + tuple(extra_suppress),
            begin_suppress=spec.begin_suppress_tokens,
            forced_bos=spec.forced_bos_token_id,
            forced_eos=spec.forced_eos_token_id,
            min_length=int(spec.defaults.get("min_length", 0) or 0),
            no_repeat_ngram=int(spec.defaults.get("no_repeat_ngram_size", 0) or 0),
            timestamps=timestamps,
        )
        first, with_past = (r.session for r in self.decoders)
        if beams == 1:
            rows = states.shape[0]
            stepper = Seq2SeqStepper(
                first,
                with_past,
                spec,
                states,
                mask,
                np.tile(np.asarray(prompt, dtype=np.int64), (rows, 1)),
                rules,
            )
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
        settings = BeamSettings(
            beams,
            float(spec.defaults.get("length_penalty", 1.0)),
            spec.defaults.get("early_stopping", False),
        )
        results = []
        for row in range(states.shape[0]):
            repeated = np.repeat(states[row : row + 1], beams, axis=0)
            row_mask = np.repeat(mask[row : row + 1], beams, axis=0) if mask is not None else None
            stepper = Seq2SeqStepper(
                first,
                with_past,
                spec,
                repeated,
                row_mask,
                np.tile(np.asarray(prompt, dtype=np.int64), (beams, 1)),
                rules,
            )
            results.append(beam_search(stepper, limit, spec.eos_token_ids, spec.pad_token_id, settings))
        return results

    def close(self) -> None:
        """Release the encoder and decoder sessions."""
        for runner in self.decoders:
            runner.close()
        super().close()
