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
from test_generate import CHAT_TEMPLATE, _tokenizer

from toolkit.decoding import Generation, GenerationOptions
from toolkit.decoding.continuous import ContinuousBatch
from toolkit.decoding.decoder import DecoderStepper
from toolkit.errors import BadInputError
from toolkit.tasks.generate import TextGenerator

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


def _llama(vocab: int) -> Any:
    """test_generate's tiny Llama with 1024 positions: room for a prompt listing tools and a whole JSON answer."""
    import torch
    import transformers as tf

    torch.manual_seed(0)
    config = tf.LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=1024,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return tf.LlamaForCausalLM(config)


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
    _llama(len(tokenizer)).save_pretrained(root / "source")
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
        result = generator.generate("Edge", json_schema=PERSON, max_new_tokens=150, do_sample=True, seed=seed)
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


def test_n_rows_of_one_prompt_share_one_prefill(
    generator: TextGenerator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`add_rows` prefills a prompt once for several rows (one prefill run, one regroup), each row decoding as
    a request of its own with its seed would."""
    from toolkit.decoding.decoder import DecoderStepper

    prefills = 0
    original = DecoderStepper.__init__

    def counted(self: Any, *args: Any, **kwargs: Any) -> None:  # a prefill (resume() regroups without one)
        nonlocal prefills
        prefills += 1
        original(self, *args, **kwargs)

    rows = {key: GenerationOptions(max_new_tokens=10, do_sample=True, seed=20 + key) for key in range(4)}
    batch = ContinuousBatch(generator)
    with monkeypatch.context() as patch:
        patch.setattr(DecoderStepper, "__init__", counted)
        batch.add_rows(rows, "Edge inference")
    assert (prefills, batch.regroups, batch.size) == (1, 1, 4)
    finished: dict[int, tuple[int, ...]] = {}
    while batch.size:
        finished.update({e.row: e.generation.token_ids for e in batch.step() if e.generation is not None})
    assert len(set(finished.values())) > 1
    for key, options in rows.items():
        assert finished[key] == _alone(generator, "Edge inference", options).token_ids


def test_n_rows_of_a_long_prompt_share_its_chunked_prefill(generator: TextGenerator) -> None:
    """A prompt longer than the prefill chunk waits beside the batch, piece by piece, with all its rows; they
    join together and each decodes as a request of its own would."""
    assert generator.spec.row_lengths  # the graph that prefills in chunks
    prompt = "Edge inference on a small board, piece by piece"
    rows = {key: GenerationOptions(max_new_tokens=6, do_sample=True, seed=40 + key) for key in range(3)}
    batch = ContinuousBatch(generator, prefill_chunk=2)
    batch.add(9, "Edge", GenerationOptions(max_new_tokens=20))
    batch.add_rows(rows, prompt)
    assert batch.size == 4
    assert len(batch.prefilling) == 1
    batch.drop({1})
    assert batch.size == 3
    finished: dict[int, tuple[int, ...]] = {}
    waited = 0
    while batch.size:
        waited += bool(batch.prefilling)
        finished.update({e.row: e.generation.token_ids for e in batch.step() if e.generation is not None})
    assert waited > 2
    assert set(finished) == {0, 2, 9}
    for key in (0, 2):
        assert finished[key] == _alone(generator, prompt, rows[key]).token_ids
    assert finished[9] == _alone(generator, "Edge", GenerationOptions(max_new_tokens=20)).token_ids


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
        "from toolkit.tasks.generate import TextGenerator\n"
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


def test_cli_run_and_chat_take_a_json_schema_file(llama_package: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from toolkit.cli import edge

    schema = tmp_path / "person.json"
    schema.write_text(json.dumps(PERSON), encoding="utf-8")
    runner = CliRunner()
    for seed_prompt in ("Edge", "The quick brown fox"):
        result = runner.invoke(
            edge,
            [
                *("run", str(llama_package), "--prompt", seed_prompt, "--json-schema", str(schema), "--json"),
                *("--max-new-tokens", "150", "--temperature", "1.0"),
            ],
        )
        assert result.exit_code == 0, result.output
        jsonschema.validate(json.loads(json.loads(result.output)["generations"][0]["text"]), PERSON)
    chat = runner.invoke(
        edge,
        ["chat", str(llama_package), "--json-schema", str(schema), "--max-new-tokens", "150"],
        input="hello\nagain\n\n",
    )
    assert chat.exit_code == 0, chat.output
    replies = [line.split("assistant> ", 1)[1] for line in chat.output.splitlines() if "assistant> " in line]
    assert len(replies) == 2
    for reply in replies:
        jsonschema.validate(json.loads(reply), PERSON)
    (tmp_path / "list.json").write_text("[1]", encoding="utf-8")
    for command in (["run", str(llama_package), "--prompt", "x"], ["chat", str(llama_package)]):
        bad = runner.invoke(edge, [*command, "--json-schema", str(tmp_path / "list.json")])
        assert bad.exit_code == 2
        assert "error: --json-schema" in bad.output
        assert "not a JSON Schema object" in bad.output
    alone = runner.invoke(edge, ["run", str(llama_package), "--text", "x", "--json-schema", str(schema)])
    assert alone.exit_code == 2
    assert "pass it with --prompt" in alone.output


# -- the OpenAI routes, through the official client against a real `edge serve` ------------------------------

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 8},
        "unit": {"enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "unit", "days"],
    "additionalProperties": False,
}
TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "Weather", "parameters": WEATHER},
    },
    {"type": "function", "function": {"name": "ping", "parameters": {"type": "object", "properties": {}}}},
]
CHAT = [{"role": "user", "content": "Edge inference"}]


@pytest.fixture(scope="module")
def served(llama_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from serve_process import start_serve

    process = start_serve(
        [llama_package], ["--threads", "1", "--max-n", "4"], tmp_path_factory.mktemp("serve")
    )
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def client(served: Any) -> Any:
    import openai

    return openai.OpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0, timeout=60)


def _name(llama_package: Path) -> str:
    from toolkit.manifest import ModelPackage

    return ModelPackage.open(llama_package).manifest.name


def test_parse_with_a_pydantic_model_on_every_seed(client: Any, llama_package: Path) -> None:
    from typing import Literal

    from pydantic import BaseModel, Field

    class Person(BaseModel):
        name: str = Field(max_length=6)
        age: int = Field(ge=0, le=120)
        member: bool
        level: Literal["low", "mid", "high"]

    for seed in range(20):
        completion = client.chat.completions.parse(
            model=_name(llama_package),
            messages=CHAT,
            response_format=Person,
            seed=seed,
            temperature=1.0,
            max_completion_tokens=150,
        )
        assert isinstance(completion.choices[0].message.parsed, Person), completion
    plain = client.chat.completions.create(
        model=_name(llama_package), messages=CHAT, response_format={"type": "json_object"}, max_tokens=10
    )
    assert plain.choices[0].message.content.startswith("{")


def test_named_and_required_tool_choice_give_calls_that_validate(client: Any, llama_package: Path) -> None:
    name = _name(llama_package)
    for seed in range(5):
        named = client.chat.completions.create(
            model=name,
            messages=CHAT,
            tools=TOOLS,
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            seed=seed,
            temperature=1.0,
            max_tokens=60,
        )
        choice = named.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.content is None
        [call] = choice.message.tool_calls
        assert call.function.name == "get_weather"
        jsonschema.validate(json.loads(call.function.arguments), WEATHER)
    required = client.chat.completions.create(
        model=name, messages=CHAT, tools=TOOLS, tool_choice="required", max_tokens=120
    )
    calls = required.choices[0].message.tool_calls
    assert calls, required
    for call in calls:
        schema = WEATHER if call.function.name == "get_weather" else TOOLS[1]["function"]["parameters"]
        jsonschema.validate(json.loads(call.function.arguments), schema)
    single = client.chat.completions.create(
        model=name,
        messages=CHAT,
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=120,
    )
    assert len(single.choices[0].message.tool_calls) == 1
    free = client.chat.completions.create(model=name, messages=CHAT, tools=TOOLS, max_tokens=8)
    assert free.choices[0].message.tool_calls is None  # "auto": the random model's noise is no call
    assert free.choices[0].finish_reason == "length"


def test_tools_reach_the_chat_template(generator: TextGenerator) -> None:
    text, _ = generator.encode(CHAT, tools=TOOLS)
    assert text.startswith('<s>tools: [{"type": "function", "function": {"name": "get_weather"')


def test_logprobs_match_the_library_streamed_or_not(
    client: Any, generator: TextGenerator, llama_package: Path
) -> None:
    name = _name(llama_package)
    settings = {"model": name, "seed": 5, "temperature": 1.0, "max_tokens": 8}
    whole = client.chat.completions.create(messages=CHAT, logprobs=True, top_logprobs=3, **settings)
    library = generator.generate(CHAT, max_new_tokens=8, do_sample=True, temperature=1.0, seed=5)
    _, prompt = generator.encode(CHAT)
    entries = whole.choices[0].logprobs.content
    assert len(entries) == len(library.token_ids)
    for index, (entry, token) in enumerate(zip(entries, library.token_ids, strict=True)):
        expected = _log_softmax(_logits(generator, prompt + list(library.token_ids[:index])))
        assert entry.token == generator.tokenizer.decode([token], skip_special_tokens=False)
        assert abs(entry.logprob - expected[token]) < 1e-4
        best = np.argsort(-expected, kind="stable")[:3]
        assert [
            abs(t.logprob - expected[b]) < 1e-4 for t, b in zip(entry.top_logprobs, best, strict=True)
        ] == [True] * 3
    streamed = client.chat.completions.create(
        messages=CHAT, logprobs=True, top_logprobs=3, stream=True, **settings
    )
    pieces = [e for chunk in streamed for c in chunk.choices if c.logprobs for e in c.logprobs.content]
    assert [(e.token, round(e.logprob, 6)) for e in pieces] == [
        (e.token, round(e.logprob, 6)) for e in entries
    ]
    text = client.completions.create(prompt="Edge", logprobs=2, **settings).choices[0]
    chunks = [
        c
        for chunk in client.completions.create(prompt="Edge", logprobs=2, stream=True, **settings)
        for c in chunk.choices
    ]
    streamed_tokens = [t for c in chunks if c.logprobs for t in c.logprobs.tokens]
    assert streamed_tokens == text.logprobs.tokens
    assert [o for c in chunks if c.logprobs for o in c.logprobs.text_offset] == text.logprobs.text_offset
    assert "".join(c.text for c in chunks) == text.text
    alone = generator.generate("Edge", max_new_tokens=8, do_sample=True, temperature=1.0, seed=5)
    _, ids = generator.encode("Edge")
    assert len(text.logprobs.token_logprobs) == len(alone.token_ids)
    for index, token in enumerate(alone.token_ids):
        expected = _log_softmax(_logits(generator, ids + list(alone.token_ids[:index])))
        assert abs(text.logprobs.token_logprobs[index] - expected[token]) < 1e-4
        # the legacy shape maps token text to logprob: two byte tokens decoding to U+FFFD alone share a key
        best = np.sort(expected)[::-1][:2]
        for value in text.logprobs.top_logprobs[index].values():
            assert np.abs(best - value).min() < 1e-4


def test_n_choices_equal_single_requests_with_their_seeds(client: Any, llama_package: Path) -> None:
    settings = {"model": _name(llama_package), "messages": CHAT, "temperature": 1.0, "max_tokens": 12}
    together = client.chat.completions.create(n=4, seed=11, **settings)
    assert [c.index for c in together.choices] == [0, 1, 2, 3]
    texts = [c.message.content for c in together.choices]
    assert len(set(texts)) > 1  # sampled rows differ
    completion_tokens = 0
    for index, text in enumerate(texts):
        alone = client.chat.completions.create(seed=11 + index, **settings)
        assert alone.choices[0].message.content == text, index
        completion_tokens += alone.usage.completion_tokens
    assert together.usage.completion_tokens == completion_tokens
    assert together.usage.prompt_tokens == alone.usage.prompt_tokens  # one prompt, prefilled once
    streamed = client.chat.completions.create(n=4, seed=11, stream=True, **settings)
    by_choice = ["", "", "", ""]
    for chunk in streamed:
        for choice in chunk.choices:
            by_choice[choice.index] += choice.delta.content or ""
    assert by_choice == texts


def test_penalties_over_the_api_follow_openai(
    client: Any, generator: TextGenerator, llama_package: Path
) -> None:
    _, prompt = generator.encode("Edge")
    reference = _reference_penalized(generator, prompt, 30, 0.5, 1.0)
    if 2 in reference:  # the eos id ends the reply
        reference = reference[: reference.index(2)]
    answer = client.completions.create(
        model=_name(llama_package),
        prompt="Edge",
        temperature=0,
        max_tokens=30,
        presence_penalty=0.5,
        frequency_penalty=1.0,
    )
    assert answer.choices[0].text == generator.tokenizer.decode(reference, skip_special_tokens=True)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"n": 5}, "'n' must be an integer from 1 to 4 (--max-n)"),
        ({"logprobs": True, "top_logprobs": 21}, "'top_logprobs' must be an integer from 0 to 20"),
        ({"top_logprobs": 2}, "'top_logprobs' needs 'logprobs': true"),
        ({"response_format": {"type": "xml"}}, "'response_format' must be"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": 3}}}, "schema"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "nope"}},
                }
            },
            "json_schema is not valid",
        ),
        ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "'tools[0].function.name'"),
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "'tool_choice' names 'nope'",
        ),
        ({"tool_choice": "required"}, "'tool_choice' needs 'tools'"),
        ({"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}}, "send one"),
        ({"logit_bias": {"5": 10}}, "'logit_bias' is not supported"),
        ({"functions": [{"name": "f"}]}, "'functions' is not supported"),
        ({"presence_penalty": 3}, "presence_penalty must be in [-2, 2]"),
    ],
)
def test_unsupported_or_wrong_fields_are_400_naming_them(
    served: Any, llama_package: Path, change: dict[str, Any], field: str
) -> None:
    import urllib.error
    import urllib.request

    body = {"model": _name(llama_package), "messages": CHAT, "max_tokens": 4, **change}
    request = urllib.request.Request(
        f"{served.url}/v1/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=60)
    assert caught.value.code == 400
    message = json.loads(caught.value.read())["error"]["message"]
    assert field in message
    assert "\n" not in message


def test_streamed_tool_calls_and_concurrent_mixed_requests(client: Any, llama_package: Path) -> None:
    """A streamed named call parses; schema, tool and free requests sent at once (sharing the server's running
    batch) each answer exactly what they answer alone."""
    from concurrent.futures import ThreadPoolExecutor

    name = _name(llama_package)
    named = {"type": "function", "function": {"name": "get_weather"}}
    stream = client.chat.completions.create(
        model=name,
        messages=CHAT,
        tools=TOOLS,
        tool_choice=named,
        stream=True,
        max_tokens=60,
        seed=2,
        temperature=1,
    )
    arguments, names, reasons = "", [], []
    for chunk in stream:
        for choice in chunk.choices:
            reasons.append(choice.finish_reason)
            for call in choice.delta.tool_calls or []:
                names += [call.function.name] if call.function.name else []
                arguments += call.function.arguments or ""
    assert names == ["get_weather"]
    assert reasons[-1] == "tool_calls"
    jsonschema.validate(json.loads(arguments), WEATHER)

    person = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    requests: list[dict[str, Any]] = [
        {"response_format": person, "seed": 1, "max_tokens": 150},
        {"seed": 2, "max_tokens": 30},
        {"tools": TOOLS, "tool_choice": named, "seed": 3, "max_tokens": 60},
        {"response_format": {"type": "json_object"}, "seed": 4, "max_tokens": 20, "n": 2},
    ]

    def ask(settings: dict[str, Any]) -> list[Any]:
        answer = client.chat.completions.create(model=name, messages=CHAT, temperature=1.0, **settings)
        return [
            (c.message.content, c.message.tool_calls and c.message.tool_calls[0].function.arguments)
            for c in answer.choices
        ]

    alone = [ask(r) for r in requests]
    with ThreadPoolExecutor(len(requests)) as pool:
        together = list(pool.map(ask, requests * 2))
    assert together == alone * 2
    jsonschema.validate(json.loads(alone[0][0][0]), PERSON)
    jsonschema.validate(json.loads(alone[2][0][1]), WEATHER)
