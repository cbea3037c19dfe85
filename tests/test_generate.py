"""Text generation: tiny random GPT-2, Llama, Qwen2 (GQA, tied embeddings) and Phi-3 with a byte-level BPE
tokenizer trained here, converted with their KV cache and run by `TextGenerator` against transformers."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from gpu_support import needs
from serve_process import get_json, post_json, start_serve

from converters.recipes import list_recipes
from tests.conftest import print_decisions
from toolkit.agreement import Tolerance
from toolkit.cli import edge
from toolkit.decoding import GenerationOptions, IncrementalDetokenizer
from toolkit.errors import BadInputError
from toolkit.manifest import ModelPackage
from toolkit.tasks.generate import TextGenerator

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Edge inference keeps latency low on small devices.",
    "Ünïcödé text: 東京タワー, café, naïve — and an emoji 🙂🚀.",
    "A model package holds the graph, its manifest and the tokenizer.",
]
PROMPTS = ["The quick brown fox", "Edge", "東京 café 🙂 and the lazy dog"]
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ bos_token }}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
ARCHITECTURES = ("gpt2", "llama", "qwen2", "phi3")


def _tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(CORPUS * 20, trainer)
    return tokenizer


def _model(kind: str, vocab: int) -> Any:
    import torch
    import transformers as tf

    torch.manual_seed(0)
    ids = {"vocab_size": vocab, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    layers = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
    if kind == "gpt2":
        return tf.GPT2LMHeadModel(tf.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64, **ids))
    if kind == "llama":
        return tf.LlamaForCausalLM(
            # head size 16: onnxruntime's fused rotary (in the in-place graph) needs a multiple of 16
            tf.LlamaConfig(num_key_value_heads=2, max_position_embeddings=64, head_dim=16, **layers, **ids)
        )
    if kind == "qwen2":
        return tf.Qwen2ForCausalLM(
            tf.Qwen2Config(
                num_key_value_heads=1,
                max_position_embeddings=64,
                tie_word_embeddings=True,
                **{**layers, "num_attention_heads": 2},  # head size 16
                **ids,
            )
        )
    return tf.Phi3ForCausalLM(
        tf.Phi3Config(
            num_key_value_heads=4,
            max_position_embeddings=64,
            original_max_position_embeddings=64,
            **layers,
            **ids,
        )
    )


@pytest.fixture(scope="session")
def lm_sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each architecture saved as a Hugging Face folder with the trained tokenizer and a chat template."""
    from transformers import PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("lm-sources")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_tokenizer(), bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    folders = {}
    for kind in ARCHITECTURES:
        folder = root / kind
        _model(kind, len(tokenizer)).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        folders[kind] = folder
    return folders


@pytest.fixture(scope="session")
def lm_packages(lm_sources: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each source converted once by `converters.convert`."""
    from converters import convert

    root = tmp_path_factory.mktemp("lm-packages")
    return {kind: convert(str(src), root / kind).path for kind, src in lm_sources.items()}


def _transformers_greedy(source: Path, prompts: list[str], max_new_tokens: int) -> list[list[int]]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(source).eval()
    tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.padding_side = "left"
    encoded = tokenizer(prompts, return_tensors="pt", padding=True, return_token_type_ids=False)
    with torch.inference_mode():
        out = model.generate(
            **encoded, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
    rows = []
    for row in out[:, encoded.input_ids.shape[1] :].tolist():
        rows.append(row[: row.index(2) + 1] if 2 in row else row)  # transformers pads after a row's eos
    return rows


@pytest.mark.parametrize("kind", ARCHITECTURES)
def test_package_records_generation_contract_and_validates_cached_steps(
    kind: str, lm_packages: dict[str, Path]
) -> None:
    manifest = ModelPackage.open(lm_packages[kind]).manifest
    spec = manifest.generation
    assert manifest.task == "generate"
    assert spec is not None
    head_dim = 16 if kind in ("llama", "qwen2") else 8
    assert (spec.layers, spec.head_dim, spec.cache_dtype) == (2, head_dim, "float32")
    # the in-place graph rotates inside by cache column and records its frequencies for moving keys
    assert len(spec.rotary_inv_freq) == (head_dim // 2 if spec.in_place else 0)
    assert spec.kv_heads == {"gpt2": 4, "llama": 2, "qwen2": 1, "phi3": 4}[kind]
    assert (spec.max_positions, spec.eos_token_ids, spec.pad_token_id, spec.bos_token_id) == (64, (2,), 0, 1)
    assert spec.chat_template == CHAT_TEMPLATE
    validation = manifest.variants["fp32"].validation
    assert validation is not None
    assert validation.passed
    assert {o.name for o in validation.outputs} == {"logits (prompt)", "logits (cached steps)"}
    assert any("left-padded" in case for case in validation.cases)
    assert max(check.max_abs_diff for check in validation.outputs) < 1e-4
    # both decoder graphs (optimum's, and the in-place one of llama/qwen2) are judged by the allclose rule and
    # top-1/top-5 agreement over the vocabulary
    assert (validation.metric, validation.atol, validation.rtol) == ("allclose", 1e-4, 1e-3)
    assert 0 < validation.value <= 1
    for check in validation.outputs:
        assert {rule.rule for rule in check.rules} == {"allclose", "top1_agreement", "top5_agreement"}


@pytest.mark.parametrize("kind", ARCHITECTURES)
def test_greedy_tokens_match_transformers_at_batch_1_and_left_padded_batch_of_3(
    kind: str, lm_sources: dict[str, Path], lm_packages: dict[str, Path]
) -> None:
    generator = TextGenerator.load(lm_packages[kind], "cpu")
    single = generator.generate(PROMPTS[0], max_new_tokens=12)
    assert list(single.token_ids) == _transformers_greedy(lm_sources[kind], PROMPTS[:1], 12)[0]
    batch = generator.generate(PROMPTS, max_new_tokens=12)
    want = _transformers_greedy(lm_sources[kind], PROMPTS, 12)
    assert [list(g.token_ids) for g in batch] == want
    for generation, tokens in zip(batch, want, strict=True):
        assert generation.finish_reason == ("eos" if tokens[-1] == 2 else "length")
        assert generation.timings.new_tokens == len(tokens)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_streamed_pieces_concatenate_to_the_full_text(kind: str, lm_packages: dict[str, Path]) -> None:
    generator = TextGenerator.load(lm_packages[kind], "cpu")
    for settings in ({"max_new_tokens": 30}, {"max_new_tokens": 30, "do_sample": True, "seed": 5}):
        stream = generator.stream(PROMPTS[2], **settings)
        pieces = list(stream)
        assert stream.generation is not None
        assert "".join(pieces) == stream.generation.text == generator.generate(PROMPTS[2], **settings).text


def test_load_without_a_variant_reads_the_manifest_once(
    lm_packages: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[Path] = []
    real_open = ModelPackage.open.__func__  # type: ignore[attr-defined]

    def counting_open(cls: type[ModelPackage], path: str | Path) -> ModelPackage:
        opened.append(Path(path))
        package: ModelPackage = real_open(cls, path)
        return package

    monkeypatch.setattr(ModelPackage, "open", classmethod(counting_open))
    generator = TextGenerator.load(lm_packages["llama"], "cpu")
    assert opened == [lm_packages["llama"]]  # picking the variant and loading it share one read
    assert generator.package.path == lm_packages["llama"]


def test_incremental_detokenizer_never_splits_a_multibyte_character(lm_packages: dict[str, Path]) -> None:
    generator = TextGenerator.load(lm_packages["llama"], "cpu")
    text = "東京タワー café 🙂🚀 naïve"
    ids = generator.tokenizer.encode(text, add_special_tokens=False).ids
    assert len(ids) > len(text.split())  # the multi-byte characters do span several tokens
    detok = IncrementalDetokenizer(lambda t: generator.tokenizer.decode(list(t)))
    pieces = [detok.add(i) for i in ids]
    pieces.append(detok.finish())
    assert "".join(pieces) == text
    assert not any("\ufffd" in piece for piece in pieces)


def test_stop_strings_cut_the_text_and_are_held_back_while_undecided() -> None:
    alphabet = "abc\n"
    detok = IncrementalDetokenizer(lambda ids: "".join(alphabet[i] for i in ids), stop=("\nb",))
    pieces = [detok.add(i) for i in (0, 1, 3)]
    assert pieces == ["a", "b", ""]  # "\n" might begin the stop string
    assert detok.add(1) == ""
    assert detok.stopped
    assert detok.text == "ab"
    assert detok.finish() == ""


def test_seeded_sampling_is_reproducible_and_rows_stop_on_their_own(lm_packages: dict[str, Path]) -> None:
    generator = TextGenerator.load(lm_packages["gpt2"], "cpu")
    settings = {
        "do_sample": True,
        "temperature": 0.8,
        "top_k": 50,
        "top_p": 0.9,
        "seed": 7,
        "max_new_tokens": 16,
    }
    first = generator.generate(PROMPTS, **settings)
    again = generator.generate(PROMPTS, **settings)
    assert [g.token_ids for g in first] == [g.token_ids for g in again]
    other = generator.generate(PROMPTS, **{**settings, "seed": 8})
    assert [g.token_ids for g in other] != [g.token_ids for g in first]
    short = generator.generate(PROMPTS[0], max_new_tokens=3)
    assert len(short.token_ids) <= 3
    assert short.finish_reason in ("eos", "length")


def test_stop_string_ends_a_row_with_reason_stop(lm_packages: dict[str, Path]) -> None:
    generator = TextGenerator.load(lm_packages["llama"], "cpu")
    full = generator.generate(PROMPTS[0], max_new_tokens=20)
    assert len(full.text) > 3
    stop = full.text[2:4]
    cut = generator.generate(PROMPTS[0], max_new_tokens=20, stop=[stop])
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[: full.text.find(stop)]
    assert len(cut.token_ids) < len(full.token_ids)


def test_chat_messages_render_through_the_template(lm_packages: dict[str, Path]) -> None:
    generator = TextGenerator.load(lm_packages["qwen2"], "cpu")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert generator.apply_chat_template(messages) == "<s>system: Be brief.\n<s>user: Hi\nassistant:"
    chat = generator.generate(messages, max_new_tokens=4)
    assert chat.prompt.endswith("assistant:")
    plain = generator.generate(chat.prompt, max_new_tokens=4)
    assert chat.token_ids == plain.token_ids  # the template's text holds its own <s> tokens


def test_sandboxed_template_cannot_reach_python(lm_packages: dict[str, Path]) -> None:
    from toolkit.errors import EdgeError
    from toolkit.tasks.generate import render_chat

    evil = "{{ messages.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(EdgeError):
        render_chat(evil, [{"role": "user", "content": "x"}], {})


@pytest.mark.parametrize("kind", ["llama", "qwen2", "phi3"])
def test_kv_cache_is_preallocated_and_reused(kind: str, lm_packages: dict[str, Path]) -> None:
    from toolkit.decoding.decoder import DecoderStepper

    generator = TextGenerator.load(lm_packages[kind], "cpu")
    ids = np.array([[5, 6, 7]], dtype=np.int64)
    stepper = DecoderStepper(generator.runner.session, generator.spec, ids, np.ones_like(ids), capacity=8)
    buffers = stepper.cache.addresses()
    # the in-place graph has one buffer per entry (past and present bound to it), optimum's graph two
    assert len(buffers) == (1 if generator.spec.in_place else 2) * 2 * generator.spec.layers
    for token in (9, 10):
        stepper.step(np.array([token], dtype=np.int64))
        assert stepper.cache.addresses() == buffers  # same memory, same size: nothing grew or moved
    assert stepper.cache.length == 5
    # the cache tensors ORT wrote in place equal a plain run's present outputs on the same tokens
    feeds = generator.task.prompt_feeds([5, 6, 7, 9, 10])
    present = generator.runner.session.run(["present.1.value"], feeds)[0]
    np.testing.assert_allclose(stepper.cache.view(1, "value"), present, atol=1e-5)


def test_llama_layout_models_get_the_in_place_graph_and_others_optimums(lm_packages: dict[str, Path]) -> None:
    import onnx

    graphs = {kind: ModelPackage.open(path).manifest.generation.graph for kind, path in lm_packages.items()}
    assert graphs == {"gpt2": "optimum", "llama": "gqa-seqlens", "qwen2": "gqa-seqlens", "phi3": "optimum"}
    package = ModelPackage.open(lm_packages["qwen2"])
    graph = onnx.load(str(package.path / package.manifest.variant("fp32").file)).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("GroupQueryAttention") == 2
    assert "Concat" not in ops  # no cache concat
    assert "Expand" not in ops  # no attention bias built per step
    # each row's length in, no attention mask: GroupQueryAttention reads the two inputs as they are
    assert {"seqlens_k", "total_sequence_length"} <= {i.name for i in graph.input}
    assert "attention_mask" not in {i.name for i in graph.input}
    assert "SkipSimplifiedLayerNormalization" in ops
    assert package.manifest.exporter == {"name": "edge-toolkit", "graph": "gqa-seqlens"}
    # the weights in external data (onnxruntime maps them; the parsed protobuf holds none), counted in the size
    fp32_file = package.path / package.manifest.variant("fp32").file
    weights = fp32_file.with_name(fp32_file.name + ".data")
    assert weights.stat().st_size > 10 * fp32_file.stat().st_size
    assert package.manifest.variant("fp32").size_bytes == fp32_file.stat().st_size + weights.stat().st_size


def test_in_place_validation_fails_when_the_graph_and_pytorch_disagree(
    lm_sources: dict[str, Path], lm_packages: dict[str, Path]
) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from converters.causal_lm import validate_in_place_decoder

    package = ModelPackage.open(lm_packages["llama"])
    spec = package.manifest.generation
    onnx_file = package.path / package.manifest.variant("fp32").file
    model = AutoModelForCausalLM.from_pretrained(lm_sources["llama"]).eval()
    assert validate_in_place_decoder(model, onnx_file, spec, Tolerance()).passed
    with torch.no_grad():  # one key projection off: the logits move
        model.model.layers[-1].self_attn.k_proj.weight.mul_(1.5)
    validation = validate_in_place_decoder(model, onnx_file, spec, Tolerance())
    assert not validation.passed
    assert validation.outputs[1].name == "logits (cached steps)"
    assert not validation.outputs[1].passed


@pytest.fixture(scope="module")
def trained_scale_llama(lm_sources: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama with its weight matrices redrawn at std 1 (attention scores and logits at a trained
    model's scale, where a wrong scale or epsilon shows), converted to the in-place graph: its source folder."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    from converters import convert

    source = tmp_path_factory.mktemp("trained-scale-llama") / "hf"
    shutil.copytree(lm_sources["llama"], source)
    model = AutoModelForCausalLM.from_pretrained(source)
    torch.manual_seed(1)
    with torch.no_grad():
        for weights in model.parameters():
            if weights.dim() >= 2:
                weights.normal_(0.0, 1.0)
    model.save_pretrained(source)
    convert(str(source), source.parent / "package")
    return source


def _attention_scale(model: Any) -> None:
    for layer in model.model.layers:
        layer.self_attn.scaling *= 1.01


def _norm_epsilon(model: Any) -> None:
    for module in model.modules():
        if hasattr(module, "variance_epsilon"):
            module.variance_epsilon *= 10


def _rotary_frequencies(model: Any) -> None:
    model.model.rotary_emb.inv_freq *= 1.001


# a uniform position offset is no bug under rotary embeddings (attention sees relative positions only): the
# in-place graph's third bug is rotary frequencies a thousandth off
IN_PLACE_BUGS = {
    "attention scale off by 1%": _attention_scale,
    "RMS norm epsilon 10x": _norm_epsilon,
    "rotary frequencies off by 0.1%": _rotary_frequencies,
}


@pytest.mark.parametrize("bug", list(IN_PLACE_BUGS))
def test_in_place_graph_at_a_trained_scale_passes_and_a_subtle_mismatch_fails(
    bug: str, trained_scale_llama: Path
) -> None:
    """The in-place graph of a Llama with trained-scale weights passes validation at the defaults; against a
    PyTorch model that differs from it by one subtle bug it fails, decided by allclose."""
    from transformers import AutoModelForCausalLM

    from converters.causal_lm import validate_in_place_decoder

    package = ModelPackage.open(trained_scale_llama.parent / "package")
    spec = package.manifest.generation
    assert spec is not None
    assert spec.in_place
    recorded = package.manifest.variant("fp32").validation
    assert recorded is not None
    assert recorded.passed, recorded
    onnx_file = package.path / package.manifest.variant("fp32").file
    model = AutoModelForCausalLM.from_pretrained(trained_scale_llama).eval()
    IN_PLACE_BUGS[bug](model)
    validation = validate_in_place_decoder(model, onnx_file, spec, Tolerance())
    assert not validation.passed, validation
    assert validation.value > 1
    assert all(check.decided_by == "allclose" for check in validation.outputs if not check.passed)


@pytest.fixture(scope="session")
def optimum_llama(lm_sources: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama through optimum-onnx's graph, as packages made before the in-place graph hold it."""
    from converters import ConvertOptions, convert

    out = tmp_path_factory.mktemp("optimum-llama") / "llama"
    return convert(str(lm_sources["llama"]), out, ConvertOptions(decoder_graph="optimum")).path


def test_optimum_graph_packages_still_load_and_decode_unchanged(
    optimum_llama: Path, lm_packages: dict[str, Path], lm_sources: dict[str, Path]
) -> None:
    manifest = json.loads((optimum_llama / "edge.json").read_text())
    assert manifest["generation"]["graph"] == "optimum"
    del manifest["generation"]["graph"]  # as written before the field existed
    (optimum_llama / "edge.json").write_text(json.dumps(manifest))
    prompts = ["hello world", "the cat"]
    old = TextGenerator.load(optimum_llama, "cpu")
    assert not old.spec.in_place
    new = TextGenerator.load(lm_packages["llama"], "cpu")
    expected = _transformers_greedy(lm_sources["llama"], prompts, 6)
    for generator in (old, new):
        got = [list(g.token_ids) for g in generator.generate(prompts, max_new_tokens=6)]
        assert got == expected


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens must be an integer of at least 1"),
        ({"stop": [""]}, "stop must be a non-empty string"),
        ({"stop": 3}, "stop must be a non-empty string"),
        ({"temperature": 0}, "temperature must be in (0, 100]"),
        ({"temperature": 1e300}, "temperature must be in (0, 100]"),
        ({"repetition_penalty": 5e-324}, "repetition_penalty must be in [0.01, 100]"),
        ({"repetition_penalty": 1e300}, "repetition_penalty must be in [0.01, 100]"),
        ({"temperature": 10**400}, "temperature must be a finite number, got an integer past float range"),
        ({"frequency_penalty": float("nan")}, "frequency_penalty must be a finite number, got nan"),
        ({"top_p": 1.5}, "top_p must be in (0, 1]"),
        ({"beams": 2}, "unknown generation option 'beams'"),
    ],
)
def test_bad_settings_are_one_line_errors(
    settings: dict[str, Any], message: str, lm_packages: dict[str, Path]
) -> None:
    generator = TextGenerator.load(lm_packages["gpt2"], "cpu")
    with pytest.raises(BadInputError, match=None) as caught:
        generator.generate("hi", **settings)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_prompt_longer_than_the_positions_is_a_one_line_error(lm_packages: dict[str, Path]) -> None:
    generator = TextGenerator.load(lm_packages["gpt2"], "cpu")
    with pytest.raises(BadInputError, match="does not fit the model's 64 positions"):
        generator.generate("the lazy dog " * 60)
    near = generator.generate("the lazy dog " * 4, max_new_tokens=60)
    assert near.finish_reason in ("eos", "length")
    assert near.timings.prompt_tokens + len(near.token_ids) <= 64


def test_generation_options_validate_on_their_own() -> None:
    assert GenerationOptions(stop="x").stop == ("x",)
    with pytest.raises(BadInputError):
        GenerationOptions(max_new_tokens=-1)


def test_cli_run_prompt_stream_json_and_chat(lm_packages: dict[str, Path]) -> None:
    package = str(lm_packages["llama"])
    runner = CliRunner()
    result = runner.invoke(edge, ["run", package, "--prompt", PROMPTS[0], "--max-new-tokens", "6", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    expected = TextGenerator.load(package, "cpu").generate(PROMPTS[0], max_new_tokens=6)
    assert data["generations"][0]["token_ids"] == list(expected.token_ids)
    streamed = runner.invoke(
        edge, ["run", package, "--prompt", PROMPTS[0], "--max-new-tokens", "6", "--stream"]
    )
    assert streamed.exit_code == 0, streamed.output
    assert expected.text in streamed.output
    bad = runner.invoke(edge, ["run", package, "--prompt", "x", "--max-new-tokens", "0"])
    assert bad.exit_code == 2
    assert "max_new_tokens must be" in bad.output
    assert "Traceback" not in bad.output
    chat = runner.invoke(edge, ["chat", package, "--max-new-tokens", "4"], input="hello\nagain\n\n")
    assert chat.exit_code == 0, chat.output
    assert chat.output.count("assistant> ") == 2


def test_run_prompt_on_a_non_generator_package_is_refused(tiny_bert_package: Path) -> None:
    result = CliRunner().invoke(edge, ["run", str(tiny_bert_package), "--prompt", "hi"])
    assert result.exit_code == 2
    assert "not 'generate'" in result.output


@pytest.fixture
def llama_copy(lm_packages: dict[str, Path], tmp_path: Path) -> Path:
    """A private copy of the Llama package, for tests that add variants."""
    import shutil

    return Path(shutil.copytree(lm_packages["llama"], tmp_path / "llama"))


def test_int4_and_int8_variants_report_next_token_agreement_and_perplexity(llama_copy: Path) -> None:
    import onnx

    from converters.quantization import QuantizeOptions, quantize

    for method in ("int4", "dynamic-int8"):
        result = quantize(llama_copy, method, QuantizeOptions(budget=0.5, block_size=32))
        assert result.accuracy is not None
        assert result.accuracy.metric == "next_token_agreement"
        assert 0.5 <= result.accuracy.score <= 1.0
        ratio = result.accuracy.details["perplexity_ratio"]
        assert 0.9 < ratio < 1.1  # a 2-layer model quantized loses almost nothing
        assert result.accuracy.details["positions"] > 100
    manifest = ModelPackage.open(llama_copy).manifest
    int4 = manifest.variants["int4"]
    assert (int4.settings["block_size"], int4.settings["accuracy_level"]) == (32, 4)
    graph = onnx.load(str(llama_copy / int4.file)).graph
    assert sum(n.op_type == "MatMulNBits" for n in graph.node) == int4.settings["quantized_matmuls"] > 0
    # like the fp32 graph, each variant keeps its weights in external data (mapped by onnxruntime), counted
    for variant in manifest.variants.values():
        model, data = llama_copy / variant.file, llama_copy / f"{variant.file}.data"
        assert data.stat().st_size > model.stat().st_size  # (tensors under 1 KB stay inline)
        assert variant.size_bytes == model.stat().st_size + data.stat().st_size
    generator = TextGenerator.load(llama_copy, "cpu", variant="int4")
    assert generator.generate(PROMPTS[0], max_new_tokens=4).timings.new_tokens >= 1
    # a generator's int8 is 8-bit blockwise weight-only on every MatMul (per-tensor dynamic int8 loses agreement)
    int8_graph = onnx.load(str(llama_copy / manifest.variants["int8"].file)).graph
    bits = [
        next(a.i for a in n.attribute if a.name == "bits")
        for n in int8_graph.node
        if n.op_type == "MatMulNBits"
    ]
    assert bits == [8] * int4.settings["quantized_matmuls"]
    assert not any(n.op_type == "MatMulInteger" for n in int8_graph.node)


def test_int4_picks_block_size_and_accuracy_level_by_measurement(llama_copy: Path) -> None:
    import onnx

    from converters.quantization import QuantizeOptions, quantize

    result = quantize(llama_copy, "int4", QuantizeOptions(budget=0.5, latency_runs=5))
    settings = ModelPackage.open(llama_copy).manifest.variants["int4"].settings
    tried = {(c["block_size"], c["accuracy_level"]) for c in settings["candidates"]}
    assert {block for block, _ in tried} == {32, 64, 128}
    assert {level for _, level in tried} == {1, 4}  # the best block is tried at the other level too
    picked = (settings["block_size"], settings["accuracy_level"])
    assert picked in tried
    fitting = [c for c in settings["candidates"] if c["meets_budget"]]
    assert all(c["score"] >= 0.5 for c in fitting)
    if fitting:  # the pick is within the tie of the fastest fitting candidate
        fastest = min(c["latency_ms"] for c in fitting)
        mine = next(c for c in settings["candidates"] if (c["block_size"], c["accuracy_level"]) == picked)
        assert mine["meets_budget"]
        assert mine["latency_ms"] <= fastest * 1.03 + 1e-9
    graph = onnx.load(str(llama_copy / ModelPackage.open(llama_copy).manifest.variants["int4"].file)).graph
    nbits = [n for n in graph.node if n.op_type == "MatMulNBits"]
    assert {a.i for n in nbits for a in n.attribute if a.name == "block_size"} == {picked[0]}
    assert {a.i for n in nbits for a in n.attribute if a.name == "accuracy_level"} == {picked[1]}
    # every linear, the LM head included, is int4: qkv, o, gate, up, down in each of 2 layers, and the head
    assert len(nbits) == 2 * 5 + 1
    assert "logits" in {n.output[0] for n in nbits}
    assert not [n for n in graph.node if n.op_type == "MatMul"]
    assert result.accuracy is not None


def test_auto_quantize_under_a_budget_works_for_a_generator(llama_copy: Path) -> None:
    from converters.quantization import QuantizeOptions, quantize

    result = quantize(llama_copy, "auto", QuantizeOptions(budget=0.5, latency_runs=3))
    assert result.variant is not None
    assert any(c.method == "int4" for c in result.candidates)
    assert all(c.error is None for c in result.candidates), [c.error for c in result.candidates]
    assert result.accuracy is not None
    assert result.accuracy.metric == "next_token_agreement"


# -- fp16: the in-place graph with its KV cache in float16, the variant CUDA runs ---------------------------


@pytest.fixture(scope="module")
def llama_fp16(lm_packages: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the Llama package (in-place graph) with its fp16 variant."""
    import shutil

    from converters.quantization import QuantizeOptions, quantize

    copy = Path(shutil.copytree(lm_packages["llama"], tmp_path_factory.mktemp("fp16") / "llama"))
    quantize(copy, "fp16", QuantizeOptions(budget=0.99, latency_runs=3))
    return copy


def test_fp16_variant_holds_its_kv_cache_in_float16_and_validates_against_fp32(llama_fp16: Path) -> None:
    import onnx

    variant = ModelPackage.open(llama_fp16).manifest.variants["fp16"]
    validation = variant.validation
    assert validation is not None
    assert validation.passed
    assert validation.metric == "next_token_agreement"
    assert validation.value >= 0.99
    graph = onnx.load(str(llama_fp16 / variant.file)).graph
    f16 = onnx.TensorProto.FLOAT16
    types = {t.name: t.type.tensor_type.elem_type for t in (*graph.input, *graph.output)}
    past = {n for n in types if n.startswith("past_key_values.")}
    present = {n for n in types if n.startswith("present.")}
    assert len(past) == len(present) == 4
    assert {types[n] for n in past | present} == {f16}
    assert types["logits"] == onnx.TensorProto.FLOAT  # the one float output kept fp32
    assert sorted(variant.settings["float16_state"]) == sorted(past | present)
    # GroupQueryAttention reads and writes the bound buffers themselves: no Cast between them and the graph's IO
    attention = [n for n in graph.node if n.op_type == "GroupQueryAttention"]
    assert past <= {i for n in attention for i in n.input}
    assert present <= {o for n in attention for o in n.output}
    weights = {t.name: t.data_type for t in graph.initializer}
    assert weights["cos_cache"] == weights["sin_cache"] == f16  # the rotary tables of the fused rotary
    assert weights["layers.0.post_attention_layernorm.weight"] == f16  # norms run in fp16
    assert "SkipSimplifiedLayerNormalization" in {n.op_type for n in graph.node}


def test_fp16_variant_decodes_on_cpu_like_fp32_with_its_cache_written_in_place(llama_fp16: Path) -> None:
    from toolkit.decoding.decoder import DecoderStepper

    fp32 = TextGenerator.load(llama_fp16, "cpu")
    fp16 = TextGenerator.load(llama_fp16, "cpu", variant="fp16")
    assert fp16.runner.path.name == "model.fp16.onnx"
    assert [g.token_ids for g in fp16.generate(PROMPTS, max_new_tokens=12)] == [
        g.token_ids for g in fp32.generate(PROMPTS, max_new_tokens=12)
    ]
    ids = np.array([[5, 6, 7]], dtype=np.int64)
    full, half = (
        DecoderStepper(g.runner.session, g.spec, ids, np.ones_like(ids), capacity=8) for g in (fp32, fp16)
    )
    assert (full.cache.layout.dtype, half.cache.layout.dtype) == (np.float32, np.float16)
    buffers = half.cache.addresses()
    assert 2 * sum(size for _, size in buffers) == sum(size for _, size in full.cache.addresses())
    for token in (9, 10):
        step = np.array([token], dtype=np.int64)
        got, want = half.step(step), full.step(step)
        assert half.cache.addresses() == buffers  # one buffer per entry, never moved or grown
        np.testing.assert_allclose(got, want, atol=2e-3)
        assert np.argmax(got) == np.argmax(want)
    # the cache ORT wrote in place equals a plain run's present on the same tokens (fed in float16)
    feeds = fp16.task.prompt_feeds([5, 6, 7, 9, 10])
    assert feeds["past_key_values.0.key"].dtype == np.float16
    present = fp16.runner.session.run(["present.1.value"], feeds)[0]
    assert present.dtype == np.float16
    np.testing.assert_allclose(half.cache.view(1, "value"), present, atol=1e-3)
    np.testing.assert_allclose(half.cache.view(1, "value"), full.cache.view(1, "value"), atol=1e-2)


def test_cuda_load_runs_the_fp16_variant_or_says_it_falls_back_to_fp32_on_cpu(
    llama_fp16: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from toolkit.errors import ProviderUnavailableError
    from toolkit.providers import probe_provider

    assert TextGenerator.load(llama_fp16, "cpu").runner.path.name == "model.onnx"
    reason = probe_provider("cuda")
    with caplog.at_level(logging.WARNING):
        generator = TextGenerator.load(llama_fp16, "cuda")
    if reason is None:
        assert generator.runner.path.name == "model.fp16.onnx"
        assert generator.device == "cuda"
        return
    assert generator.runner.path.name == "model.onnx"
    assert generator.runner.providers == ("cpu",)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"CUDA is unavailable ({reason}); generating with the fp32 variant on CPU"]
    with pytest.raises(ProviderUnavailableError, match="cuda"):
        TextGenerator.load(llama_fp16, "cuda", strict=True)


def _count_runs(generator: TextGenerator, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the generator's onnxruntime runs: the returned list's one item goes up by one per run."""
    count = [0]
    original = generator.runner.session.run_with_iobinding

    def counted(*args: Any, **kwargs: Any) -> Any:
        count[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(generator.runner.session, "run_with_iobinding", counted)
    return count


@needs("cuda")
def test_cuda_runs_a_long_prompt_at_once(llama_fp16: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pieces save host memory on the CPU; on a GPU each costs about what the whole prompt does."""
    from toolkit.decoding import decoder

    generator = TextGenerator.load(llama_fp16, "cuda")
    runs = _count_runs(generator, monkeypatch)
    monkeypatch.setattr(decoder, "PREFILL_CHUNK", 4)
    result = generator.generate(
        "the quick brown fox jumps over the lazy dog", max_new_tokens=3, ignore_eos=True
    )
    assert result.timings.prompt_tokens > 4
    assert runs[0] == 1 + 2


@needs("cuda")
def test_cuda_load_of_a_package_without_fp16_says_how_to_add_it(
    lm_packages: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    with caplog.at_level(logging.WARNING):
        generator = TextGenerator.load(lm_packages["qwen2"], "cuda")
    assert generator.runner.path.name == "model.onnx"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("has no fp16 variant" in w and "--method fp16" in w for w in warnings), warnings


@needs("cuda")
def test_cuda_keeps_the_fp16_cache_on_the_device_and_matches_cpu(llama_fp16: Path) -> None:
    import onnxruntime as ort

    from toolkit.decoding.decoder import DecoderStepper

    cpu32 = TextGenerator.load(llama_fp16, "cpu")
    cpu16 = TextGenerator.load(llama_fp16, "cpu", variant="fp16")
    gpu = TextGenerator.load(llama_fp16, "cuda")  # the fp16 variant by default
    assert gpu.runner.path.name == "model.fp16.onnx"
    assert gpu.runner.providers[0] == "cuda"
    assert gpu.device == "cuda"
    want = [g.token_ids for g in cpu32.generate(PROMPTS, max_new_tokens=12)]
    assert [g.token_ids for g in cpu16.generate(PROMPTS, max_new_tokens=12)] == want
    assert [g.token_ids for g in gpu.generate(PROMPTS, max_new_tokens=12)] == want
    ids = np.array([[5, 6, 7]], dtype=np.int64)
    device = DecoderStepper(gpu.runner.session, gpu.spec, ids, np.ones_like(ids), 8, "cuda", 0)
    host = DecoderStepper(cpu16.runner.session, cpu16.spec, ids, np.ones_like(ids), 8)
    buffers = device.cache.addresses()
    for token in (9, 10, 11):
        step = np.array([token], dtype=np.int64)
        got, want_logits = device.step(step), host.step(step)
        assert device.cache.addresses() == buffers
        np.testing.assert_allclose(got, want_logits, atol=5e-3)
    for _, owner in device.cache._buffers[0]:
        assert isinstance(owner, ort.OrtValue)
        assert owner.device_name().lower() == "cuda"
        assert owner.data_type() == "tensor(float16)"
    np.testing.assert_allclose(device.cache.view(1, "key"), host.cache.view(1, "key"), atol=1e-2)


# -- edge serve: OpenAI-compatible routes, tested with the official openai client ---------------------------


@pytest.fixture(scope="module")
def openai_server(lm_packages: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """`edge serve` on the Llama and Qwen2 packages (batches of up to 8 requests), as a subprocess."""
    packages = [lm_packages["llama"], lm_packages["qwen2"]]
    served = start_serve(packages, ["--threads", "1"], tmp_path_factory.mktemp("openai-serve"))
    try:
        yield served.url
    finally:
        served.stop()


def _client(url: str) -> Any:
    import openai

    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)


def _names(lm_packages: dict[str, Path]) -> dict[str, str]:
    return {kind: ModelPackage.open(lm_packages[kind]).manifest.name for kind in ("llama", "qwen2")}


def test_openai_client_streams_a_chat_completion(openai_server: str, lm_packages: dict[str, Path]) -> None:
    client = _client(openai_server)
    name = _names(lm_packages)["qwen2"]
    assert name in {m.id for m in client.models.list()}
    messages = [{"role": "user", "content": "Say something about the lazy dog"}]
    chunks = list(client.chat.completions.create(model=name, messages=messages, max_tokens=12, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    expected = TextGenerator.load(lm_packages["qwen2"], "cpu").generate(messages, max_new_tokens=12)
    assert text == expected.text
    assert finish == [{"eos": "stop", "stop": "stop", "length": "length"}[expected.finish_reason]]
    whole = client.chat.completions.create(model=name, messages=messages, max_tokens=12)
    assert whole.choices[0].message.content == expected.text
    assert whole.usage.completion_tokens == len(expected.token_ids)


def test_openai_completions_match_the_generator_and_honour_stop(
    openai_server: str, lm_packages: dict[str, Path]
) -> None:
    client = _client(openai_server)
    name = _names(lm_packages)["llama"]
    generator = TextGenerator.load(lm_packages["llama"], "cpu")
    expected = generator.generate(PROMPTS[0], max_new_tokens=20)
    got = client.completions.create(model=name, prompt=PROMPTS[0], max_tokens=20, temperature=0)
    assert got.choices[0].text == expected.text
    stop = expected.text[2:4]
    cut = client.completions.create(model=name, prompt=PROMPTS[0], max_tokens=20, stop=[stop], temperature=0)
    assert cut.choices[0].text == expected.text[: expected.text.find(stop)]
    assert cut.choices[0].finish_reason == "stop"
    seeded = [
        client.completions.create(model=name, prompt="Edge", max_tokens=8, temperature=0.9, seed=11)
        .choices[0]
        .text
        for _ in range(2)
    ]
    assert seeded[0] == seeded[1]


def test_eight_concurrent_streaming_clients_get_their_own_text(
    openai_server: str, lm_packages: dict[str, Path]
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    name = _names(lm_packages)["llama"]
    generator = TextGenerator.load(lm_packages["llama"], "cpu")
    prompts = [f"prompt {i}: " + "the lazy dog " * (i % 4) + "東京" * (i % 3) for i in range(8)]

    def stream(i: int) -> str:
        chunks = _client(openai_server).completions.create(
            model=name, prompt=prompts[i], max_tokens=10 + i, stream=True, temperature=0
        )
        return "".join(c.choices[0].text for c in chunks if c.choices)

    with ThreadPoolExecutor(8) as pool:
        texts = list(pool.map(stream, range(8)))
    assert texts == [generator.generate(p, max_new_tokens=10 + i).text for i, p in enumerate(prompts)]


def test_openai_errors_are_4xx_with_one_line_messages(
    openai_server: str, lm_packages: dict[str, Path]
) -> None:
    import openai

    client = _client(openai_server)
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.completions.create(model="nope", prompt="hi", max_tokens=4)
    name = _names(lm_packages)["llama"]
    with pytest.raises(openai.BadRequestError, match="max_new_tokens must be"):
        client.completions.create(model=name, prompt="hi", max_tokens=0)
    with pytest.raises(openai.BadRequestError, match="does not fit the model's 64 positions"):
        client.completions.create(model=name, prompt="the lazy dog " * 60, max_tokens=4)


# -- recipes: each generator recipe's [offline] stand-in converts with the recipe and generates --------------

GENERATE_RECIPES = sorted(r.name for r in list_recipes() if r.task == "generate")


@pytest.mark.parametrize("name", GENERATE_RECIPES)
def test_generator_recipe_offline_stand_in_converts_and_matches_transformers(
    name: str, tmp_path: Path
) -> None:
    import torch
    import transformers
    from transformers import PreTrainedTokenizerFast

    from converters import ConvertOptions, convert
    from converters.recipes import load_recipe

    recipe = load_recipe(name)
    assert recipe.offline is not None
    source = tmp_path / "hf"
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_tokenizer(), bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    config = getattr(transformers, recipe.offline.config)(
        vocab_size=len(tokenizer),
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        **recipe.offline.config_kwargs,
    )
    torch.manual_seed(1)
    getattr(transformers, recipe.offline.model)(config).eval().save_pretrained(source)
    tokenizer.save_pretrained(source)
    package = convert(str(source), tmp_path / "package", ConvertOptions(recipe=name))
    manifest = package.manifest
    assert (manifest.name, manifest.task, manifest.source.recipe) == (name, "generate", name)
    validation = manifest.variants["fp32"].validation
    assert validation is not None
    assert validation.passed
    assert (validation.atol, validation.rtol) == (recipe.atol, recipe.rtol)
    print_decisions(name, validation)
    generator = TextGenerator.load(package.path, "cpu")
    got = [list(g.token_ids) for g in generator.generate(PROMPTS, max_new_tokens=8)]
    assert got == _transformers_greedy(source, PROMPTS, 8)


def test_triton_generate_extension_matches_the_generator(
    openai_server: str, lm_packages: dict[str, Path]
) -> None:
    import urllib.request

    name = _names(lm_packages)["llama"]
    expected = TextGenerator.load(lm_packages["llama"], "cpu").generate(PROMPTS[1], max_new_tokens=10)
    body = json.dumps({"text_input": PROMPTS[1], "parameters": {"max_tokens": 10, "temperature": 0}}).encode()

    def post(path: str) -> bytes:
        request = urllib.request.Request(
            f"{openai_server}/v2/models/{name}/{path}",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            return bytes(response.read())

    whole = json.loads(post("generate"))
    assert whole["model_name"] == name
    assert whole["text_output"] == expected.text
    events = [
        json.loads(line.removeprefix("data: "))
        for line in post("generate_stream").decode().splitlines()
        if line.startswith("data: ")
    ]
    assert "".join(e["text_output"] for e in events) == expected.text
    assert events[-1]["finish_reason"] in ("stop", "length")


def test_generation_timers_time_first_token_and_decode_steps_apart(lm_packages: dict[str, Path]) -> None:
    from converters.causal_lm import torch_generation_timer
    from toolkit.bench.generation import generator_timer
    from toolkit.runner import Runner

    package = ModelPackage.open(lm_packages["gpt2"])
    generator = TextGenerator(package, Runner(package.model_path("fp32")))
    rows = np.asarray([[5, 6, 7, 8]] * 2, dtype=np.int64)
    timers = {
        "edge": generator_timer(generator),
        "torch": torch_generation_timer(Path(package.manifest.source.ref)),
    }
    for name, timer in timers.items():
        started = time.perf_counter()
        timing = timer(rows, 5)
        wall = time.perf_counter() - started
        # both parts measured inside the one call: positive, and together within its wall time
        assert timing.first_token_s > 0, name
        assert timing.decode_s > 0, name
        assert timing.first_token_s + timing.decode_s <= wall, name
    generation = generator.generate(PROMPTS[0], max_new_tokens=5, ignore_eos=True)
    timings = generation.timings
    assert timings.decode_ms > 0
    assert timings.decode_tokens_per_s == pytest.approx((timings.new_tokens - 1) / (timings.decode_ms / 1e3))


def test_edge_bench_times_ttft_and_decode_rate_for_each_variant_and_torch(
    lm_packages: dict[str, Path],
) -> None:
    result = CliRunner().invoke(
        edge,
        [
            "bench",
            str(lm_packages["gpt2"]),
            "--seq",
            "8,16",
            "--batch",
            "1,2",
            "--new-tokens",
            "4",
            "--iterations",
            "1",
            "--baseline",
            "torch",
            "--json",
            "-",
        ],
    )
    assert result.exit_code == 0, result.output
    cells = json.loads(result.output)["cells"]
    assert {c["backend"] for c in cells} == {"edge fp32", "torch eager"}
    assert {(c["prompt_tokens"], c["batch"], c["new_tokens"]) for c in cells} == {
        (p, b, 4) for p in (8, 16) for b in (1, 2)
    }
    for c in cells:  # the rate is the measured decode time's, never a difference floored into a huge figure
        assert c["ttft_ms"] > 0
        assert c["decode_ms"] > 0
        assert math.isfinite(c["decode_tokens_per_s"])
        assert c["decode_tokens_per_s"] == pytest.approx(
            c["batch"] * (c["new_tokens"] - 1) / (c["decode_ms"] / 1e3)
        )
    too_long = CliRunner().invoke(
        edge, ["bench", str(lm_packages["gpt2"]), "--seq", "60", "--new-tokens", "8"]
    )
    assert too_long.exit_code == 2
    assert "exceeds the model's 64 positions" in too_long.output
    for providers, message in ((",", "no execution provider given"), ("bogus", "unknown execution provider")):
        refused = CliRunner().invoke(edge, ["bench", str(lm_packages["gpt2"]), "--providers", providers])
        assert refused.exit_code == 2, refused.output
        assert message in refused.output
        assert "Traceback" not in refused.output


@pytest.mark.parametrize(
    ("kind", "chunk"), [("gpt2", None), ("qwen2", None), ("qwen2", 3), ("llama-fp16", 3)]
)
def test_rows_joining_and_leaving_a_running_batch_decode_as_if_alone(
    kind: str, chunk: int | None, lm_packages: dict[str, Path], request: pytest.FixtureRequest
) -> None:
    from toolkit.decoding.continuous import ContinuousBatch

    if kind == "llama-fp16":  # rows regrouped with their float16 cache
        generator = TextGenerator.load(request.getfixturevalue("llama_fp16"), "cpu", variant="fp16")
    else:
        generator = TextGenerator.load(lm_packages[kind], "cpu")
    prompts = [f"prompt {i}: " + "the lazy dog " * (i % 4) + "東京" * (i % 3) for i in range(6)]
    options = [generator.options(max_new_tokens=4 + 3 * i) for i in range(6)]
    options[4] = generator.options(max_new_tokens=12, do_sample=True, top_k=20, seed=3)
    alone = [generator.generate(p, **vars(o)) for p, o in zip(prompts, options, strict=True)]
    # chunk 3: prompts over 3 tokens prefill 3 positions per step beside the running rows, then join them
    batch = ContinuousBatch(generator, prefill_chunk=chunk)
    texts = dict.fromkeys(range(6), "")
    results = {}
    joined = steps = largest = waited = 0
    while joined < len(prompts) or batch.size:
        if joined < len(prompts) and steps % 2 == 0:  # a new request every other step, mid-decode
            batch.add(joined, prompts[joined], options[joined])
            joined += 1
        largest = max(largest, batch.size)
        waited += bool(batch.prefilling)
        for event in batch.step():
            texts[event.row] += event.text
            if event.generation is not None:
                results[event.row] = event.generation
        steps += 1
    assert largest >= 3  # rows really overlapped
    assert (waited > 6) == (chunk is not None)  # long prompts really waited, several steps each
    assert [results[i].token_ids for i in range(6)] == [g.token_ids for g in alone]
    assert [texts[i] for i in range(6)] == [g.text for g in alone]
    assert [results[i].finish_reason for i in range(6)] == [g.finish_reason for g in alone]


def test_a_long_prompt_prefills_in_pieces_and_decodes_the_same_tokens(
    lm_packages: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from toolkit.decoding import decoder

    generator = TextGenerator.load(lm_packages["qwen2"], "cpu")
    prompt = "the quick brown fox jumps over the lazy dog"
    runs = _count_runs(generator, monkeypatch)
    results = {}
    for chunk in (10_000, 4):
        monkeypatch.setattr(decoder, "PREFILL_CHUNK", chunk)
        runs[0] = 0
        results[chunk] = (generator.generate(prompt, max_new_tokens=6, ignore_eos=True), runs[0])
    (whole, whole_runs), (pieces, piece_runs) = results[10_000], results[4]
    prompt_tokens = whole.timings.prompt_tokens
    assert prompt_tokens > 8
    assert whole_runs == 1 + 5  # the prompt at once, then a step per token after the first
    assert piece_runs == -(-prompt_tokens // 4) + 5
    assert pieces.token_ids == whole.token_ids


def test_ray_serve_streams_a_chat_completion_from_a_generator(lm_packages: dict[str, Path]) -> None:
    import socket

    import ray
    from ray import serve

    from toolkit.serve.options import ServeOptions
    from toolkit.serve.ray_app import RayOptions, deploy_on_ray, ray_application
    from toolkit.serve.registry import LoadOptions

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    ray_options = RayOptions(replicas=1, num_cpus=0.5, local_cpus=2, port=port)
    options = ServeOptions()
    application = ray_application([lm_packages["qwen2"]], LoadOptions(threads=1), options, ray_options)
    try:
        url = deploy_on_ray(application, ray_options, options)
        name = _names(lm_packages)["qwen2"]
        messages = [{"role": "user", "content": "Hello from Ray"}]
        chunks = _client(url).chat.completions.create(
            model=name, messages=messages, max_tokens=8, stream=True
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finally:
        serve.shutdown()
        ray.shutdown()
    assert text == TextGenerator.load(lm_packages["qwen2"], "cpu").generate(messages, max_new_tokens=8).text


def test_causal_lm_without_a_fast_tokenizer_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    source = tmp_path / "hf"
    _model("llama", 320).save_pretrained(source)
    out = tmp_path / "package"
    result = CliRunner().invoke(edge, ["convert", str(source), "-o", str(out)])
    assert result.exit_code == 2
    assert "no fast tokenizer (tokenizer.json)" in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def test_generate_is_a_registered_task_and_its_pipeline_is_the_generator(
    lm_packages: dict[str, Path], tiny_bert_package: Path
) -> None:
    import toolkit
    from toolkit.errors import BadModelError
    from toolkit.tasks import pipeline_class, task_for

    package = ModelPackage.open(lm_packages["gpt2"])
    assert pipeline_class(package) is TextGenerator
    assert task_for(package).metric == "next_token_agreement"
    generator = toolkit.load(lm_packages["gpt2"], "cpu")
    assert isinstance(generator, toolkit.TextGenerator)
    assert generator.generate(PROMPTS[0], max_new_tokens=3).token_ids == (
        TextGenerator.load(lm_packages["gpt2"], "cpu").generate(PROMPTS[0], max_new_tokens=3).token_ids
    )
    with pytest.raises(BadModelError, match="has task 'features', not 'generate'"):
        TextGenerator.load(tiny_bert_package, "cpu")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"layers": 0}, "generation.layers"),
        ({"eos_token_ids": "2"}, "generation.eos_token_ids"),
        ({"eos_token_ids": [True]}, "generation.eos_token_ids"),
        ({"pad_token_id": "x"}, "generation.pad_token_id"),
        ({"chat_template": 3}, "generation.chat_template"),
        ({"past_input": "past.{layer}"}, "generation.past_input"),
        ({"defaults": []}, "generation.defaults"),
        ({"surprise": 1}, "malformed field"),
    ],
)
def test_a_malformed_generation_section_is_a_bad_model_error(
    change: dict[str, Any], field: str, lm_packages: dict[str, Path], tmp_path: Path
) -> None:
    import shutil

    from toolkit.errors import BadModelError

    copy = tmp_path / "pkg"
    shutil.copytree(lm_packages["gpt2"], copy)
    manifest = json.loads((copy / "edge.json").read_text(encoding="utf-8"))
    manifest["generation"].update(change)
    (copy / "edge.json").write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(BadModelError, match=None) as caught:
        ModelPackage.open(copy)
    assert field in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_tokenizer_that_escapes_the_package_is_refused(
    lm_packages: dict[str, Path], tmp_path: Path
) -> None:
    import shutil

    from toolkit.errors import BadModelError

    copy = tmp_path / "pkg"
    shutil.copytree(lm_packages["gpt2"], copy)
    (copy / "tokenizer.json").unlink()
    (copy / "tokenizer.json").symlink_to(lm_packages["gpt2"] / "tokenizer.json")
    with pytest.raises(BadModelError, match="outside the package"):
        TextGenerator.load(copy, "cpu")


def test_openai_routes_require_the_api_key_and_keep_the_limits(lm_packages: dict[str, Path]) -> None:
    from fastapi.testclient import TestClient

    from toolkit.serve.app import build_serving_app
    from toolkit.serve.options import ServeOptions
    from toolkit.serve.registry import LoadOptions

    key = "k" * 24
    options = ServeOptions(api_key=key, max_request_tokens=40, max_body_bytes=2048)
    serving = build_serving_app([lm_packages["gpt2"]], LoadOptions(threads=1), options)
    name = ModelPackage.open(lm_packages["gpt2"]).manifest.name
    body = {"model": name, "prompt": PROMPTS[0], "max_tokens": 4, "temperature": 0}
    with TestClient(serving.app) as client:
        assert client.get("/v2/health/live").status_code == 200
        assert client.post("/v1/completions", json=body).status_code == 401
        assert client.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        auth = {"Authorization": f"Bearer {key}"}
        ok = client.post("/v1/completions", json=body, headers=auth)
        assert ok.status_code == 200, ok.text
        expected = TextGenerator.load(lm_packages["gpt2"], "cpu").generate(PROMPTS[0], max_new_tokens=4)
        assert ok.json()["choices"][0]["text"] == expected.text
        too_many = client.post("/v1/completions", json={**body, "max_tokens": 40}, headers=auth)
        assert too_many.status_code == 413
        assert "40-token limit" in too_many.json()["error"]["message"]
        big = client.post("/v1/completions", json={**body, "prompt": "x" * 4000}, headers=auth)
        assert big.status_code == 413
        triton = client.post(f"/v2/models/{name}/generate", json={"text_input": "hi"})
        assert triton.status_code == 401


# -- a generator is a served model of the registry like every other ------------------------------------------


def _requests_counted(url: str, model: str, code: str) -> float:
    import urllib.request

    with urllib.request.urlopen(f"{url}/metrics", timeout=60) as response:
        lines = response.read().decode().splitlines()
    wanted = ("edge_requests_total{", f'model="{model}"', f'code="{code}"')
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if all(w in line for w in wanted))


def test_edge_serve_answers_ready_metadata_and_index_for_its_generators(
    openai_server: str, lm_packages: dict[str, Path]
) -> None:
    names = list(_names(lm_packages).values())
    status, index = post_json(f"{openai_server}/v2/repository/index", b"")
    assert status == 200
    assert [m for m in index if m["name"] in names] == [
        {"name": name, "version": "fp32", "state": "READY"} for name in names
    ]
    for name in names:
        assert get_json(f"{openai_server}/v2/models/{name}/ready") == (200, {"name": name, "ready": True})
        assert get_json(f"{openai_server}/v2/models/{name}/versions/fp32/ready")[0] == 200
        status, metadata = get_json(f"{openai_server}/v2/models/{name}")
        assert status == 200
        assert metadata == {
            "name": name,
            "versions": ["fp32"],
            "platform": "edge_generator",
            "inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1]}],
            "outputs": [{"name": "text_output", "datatype": "BYTES", "shape": [-1]}],
        }
    assert get_json(f"{openai_server}/v2/models/nope/ready")[0] == 404


def test_kserve_infer_on_a_generator_is_a_400_naming_the_generate_routes(
    openai_server: str, lm_packages: dict[str, Path]
) -> None:
    name = _names(lm_packages)["llama"]
    before = _requests_counted(openai_server, name, "400")
    v2_body = {"inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1], "data": ["hi"]}]}
    # a KServe body, and a Triton generate body sent to infer by mistake: refused before the body is read
    for body in (json.dumps(v2_body).encode(), b'{"text_input": "hi"}'):
        status, answer = post_json(f"{openai_server}/v2/models/{name}/infer", body)
        assert status == 400, answer
        message = answer["error"]
        assert "is a generator" in message
        for route in ("/v1/completions", "/v1/chat/completions", f"/v2/models/{name}/generate"):
            assert route in message
    assert _requests_counted(openai_server, name, "400") == before + 2
    status, answer = post_json(
        f"{openai_server}/v2/models/{name}/generate",
        {"text_input": PROMPTS[0], "parameters": {"max_tokens": 3}},
    )
    assert status == 200, answer


def test_a_generator_and_an_embedder_are_served_and_listed_together(
    lm_packages: dict[str, Path], minilm_package: Path
) -> None:
    from fastapi.testclient import TestClient

    from toolkit.serve.app import build_serving_app
    from toolkit.serve.models import GeneratorModel
    from toolkit.serve.options import ServeOptions
    from toolkit.serve.registry import LoadOptions

    serving = build_serving_app([lm_packages["gpt2"], minilm_package], LoadOptions(threads=1), ServeOptions())
    generator = ModelPackage.open(lm_packages["gpt2"]).manifest.name
    embedder = ModelPackage.open(minilm_package).manifest.name
    model = serving.registry.get(generator)
    assert isinstance(model, GeneratorModel)
    # the generators' service decodes with the registry's generator, not a second copy
    assert serving.service is not None
    assert serving.service.names() == (generator,)
    assert serving.service.workers[generator].generator is model.generator
    with TestClient(serving.app) as client:
        listed = [m["id"] for m in client.get("/v1/models").json()["data"]]
        assert listed == [generator, embedder]
        index = client.post("/v2/repository/index").json()
        assert [m["name"] for m in index] == [generator, embedder, f"{embedder}-text"]
        for name in (generator, embedder, f"{embedder}-text"):
            assert client.get(f"/v2/models/{name}/ready").json() == {"name": name, "ready": True}
        assert client.get(f"/v2/models/{generator}").json()["platform"] == "edge_generator"
        completion = client.post(
            "/v1/completions",
            json={"model": generator, "prompt": PROMPTS[0], "max_tokens": 4, "temperature": 0},
        )
        assert completion.status_code == 200, completion.text
        expected = TextGenerator.load(lm_packages["gpt2"], "cpu").generate(PROMPTS[0], max_new_tokens=4)
        assert completion.json()["choices"][0]["text"] == expected.text
        embedded = client.post("/v1/embeddings", json={"model": embedder, "input": ["the lazy dog"]})
        assert embedded.status_code == 200, embedded.text
        assert len(embedded.json()["data"][0]["embedding"]) == 384
        refused = client.post(f"/v2/models/{generator}/infer", json={"inputs": []})
        assert refused.status_code == 400
        assert f"/v2/models/{generator}/generate" in refused.json()["error"]
        # tensor models are served, so an unknown path answers in the KServe shape
        unknown = client.get("/no/such/route")
        assert unknown.status_code == 404
        assert "the KServe v2 endpoints are under /v2" in unknown.json()["error"]
