"""Structured generation (issue 23): grammar-constrained decoding (JSON Schema, json_object, regex, Lark),
log-probabilities, OpenAI's presence/frequency penalties, ``n`` and tools, through the library, the CLI and a
real `edge serve` driven by the official openai client; on a tiny random Llama whose text is noise unless a
grammar holds it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_generate import CHAT_TEMPLATE, _model, _tokenizer

from toolkit.errors import BadInputError
from toolkit.generation import Generation, GenerationOptions, TextGenerator
from toolkit.generation.continuous import ContinuousBatch
from toolkit.generation.decoder import DecoderStepper

jsonschema = pytest.importorskip("jsonschema")

# A chat template that renders `tools` as transformers passes them (a list of {"type": "function", ...}).
TOOLS_TEMPLATE = "{% if tools %}{{ bos_token }}tools: {{ tools | tojson }}\n{% endif %}" + CHAT_TEMPLATE
# Bounded everywhere, so a random model always completes it within the token budget.
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 6},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "member": {"type": "boolean"},
        "level": {"enum": ["low", "mid", "high"]},
    },
    "required": ["name", "age", "member", "level"],
    "additionalProperties": False,
}


@pytest.fixture(scope="session")
def llama_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random Llama of test_generate with a chat template that renders tools, converted once."""
    from transformers import PreTrainedTokenizerFast

    from converters import convert

    root = tmp_path_factory.mktemp("structured")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_tokenizer(), bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    tokenizer.chat_template = TOOLS_TEMPLATE
    _model("llama", len(tokenizer)).save_pretrained(root / "source")
    tokenizer.save_pretrained(root / "source")
    return convert(str(root / "source"), root / "package").path


@pytest.fixture(scope="session")
def generator(llama_package: Path) -> TextGenerator:
    return TextGenerator.load(llama_package, "cpu")


def _logits(generator: TextGenerator, ids: list[int]) -> np.ndarray:
    """The library's next-token logits after `ids` (one prefill of them)."""
    prompt = np.asarray([ids], dtype=np.int64)
    stepper = DecoderStepper(
        generator.runner.session, generator.spec, prompt, np.ones_like(prompt), len(ids) + 1
    )
    return np.asarray(stepper.logits, dtype=np.float64).reshape(-1)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max()
    return shifted - np.log(np.exp(shifted).sum())


def test_json_schema_holds_every_sampled_answer(generator: TextGenerator) -> None:
    free = generator.generate("Edge", max_new_tokens=40, do_sample=True, seed=0)
    with pytest.raises(json.JSONDecodeError):  # the random model alone writes noise, not JSON
        json.loads(free.text)
    for seed in range(10):
        result = generator.generate("Edge", json_schema=PERSON, max_new_tokens=80, do_sample=True, seed=seed)
        assert result.finish_reason == "eos", result
        jsonschema.validate(json.loads(result.text), PERSON)


def test_regex_lark_and_json_object(generator: TextGenerator) -> None:
    import re

    for seed in range(5):
        settings: dict[str, Any] = {"do_sample": True, "seed": seed, "max_new_tokens": 30}
        assert re.fullmatch(
            r"[0-9]{3}-[a-z]{2}", generator.generate("Edge", regex=r"[0-9]{3}-[a-z]{2}", **settings).text
        )
        answer = generator.generate(
            "Edge", grammar='start: "yes" | "no" | "maybe " NUMBER\n%import common.NUMBER', **settings
        )
        assert answer.text in ("yes", "no") or re.fullmatch(r"maybe [0-9.eE+-]+", answer.text), answer.text
    document = generator.generate("Edge", json_object=True, max_new_tokens=12)
    assert document.text.startswith("{")
    assert document.finish_reason == "length"


def test_bad_constraints_are_one_line_errors(generator: TextGenerator) -> None:
    with pytest.raises(BadInputError, match="pass one of json_schema"):
        generator.generate("Edge", json_schema=PERSON, regex="a+")
    with pytest.raises(BadInputError, match="grammar is not valid"):
        generator.generate("Edge", grammar="start: undefined_rule")
    with pytest.raises(BadInputError, match="json_schema is not JSON"):
        generator.generate("Edge", json_schema="{nope")
    with pytest.raises(BadInputError, match="top_logprobs must be"):
        generator.generate("Edge", top_logprobs=21)


def test_mixed_rows_in_one_batch_decode_as_alone(generator: TextGenerator) -> None:
    """A batch of a schema row, a free row and a regex row: each row's tokens are those it gets alone."""
    rows = [
        GenerationOptions(
            max_new_tokens=40,
            do_sample=True,
            seed=3,
            constraint=generator.options(json_schema=PERSON).constraint,
        ),
        GenerationOptions(max_new_tokens=25, do_sample=True, seed=4),
        GenerationOptions(max_new_tokens=20, constraint=generator.options(regex="[a-f]{4,9}").constraint),
    ]
    prompts = ["Edge", "The quick brown fox", "Edge inference"]
    together = {e.row: e.generation for e in generator.run_batch(prompts, rows) if e.generation is not None}
    for row, (prompt, options) in enumerate(zip(prompts, rows, strict=True)):
        alone = _alone(generator, prompt, options)
        assert together[row].token_ids == alone.token_ids, row
    # and in the server's step-level batch, rows joining at different steps
    batch = ContinuousBatch(generator)
    finished: dict[int, tuple[int, ...]] = {}
    for key, (prompt, options) in enumerate(zip(prompts, rows, strict=True)):
        batch.add(key, prompt, options)
        for event in batch.step():
            if event.generation is not None:
                finished[event.row] = event.generation.token_ids
    while batch.size:
        for event in batch.step():
            if event.generation is not None:
                finished[event.row] = event.generation.token_ids
    for row, (prompt, options) in enumerate(zip(prompts, rows, strict=True)):
        assert finished[row] == _alone(generator, prompt, options).token_ids, row


def _alone(generator: TextGenerator, prompt: str, options: GenerationOptions) -> Generation:
    return next(e.generation for e in generator.run_batch([prompt], options) if e.generation is not None)


def test_logprobs_are_log_softmax_of_the_library_logits(generator: TextGenerator) -> None:
    result = generator.generate("Edge", max_new_tokens=6, do_sample=True, seed=1, top_logprobs=5)
    _, prompt = generator.encode("Edge")
    assert len(result.logprobs) == len(result.token_ids)
    for index, entry in enumerate(result.logprobs):
        expected = _log_softmax(_logits(generator, prompt + list(result.token_ids[:index])))
        assert entry.token == result.token_ids[index]
        assert abs(entry.logprob - expected[entry.token]) < 1e-4
        best = np.argsort(-expected, kind="stable")[:5]
        assert [t for t, _ in entry.top] == best.tolist()
        assert np.allclose([lp for _, lp in entry.top], expected[best], atol=1e-4)


def _reference_penalized(
    generator: TextGenerator, prompt: list[int], steps: int, presence: float, frequency: float
) -> list[int]:
    """Greedy decoding with OpenAI's definition written out: mu[j] - c[j] * frequency - (c[j] > 0) * presence,
    c[j] the number of times token j was generated so far."""
    tokens: list[int] = []
    for _ in range(steps):
        logits = _logits(generator, prompt + tokens)
        counts = np.bincount(np.asarray(tokens, dtype=np.int64), minlength=logits.shape[0]).astype(np.float64)
        tokens.append(int(np.argmax(logits - counts * frequency - (counts > 0) * presence)))
    return tokens


@pytest.mark.parametrize(("presence", "frequency"), [(0.0, 1.5), (2.0, 0.0), (0.7, -0.4)])
def test_presence_and_frequency_penalties_follow_openai(
    generator: TextGenerator, presence: float, frequency: float
) -> None:
    _, prompt = generator.encode("Edge")
    plain = generator.generate("Edge", max_new_tokens=40, ignore_eos=True)
    result = generator.generate(
        "Edge", max_new_tokens=40, ignore_eos=True, presence_penalty=presence, frequency_penalty=frequency
    )
    assert result.token_ids != plain.token_ids  # greedy repeats tokens within 40: the penalties bite
    assert list(result.token_ids) == _reference_penalized(generator, prompt, 40, presence, frequency)


def test_toolkit_imports_without_llguidance_and_names_the_extra(llama_package: Path) -> None:
    """llguidance is optional: blocked from import, toolkit still loads and generates, and a schema request
    says what to install."""
    code = (
        "import sys; sys.modules['llguidance'] = None\n"
        "from toolkit.generation import TextGenerator\n"
        "from toolkit.errors import BadInputError\n"
        f"g = TextGenerator.load({str(llama_package)!r}, 'cpu')\n"
        "print(len(g.generate('Edge', max_new_tokens=3).token_ids))\n"
        "try:\n    g.generate('Edge', json_object=True)\nexcept BadInputError as e:\n    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.splitlines() == [
        "3",
        "constrained decoding needs llguidance, which is not installed; pip install 'edge-toolkit[grammar]' (llguidance)",
    ]
