"""`TextGenerator`: text in, text out, for a causal-LM package (decoder with its KV cache)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import numpy as np

from toolkit.decoding.decoder import DecoderStepper
from toolkit.decoding.detokenizer import IncrementalDetokenizer
from toolkit.decoding.grammar import GrammarEngine, constraint_from
from toolkit.decoding.loop import (
    Generation,
    GenerationEvent,
    GenerationTimings,
    RowPlan,
    TokenLogprob,
    decode,
)
from toolkit.decoding.sampling import GenerationOptions, LogitsChooser, options_from
from toolkit.errors import BadInputError
from toolkit.manifest import FP32_VARIANT, GenerationSpec, ModelPackage
from toolkit.providers import ProviderConfig, probe_provider, provider_names
from toolkit.runner import Runner
from toolkit.tasks.base import Pipeline
from toolkit.tasks.generate.chat import Message, TemplateBudget, render_chat
from toolkit.tasks.generate.task import GenerateTask
from toolkit.tasks.modality import TextModality

__all__ = [
    "GENERATE_TASK",
    "Prompt",
    "TextGenerator",
    "TextStream",
    "TokenPrompt",
]

GENERATE_TASK = GenerateTask.name
# the variant CUDA runs by default: GroupQueryAttention on CUDA takes float16 only, and its cache halves
FP16_VARIANT = "fp16"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenPrompt:
    """A prompt given as token ids, used as they are (benchmarks, callers with their own tokenizer)."""

    ids: tuple[int, ...]


Prompt = str | Sequence[Message] | TokenPrompt


class TextStream:
    """Text pieces of one prompt as they settle; `generation` holds the full result once iteration ends."""

    def __init__(self, pieces: Iterator[tuple[str, Generation | None]]) -> None:
        self._pieces = pieces
        self.generation: Generation | None = None

    def __iter__(self) -> Iterator[str]:
        for piece, done in self._pieces:
            if done is not None:
                self.generation = done
            if piece:
                yield piece


class TextGenerator(Pipeline[TextModality]):
    """Generates text with a ``generate`` package: greedy or sampled, batched, streamed, chat templated."""

    task_class = GenerateTask
    task: GenerateTask

    def __init__(self, package: ModelPackage, runner: Runner, task: GenerateTask | None = None) -> None:
        Pipeline.refuse_other_task(package, GenerateTask.name)
        super().__init__(package, runner, task)
        self.spec: GenerationSpec = self.task.spec
        self.tokenizer = self.task.tokenizer
        self.task.check_graph(runner.inputs, runner.outputs)
        self.device, self.device_id = runner.device
        self.grammars = GrammarEngine(self.tokenizer.to_str, self.spec.eos_token_ids)

    @classmethod
    def load(
        cls,
        path: str | Path | ModelPackage,
        providers: str | Sequence[str] | None = None,
        *,
        variant: str | None = None,
        threads: int | None = None,
        strict: bool = False,
        config: ProviderConfig | None = None,
    ) -> TextGenerator:
        """Open a ``generate`` package and its `variant` on `providers` (default: the best available). Without a
        `variant`, CUDA runs the package's fp16 variant when it has one, anything else fp32; CUDA asked for
        first but unusable here falls back to fp32 on CPU with one warning (an error with `strict`)."""
        package = path if isinstance(path, ModelPackage) else ModelPackage.open(path)
        if variant is None:
            variant, providers = _default_variant(package, providers, strict)
        return super().load(
            package, variant=variant, providers=providers, threads=threads, strict=strict, config=config
        )

    def run_items(self, items: Sequence[Any]) -> list[Any]:
        """One generation per prompt, as one batch, with the model's default settings."""
        generations: list[Generation] = self.generate(list(items))
        return generations

    # -- prompts ------------------------------------------------------------------------------

    def _special(self, token_id: int | None) -> str | None:
        return self.tokenizer.id_to_token(token_id) if token_id is not None else None

    def apply_chat_template(
        self,
        messages: Sequence[Message],
        add_generation_prompt: bool = True,
        budget: TemplateBudget | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> str:
        """The prompt text the model's chat template makes of `messages` (rendered within `budget`, with the
        functions of `tools` when given)."""
        return render_chat(
            self.spec.chat_template,
            messages,
            {
                "bos_token": self._special(self.spec.bos_token_id),
                "eos_token": self._special(self.spec.eos_token_ids[0] if self.spec.eos_token_ids else None),
                "pad_token": self._special(self.spec.pad_token_id),
            },
            add_generation_prompt,
            budget,
            tools,
        )

    def encode(
        self,
        prompt: Prompt,
        budget: TemplateBudget | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> tuple[str, list[int]]:
        """The prompt text and its ids: a string as the tokenizer encodes it (special tokens added), messages
        through the chat template (whose text already holds them; rendered within `budget`, with `tools`)."""
        if isinstance(prompt, str):
            if not prompt:
                raise BadInputError("prompt is empty; pass some text")
            return prompt, self.tokenizer.encode(prompt).ids
        if isinstance(prompt, TokenPrompt):
            return self.tokenizer.decode(list(prompt.ids)), list(prompt.ids)
        if not isinstance(prompt, list | tuple):
            raise BadInputError(
                f"prompt must be a string or a list of chat messages, got {type(prompt).__name__}"
            )
        text = self.apply_chat_template(prompt, budget=budget, tools=tools)
        return text, self.tokenizer.encode(text, add_special_tokens=False).ids

    def _pad(self, encoded: Sequence[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Left-padded ids and mask: each row's last token sits in the last column."""
        longest = max(len(ids) for ids in encoded)
        ids = np.full((len(encoded), longest), self.spec.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(encoded), longest), dtype=np.int64)
        for row, tokens in enumerate(encoded):
            ids[row, longest - len(tokens) :] = tokens
            mask[row, longest - len(tokens) :] = 1
        return ids, mask

    def options(self, **overrides: Any) -> GenerationOptions:
        """The model's default settings with `overrides` (None means keep the default); json_schema,
        json_object, regex or grammar (Lark) become the options' `constraint`."""
        constraint = constraint_from(
            overrides.pop("json_schema", None),
            bool(overrides.pop("json_object", False)),
            overrides.pop("regex", None),
            overrides.pop("grammar", None),
        )
        return options_from(self.spec.defaults, {**overrides, "constraint": constraint})

    # -- generation ---------------------------------------------------------------------------

    def check_length(self, ids: Sequence[int]) -> None:
        """A BadInputError when a prompt of `ids` leaves no position for a new token."""
        if not ids:
            raise BadInputError("a prompt encodes to no tokens; pass some text")
        if len(ids) >= self.spec.max_positions:
            raise BadInputError(
                f"prompt of {len(ids)} tokens does not fit the model's {self.spec.max_positions} positions "
                "(one is needed for the first new token); shorten the prompt"
            )

    def detokenizer(self, options: GenerationOptions) -> IncrementalDetokenizer:
        """A row's incremental detokenizer (special tokens dropped) watching `options.stop`."""
        return IncrementalDetokenizer(
            lambda ids: self.tokenizer.decode(list(ids), skip_special_tokens=True), options.stop
        )

    def row_plan(self, options: GenerationOptions, room: int) -> RowPlan:
        """A row's rules under `options`, its limit capped at the `room` left in the model's positions."""
        return RowPlan(
            LogitsChooser(options),
            frozenset(() if options.ignore_eos else self.spec.eos_token_ids),
            min(options.max_new_tokens, room),
            self.grammars.row(options.constraint) if options.constraint is not None else None,
            options.top_logprobs,
        )

    def run_batch(
        self, prompts: Sequence[Prompt], options: GenerationOptions | Sequence[GenerationOptions]
    ) -> Iterator[GenerationEvent]:
        """Run `prompts` as one left-padded batch, each with its own options (or one for all): events carry
        each row's settled text as it comes and its `Generation` when the row finishes."""
        per_row = [options] * len(prompts) if isinstance(options, GenerationOptions) else list(options)
        if len(per_row) != len(prompts):
            raise BadInputError(f"{len(prompts)} prompts but {len(per_row)} option sets; pass one per prompt")
        texts, encoded = zip(*(self.encode(p) for p in prompts), strict=True)
        for ids in encoded:
            self.check_length(ids)
        input_ids, mask = self._pad(encoded)
        prompt = input_ids.shape[1]
        room = self.spec.max_positions - prompt
        plans = [self.row_plan(o, room) for o in per_row]
        watchers = [self.detokenizer(o) for o in per_row]
        started = time.perf_counter()
        stepper = DecoderStepper(
            self.runner.session,
            self.spec,
            input_ids,
            mask,
            prompt + max(p.max_new_tokens for p in plans),
            self.device,
            self.device_id,
        )
        prefill_ms = (time.perf_counter() - started) * 1e3
        tokens: list[list[int]] = [[] for _ in prompts]
        logprobs: list[list[TokenLogprob]] = [[] for _ in prompts]
        finished: set[int] = set()
        first_ms = 0.0
        decode_s = 0.0
        steps = decode(stepper, stepper.logits, input_ids, plans, watchers, self.spec.pad_token_id)
        for index, step in enumerate(steps):
            if index == 0:
                first_ms = (time.perf_counter() - started) * 1e3
            else:
                decode_s += step.seconds
            for row, (token, piece, reason, logprob) in enumerate(
                zip(step.tokens, step.pieces, step.finished, step.logprobs, strict=True)
            ):
                if row in finished:
                    continue
                tokens[row].append(int(token))
                chosen = (logprob,) if logprob is not None else ()
                logprobs[row].extend(chosen)
                if reason is None:
                    if piece or chosen:
                        yield GenerationEvent(row, piece, None, chosen)
                    continue
                finished.add(row)
                timings = GenerationTimings(
                    prompt_tokens=len(encoded[row]),
                    prefill_ms=prefill_ms,
                    first_token_ms=first_ms,
                    new_tokens=len(tokens[row]),
                    decode_ms=decode_s * 1e3,
                    decode_tokens_per_s=(index / decode_s) if decode_s > 0 else 0.0,
                    total_ms=(time.perf_counter() - started) * 1e3,
                )
                generation = Generation(
                    watchers[row].text, tuple(tokens[row]), reason, texts[row], timings, tuple(logprobs[row])
                )
                yield GenerationEvent(row, piece + watchers[row].finish(), generation, chosen)

    @overload
    def generate(self, prompt: str | TokenPrompt, **settings: Any) -> Generation: ...
    @overload
    def generate(self, prompt: Sequence[Message], **settings: Any) -> Generation: ...
    @overload
    def generate(
        self, prompt: Sequence[str] | Sequence[TokenPrompt] | Sequence[Sequence[Message]], **settings: Any
    ) -> list[Generation]: ...

    def generate(self, prompt: Any, **settings: Any) -> Generation | list[Generation]:
        """Generate for a prompt, a chat (a list of {"role", "content"}), or a list of those (one left-padded
        batch, each row stopping on its own). Settings: max_new_tokens, do_sample, temperature, top_k, top_p,
        repetition_penalty, presence_penalty, frequency_penalty, stop, seed, top_logprobs; unset ones come from
        the model's generation_config. One of json_schema (a dict or JSON text), json_object=True, regex or
        grammar (Lark) holds the text to it (needs llguidance)."""
        options = self.options(**settings)
        batch = _as_batch(prompt)
        results: dict[int, Generation] = {}
        for event in self.run_batch(batch or [prompt], options):
            if event.generation is not None:
                results[event.row] = event.generation
        ordered = [results[row] for row in range(len(results))]
        return ordered if batch is not None else ordered[0]

    def stream(self, prompt: Prompt, **settings: Any) -> TextStream:
        """Like `generate` for one prompt or chat, as text pieces whose concatenation is the full text."""
        if _as_batch(prompt) is not None:
            raise BadInputError("stream() takes one prompt or chat; call it once per prompt")
        options = self.options(**settings)
        return TextStream((e.text, e.generation) for e in self.run_batch([prompt], options))


def _default_variant(
    package: ModelPackage, providers: str | Sequence[str] | None, strict: bool
) -> tuple[str, str | Sequence[str] | None]:
    """(variant, providers) for a load that names no variant: fp16 (when the package has it) where CUDA works,
    else fp32, dropping an unusable CUDA for CPU unless `strict` (the runner then says why it cannot run)."""
    names = provider_names(providers) if providers is not None else ()
    if not names or names[0] != "cuda":
        return FP32_VARIANT, providers
    reason = probe_provider("cuda")
    if reason is None:
        if FP16_VARIANT in package.manifest.variants:
            return FP16_VARIANT, providers
        generation = package.manifest.generation
        if generation is not None and generation.in_place:
            log.warning(
                "package %s has no fp16 variant: its fp32 graph decodes on CUDA at about CPU speed (322 tokens/s "
                "against fp16's 799 for a 100M Llama on an H200); add one with `edge quantize %s --method fp16`",
                package.path.name,
                package.path,
            )
        return FP32_VARIANT, providers
    if strict:
        return FP32_VARIANT, providers
    log.warning("CUDA is unavailable (%s); generating with the fp32 variant on CPU", reason)
    return FP32_VARIANT, [name for name in names if name != "cuda"] or ["cpu"]


def _as_batch(prompt: Any) -> list[Prompt] | None:
    """The prompts of a batch, or None when `prompt` is a single prompt or a single chat."""
    if isinstance(prompt, str | TokenPrompt) or not isinstance(prompt, Sequence):
        return None
    if prompt and all(isinstance(p, Mapping) for p in prompt):
        return None
    if not prompt:
        raise BadInputError("prompt list is empty; pass at least one prompt")
    return list(prompt)
