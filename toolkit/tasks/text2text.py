"""``text2text``: translation and summarisation with BART, T5, Marian or mBART:
`Seq2SeqGenerator.generate(texts, max_new_tokens=None, num_beams=None)`, greedy or beam search, as
transformers' ``generate`` with the model's generation config."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from toolkit.checks import text_list
from toolkit.corpus import HELD_OUT_SENTENCES
from toolkit.errors import BadInputError
from toolkit.preprocess import clean_up_tokenization, cleans_up_spaces, read_decoder_tokenizer
from toolkit.tasks.base import DecodeCall, DecodePlan, DecodingFace, ServedTensor, bytes_array, token_id_rows
from toolkit.tasks.encoder_decoder import (
    DECODING_SETTINGS,
    Seq2SeqOutput,
    Seq2SeqPipeline,
    Seq2SeqTask,
    checked_settings,
)
from toolkit.tasks.modality import TextModality

if TYPE_CHECKING:
    from tokenizers import Tokenizer

__all__ = ["PIPELINE", "TASK", "GenerationSpeed", "Seq2SeqGenerator", "Text2TextTask"]


class Text2TextTask(Seq2SeqTask[TextModality]):
    """An encoder over the tokenized text; the pipeline runs the decoder."""

    name = "text2text"
    modality = TextModality
    source_hint = " from a BART, T5, Marian or mBART model directory with its tokenizer.json"
    run_input = "text"

    def run_lines(self, items: Sequence[str], results: Sequence[Any]) -> list[str]:
        """``'input' -> output`` per text."""
        return [f"{item[:50]!r} -> {result.text}" for item, result in zip(items, results, strict=True)]

    def run_json(self, results: Sequence[Any]) -> dict[str, Any]:
        """``generations``: one per text."""
        return {"generations": list(results)}


@dataclass(frozen=True)
class GenerationSpeed:
    """Text-to-text speed: median wall seconds of one greedy generation of `new_tokens` from `input_tokens`."""

    variant: str
    input_tokens: int
    new_tokens: int
    median_seconds: float
    runs: int

    @property
    def tokens_per_s(self) -> float:
        """New tokens per second, encoder included."""
        return self.new_tokens / self.median_seconds

    def line(self) -> str:
        """``fp32: 32 new tokens in 41.2 ms (776.7 tokens/s, ...)``."""
        return (
            f"{self.variant}: {self.new_tokens} new tokens in {self.median_seconds * 1000:.1f} ms "
            f"({self.tokens_per_s:.1f} tokens/s, greedy, {self.input_tokens}-token input, encoder included, "
            f"median of {self.runs})"
        )


class Seq2SeqGenerator(Seq2SeqPipeline[TextModality]):
    """Text to text: `Seq2SeqGenerator.load(path).generate(texts)`."""

    task_class = Text2TextTask
    task: Text2TextTask

    @cached_property
    def tokenizer(self) -> Tokenizer:
        """The package's tokenizer (no padding or truncation)."""
        tokenizer: Tokenizer = read_decoder_tokenizer(
            self.package.asset(self.task.data.pre.tokenizer, "tokenizer")
        )
        return tokenizer

    def generate(
        self,
        texts: Sequence[str],
        *,
        max_new_tokens: int | None = None,
        num_beams: int | None = None,
        length_penalty: float | None = None,
        early_stopping: bool | str | None = None,
        no_repeat_ngram_size: int | None = None,
        min_length: int | None = None,
    ) -> list[Seq2SeqOutput]:
        """One output per text: greedy (`num_beams` 1) or beam search, as transformers' ``generate`` with the
        same arguments; unset settings come from the model's generation config."""
        overrides = {
            "length_penalty": length_penalty,
            "early_stopping": early_stopping,
            "no_repeat_ngram_size": no_repeat_ngram_size,
            "min_length": min_length,
        }
        results = []
        for text in text_list(texts):
            ids = self.tokenizer.encode(text).ids[: self.task.data.pre.max_length]
            feeds = {
                "input_ids": np.asarray([ids], dtype=np.int64),
                "attention_mask": np.ones((1, len(ids)), dtype=np.int64),
            }
            states = self.runner.run(feeds)[self.task.output_name(self.runner.outputs)]
            new = self.decode_rows(
                states,
                feeds["attention_mask"],
                self.spec.decoder_start_ids,
                max_new_tokens,
                num_beams,
                overrides,
            )[0]
            text = str(self.tokenizer.decode(new, skip_special_tokens=True))
            if cleans_up_spaces(self.package.path):
                text = clean_up_tokenization(text)
            results.append(Seq2SeqOutput(text.strip(), tuple(new)))
        return results

    def run_items(self, items: Sequence[Any]) -> list[Any]:
        """Outputs for the texts (`edge run --text`)."""
        return self.generate(items)

    def run_with(self, items: Sequence[Any], options: Mapping[str, Any]) -> list[Any]:
        """Outputs for the texts with `generate`'s keyword options (`edge run --text --num-beams 4`)."""
        return self.generate(items, **options)

    def speed(self, variant: str, runs: int = 3, new_tokens: int = 32) -> GenerationSpeed:
        """Median time of a greedy generation of `new_tokens` (eos held back until then) from the held-out
        sentences as one input, after one warm-up (`edge bench`)."""
        import time

        text = " ".join(HELD_OUT_SENTENCES[:4])
        first = len(self.spec.decoder_start_ids)

        # min_length counts the decoder prompt too (as in transformers): eos stays out until new_tokens are made
        def run() -> int:
            outputs = self.generate(
                [text], max_new_tokens=new_tokens, num_beams=1, min_length=first + new_tokens
            )
            return len(outputs[0].token_ids)

        made = run()
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            run()
            times.append(time.perf_counter() - started)
        inputs = min(len(self.tokenizer.encode(text).ids), self.task.data.pre.max_length)
        return GenerationSpeed(variant, inputs, made, float(np.median(times)), runs)

    # -- served as NAME-text (`toolkit.tasks.base.ServesDecoding`) -------------------------------------------

    def decoding_face(self) -> DecodingFace:
        """``NAME-text``: UTF-8 texts in; generated texts and their token ids out."""
        return DecodingFace(
            "text",
            "edge_text2text_pipeline",
            "text",
            "UTF-8 texts",
            (ServedTensor("text", "BYTES", (-1,)), ServedTensor("token_ids", "INT64", (-1, -1))),
            self.spec.max_target_positions,
        )

    def plan_decode(self, call: DecodeCall) -> DecodePlan:
        """Check the texts (UTF-8, each holding a token) and `generate`'s settings; the request's tokens (rows x
        longest) count against the server's limit; each text is then generated alone."""
        settings = checked_settings({name: call.parameters.get(name) for name in DECODING_SETTINGS})
        try:
            texts = tuple(item.decode("utf-8") for item in call.data)
        except UnicodeDecodeError:
            raise BadInputError("input 'text': an element is not valid UTF-8; send UTF-8 text") from None
        limit = self.task.data.pre.max_length
        lengths = [min(len(e.ids), limit) for e in self.tokenizer.encode_batch(list(texts))]
        if 0 in lengths:
            raise BadInputError(
                f"input 'text' element {lengths.index(0)} holds no tokens (an empty text); send some text"
            )

        def decode(text: str) -> Seq2SeqOutput:
            (output,) = self.generate(
                [text], max_new_tokens=call.max_new_tokens, num_beams=call.num_beams, **settings
            )
            return output

        def outputs(generated: Sequence[Seq2SeqOutput]) -> dict[str, np.ndarray]:
            return {
                "text": bytes_array([g.text for g in generated]),
                "token_ids": token_id_rows([g.token_ids for g in generated]),
            }

        return DecodePlan(texts, decode, outputs, call.outputs, len(texts) * max(lengths))

    def held_out_outputs(self, max_new_tokens: int) -> list[Seq2SeqOutput]:
        """Greedy outputs for eight held-out sentences."""
        return self.generate(list(HELD_OUT_SENTENCES[:8]), max_new_tokens=max_new_tokens, num_beams=1)


TASK = Text2TextTask
PIPELINE = Seq2SeqGenerator
