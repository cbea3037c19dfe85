"""Decoder packages whose ``edge.json`` lies (issue 21, row 13): each broken package is one line and exit 2 from a
real `edge` process at load, never a traceback and never an error at the first request; and hypothesis mutates the
``generation`` and ``seq2seq`` sections (parse and check only, no sessions) and never sees anything but a
one-line BadModelError."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.seq2seq_models import bpe_tokenizer, speech, write_wav
from toolkit.errors import BadModelError
from toolkit.manifest import MANIFEST_NAME, Manifest, ModelPackage
from toolkit.tasks.generate import GenerateTask

# the graph of the tiny Llama (edge-toolkit's in-place decoder graph): 2 layers of 2 kv heads of 16 (the fused
# rotary needs a multiple of 16), float32, a vocabulary of 320, 64 positions
LLAMA_LAYOUT = {"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_size": 32}


@pytest.fixture(scope="module")
def llama_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    import transformers as tf

    from converters import convert

    root = tmp_path_factory.mktemp("llama")
    tokenizer = tf.PreTrainedTokenizerFast(
        tokenizer_object=bpe_tokenizer(["<pad>", "<s>", "</s>"], vocab=320),
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
    )
    torch.manual_seed(0)
    config = tf.LlamaConfig(
        vocab_size=len(tokenizer),
        intermediate_size=64,
        max_position_embeddings=64,
        head_dim=16,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        **LLAMA_LAYOUT,
    )
    tf.LlamaForCausalLM(config).save_pretrained(root / "source")
    tokenizer.save_pretrained(root / "source")
    return convert(str(root / "source"), root / "package").path


def _edited(package: Path, folder: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    copy = Path(shutil.copytree(package, folder))
    data = json.loads((copy / MANIFEST_NAME).read_text(encoding="utf-8"))
    edit(data)
    (copy / MANIFEST_NAME).write_text(json.dumps(data), encoding="utf-8")
    return copy


def _edge(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", "from toolkit.cli import main; main()", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def _one_line_exit_2(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def _set(section: str, key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda data: data[section].__setitem__(key, value)


GENERATION_LIES: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    (
        "layers 3",
        _set("generation", "layers", 3),
        "generation.layers is 3 but the graph has no input 'past_key_values.2.key'",
    ),
    (
        "layers 1",
        _set("generation", "layers", 1),
        "generation.layers is 1 but the graph takes 'past_key_values.1.key' too",
    ),
    (
        "kv_heads 4",
        _set("generation", "kv_heads", 4),
        "generation.kv_heads is 4 but the graph's 'past_key_values.0.key' is",
    ),
    ("head_dim 8", _set("generation", "head_dim", 8), "generation.head_dim is 8 but the graph's"),
    (
        "cache fp16",
        _set("generation", "cache_dtype", "float16"),
        "generation.cache_dtype is float16 but the graph's 'past_key_values.0.key' is float32",
    ),
    (
        "pad 10^9",
        _set("generation", "pad_token_id", 10**9),
        "generation.pad_token_id holds 1000000000, outside the model's vocabulary of 320",
    ),
    ("eos 320", _set("generation", "eos_token_ids", [320]), "generation.eos_token_ids holds 320"),
    (
        "max_positions 2100",
        _set("generation", "max_positions", 2100),
        "generation.max_positions is 2100, beyond the model's 64 positions",
    ),
]


@pytest.mark.parametrize(("what", "edit", "message"), GENERATION_LIES, ids=[c[0] for c in GENERATION_LIES])
def test_a_generation_section_that_contradicts_the_graph_fails_at_load(
    llama_package: Path, tmp_path: Path, what: str, edit: Callable[[dict[str, Any]], None], message: str
) -> None:
    package = _edited(llama_package, tmp_path / "pkg", edit)
    _one_line_exit_2(_edge("run", str(package), "--prompt", "hello", "--max-new-tokens", "2"), message)


def test_huge_integers_and_garbage_tokenizers_are_one_line_at_load(
    llama_package: Path, s2s_packages: dict[str, Path], tmp_path: Path
) -> None:
    package = Path(shutil.copytree(llama_package, tmp_path / "digits"))
    text = (package / MANIFEST_NAME).read_text(encoding="utf-8")
    (package / MANIFEST_NAME).write_text(
        text.replace('"opset": ', '"opset": ' + "9" * 5000 + ', "x": '), "utf-8"
    )
    _one_line_exit_2(_edge("info", str(package)), "is not valid JSON", "4300 digits")
    clip = write_wav(tmp_path / "clip.wav", speech(0.5), 16000)
    for source, run in (
        (llama_package, ["--prompt", "hello"]),
        (s2s_packages["whisper"], ["--audio", str(clip)]),
    ):
        broken = Path(shutil.copytree(source, tmp_path / f"garbage-{source.name}"))
        (broken / "tokenizer.json").write_text('{"model": {"type": "BPE", "vocab": 7}}', encoding="utf-8")
        _one_line_exit_2(_edge("run", str(broken), *run), "tokenizer file 'tokenizer.json' is not a tokenizers JSON file")  # fmt: skip
    whisper = _edited(s2s_packages["whisper"], tmp_path / "pad", _set("seq2seq", "pad_token_id", 10**9))
    _one_line_exit_2(
        _edge("run", str(whisper), "--audio", str(clip)),
        "seq2seq.pad_token_id holds 1000000000, outside the decoder's vocabulary",
    )


# -- fuzzing the sections -----------------------------------------------------------------------------------

_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.sampled_from([0, 1, 2, 7, 320, 10**9, 10**4000])
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(["float16", "float32", "past.{layer}.{kind}", "{layer}", "int64"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)


@st.composite
def _mutated(draw: st.DrawFn, base: dict[str, Any], section: str) -> dict[str, Any]:
    data = json.loads(json.dumps(base))
    body = data[section]
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["replace", "delete", "add", "whole"]))
        key = draw(st.sampled_from(sorted(body) or ["layers"]))
        if action == "delete":
            body.pop(key, None)
        elif action == "add":
            body[draw(st.text(min_size=1, max_size=10))] = draw(_values)
        elif action == "whole":
            data[section] = body = draw(
                st.dictionaries(st.sampled_from(sorted(base[section])), _values, max_size=6)
            )
        else:
            body[key] = draw(_values)
    return data


def _check_section(package: Path, data: dict[str, Any]) -> None:
    """Parse the mutated manifest and, for a generator, check its section against the graph the manifest records."""
    try:
        text = json.dumps(data)
    except (ValueError, OverflowError):
        return
    try:
        manifest = Manifest.from_json(text, "edge.json")
        if manifest.generation is not None:
            task = GenerateTask(ModelPackage(package, manifest))
            task.check_graph(manifest.inputs, manifest.outputs)
    except BadModelError as exc:
        message = str(exc)
        assert "\n" not in message
        assert len(message) < 2000


@pytest.mark.parametrize("section", ["generation", "seq2seq"])
def test_fuzzed_decoder_sections_are_one_line_bad_models(
    llama_package: Path, s2s_packages: dict[str, Path], section: str
) -> None:
    packages = [llama_package] if section == "generation" else [s2s_packages["whisper"], s2s_packages["bart"]]
    bases = [(p, json.loads((p / MANIFEST_NAME).read_text(encoding="utf-8"))) for p in packages]

    @settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], deadline=None)
    @given(
        st.sampled_from(range(len(bases))).flatmap(
            lambda i: st.tuples(st.just(i), _mutated(bases[i][1], section))
        )
    )
    def check(drawn: tuple[int, dict[str, Any]]) -> None:
        index, data = drawn
        _check_section(bases[index][0], data)

    check()
