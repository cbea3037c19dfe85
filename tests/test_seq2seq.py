"""Encoder-decoders: tiny random Whisper, BART, T5 and Marian with tokenizers trained here, converted
with optimum-onnx and decoded by `SpeechRecognizer` / `Seq2SeqGenerator` against transformers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from gpu_support import needs

from converters.recipes import list_recipes
from tests.conftest import print_decisions
from tests.seq2seq_models import CORPUS, LANGUAGES, TEXT_KINDS, speech, text_source, whisper_source, write_wav
from toolkit.cli import edge
from toolkit.errors import BadInputError, BadModelError
from toolkit.manifest import ModelPackage


def test_log_mel_equals_whisper_feature_extractor() -> None:
    from transformers import WhisperFeatureExtractor

    from toolkit.speech import LogMelSpec, log_mel

    silence = np.zeros(16000, dtype=np.float32)
    trailing_silence = np.concatenate([speech(1.0), silence])
    for n_mels, wave_ in ((80, speech(3.3)), (128, speech(31.0)), (80, silence), (80, trailing_silence)):
        want = WhisperFeatureExtractor(feature_size=n_mels)(wave_, sampling_rate=16000, return_tensors="np")
        got = log_mel(wave_, LogMelSpec(n_mels=n_mels))
        np.testing.assert_allclose(got, want.input_features[0], atol=1e-4)


def test_packages_record_the_decoder_contract_and_validate(s2s_packages: dict[str, Path]) -> None:
    whisper = ModelPackage.open(s2s_packages["whisper"])
    assert whisper.manifest.task == "transcribe"
    spec = whisper.manifest.seq2seq
    assert spec is not None
    assert set(spec.languages) == set(LANGUAGES)
    assert spec.n_mels == 80
    assert set(spec.tasks) == {"transcribe", "translate"}
    for kind, package_dir in s2s_packages.items():
        manifest = ModelPackage.open(package_dir).manifest
        assert manifest.variants["fp32"].validation is not None
        assert manifest.variants["fp32"].validation.passed, kind
        assert (package_dir / "decoder.onnx").is_file()
        assert (package_dir / "decoder_with_past.onnx").is_file()
    assert ModelPackage.open(s2s_packages["bart"]).manifest.task == "text2text"


def _attention_graph(path: Path, masked: bool) -> Path:
    """Self-attention over x [1, 50, 32] as the torch exporter writes it (4 heads of 8): reshapes, transposes,
    MatMul(q * s1, k^T * s2), Softmax (after a mask Add when `masked`), MatMul(p, v), heads merged back."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = {n: numpy_helper.from_array(rng.normal(size=(32, 32)).astype(np.float32), n) for n in "QKV"}
    consts = [
        numpy_helper.from_array(np.array([1, 50, 4, 8], dtype=np.int64), "heads"),
        numpy_helper.from_array(np.array([1, 50, 32], dtype=np.int64), "merged"),
        numpy_helper.from_array(np.array(8**-0.25, dtype=np.float32), "s"),
        numpy_helper.from_array(np.triu(np.full((50, 50), -1e4, dtype=np.float32), 1), "mask"),
    ]
    node = helper.make_node
    nodes = [node("MatMul", ["x", n], [n.lower()]) for n in "QKV"]
    nodes += [
        node("Reshape", ["q", "heads"], ["q4"]),
        node("Transpose", ["q4"], ["qt"], perm=[0, 2, 1, 3]),
        node("Mul", ["qt", "s"], ["qs"]),
        node("Reshape", ["k", "heads"], ["k4"]),
        node("Transpose", ["k4"], ["kt"], perm=[0, 2, 3, 1]),
        node("Mul", ["kt", "s"], ["ks"]),
        node("Reshape", ["v", "heads"], ["v4"]),
        node("Transpose", ["v4"], ["vt"], perm=[0, 2, 1, 3]),
        node("MatMul", ["qs", "ks"], ["scores"]),
        *([node("Add", ["scores", "mask"], ["masked"])] if masked else []),
        node("Softmax", ["masked" if masked else "scores"], ["p"], axis=-1),
        node("MatMul", ["p", "vt"], ["o"]),
        node("Transpose", ["o"], ["ot"], perm=[0, 2, 1, 3]),
        node("Reshape", ["ot", "merged"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "attention",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 50, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 50, 32])],
        [*weights.values(), *consts],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(path))
    return path


def test_unmasked_encoder_attention_is_fused_into_multi_head_attention(
    s2s_packages: dict[str, Path], tmp_path: Path
) -> None:
    import onnxruntime as ort

    from converters.attention_fusion import fuse_attention
    from toolkit.inspect import op_types

    x = np.random.default_rng(1).normal(size=(1, 50, 32)).astype(np.float32)
    for masked in (False, True):
        path = _attention_graph(tmp_path / f"attention-{masked}.onnx", masked)
        want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        assert fuse_attention(path, 4) == (0 if masked else 1)
        assert ("MultiHeadAttention" in op_types(path)) != masked
        assert ("Softmax" in op_types(path)) == masked
        got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        np.testing.assert_allclose(got, want, atol=1e-5)
    # the converter fuses the Whisper encoder's (one per layer) and records it; BART and T5 mask theirs
    whisper = ModelPackage.open(s2s_packages["whisper"]).manifest.variants["fp32"]
    assert whisper.settings["fused_attention"] == 2
    assert "MultiHeadAttention" in op_types(s2s_packages["whisper"] / "model.onnx")
    for kind in ("bart", "t5"):
        assert (
            ModelPackage.open(s2s_packages[kind]).manifest.variants["fp32"].settings["fused_attention"] == 0
        )


def _whisper_reference(
    source: Path, audio: np.ndarray, beams: int, language: str | None, max_new_tokens: int = 20
) -> list[int]:
    """transformers' Whisper ``generate`` on one 30 s window without timestamps: its new tokens, eos dropped (it
    seeks past any timestamp pair the model emits and decodes again, as `SpeechRecognizer` does)."""
    import torch
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

    model = WhisperForConditionalGeneration.from_pretrained(source).eval()
    features = WhisperFeatureExtractor.from_pretrained(source)(
        audio, sampling_rate=16000, return_tensors="pt"
    )
    options: dict[str, Any] = {"language": language} if language is not None else {}
    with torch.inference_mode():
        out = model.generate(
            features.input_features,
            num_beams=beams,
            do_sample=False,
            max_new_tokens=max_new_tokens,
            **options,
        )
    return [int(t) for t in out[0].tolist()]


@pytest.mark.parametrize("beams", [1, 4])
def test_whisper_tokens_equal_transformers_greedy_and_beam(
    beams: int, whisper_ts_source: Path, whisper_ts_package: Path
) -> None:
    """On the tiny Whisper with Whisper's 1501 timestamp tokens (the 16-token one emits timestamp pairs near
    0 s without timestamps, so both sides seek 16 frames at a time through the window: slow, not wrong)."""
    from toolkit import SpeechRecognizer

    audio = speech(2.0)
    want = _whisper_reference(whisper_ts_source, audio, beams, "en")
    recognizer = SpeechRecognizer.load(whisper_ts_package, providers="cpu")
    got = recognizer.transcribe([audio], language="en", num_beams=beams, max_new_tokens=20)[0]
    assert list(got.token_ids) == want
    assert len(want) >= 20
    assert got.language == "en"


def test_whisper_text_equals_transformers_decode_when_the_config_cleans_up_spaces(
    whisper_ts_source: Path, whisper_ts_package: Path, tmp_path: Path
) -> None:
    import shutil

    from transformers import AutoTokenizer

    from toolkit import SpeechRecognizer

    copies = []
    for original, name in ((whisper_ts_source, "hf"), (whisper_ts_package, "pkg")):
        copy = tmp_path / name
        shutil.copytree(original, copy)
        config = json.loads((copy / "tokenizer_config.json").read_text())
        (copy / "tokenizer_config.json").write_text(
            json.dumps({**config, "clean_up_tokenization_spaces": True})
        )
        copies.append(copy)
    source, package = copies
    tokenizer = AutoTokenizer.from_pretrained(source)
    assert tokenizer.clean_up_tokenization_spaces
    ids = tokenizer("The dog , it 's quick . Is n't it ? Yes !", add_special_tokens=False).input_ids
    want = tokenizer.decode(ids, skip_special_tokens=True)
    assert want != tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    with SpeechRecognizer.load(package, providers="cpu") as recognizer:
        assert recognizer._text(ids) == want.strip()
        audio = speech(2.0)
        got = recognizer.transcribe([audio], language="en", max_new_tokens=20)[0]
    reference = _whisper_reference(source, audio, 1, "en")
    assert list(got.token_ids) == reference
    assert got.text == tokenizer.decode(reference, skip_special_tokens=True).strip()
    with SpeechRecognizer.load(whisper_ts_package, providers="cpu") as plain:  # the setting off: no clean-up
        assert (
            plain._text(ids)
            == tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False).strip()
        )


def _text_reference(source: Path, text: str, beams: int, **settings: Any) -> list[int]:
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    model = AutoModelForSeq2SeqLM.from_pretrained(source).eval()
    encoded = AutoTokenizer.from_pretrained(source)([text], return_tensors="pt", return_token_type_ids=False)
    with torch.inference_mode():
        out = model.generate(**encoded, num_beams=beams, do_sample=False, **settings)
    row = out[0].tolist()[1:]  # drop the decoder start token
    pad = model.generation_config.pad_token_id
    while row and row[-1] == pad:
        row.pop()
    return row


@pytest.mark.parametrize("beams", [1, 4])
@pytest.mark.parametrize("kind", TEXT_KINDS)
def test_text2text_tokens_equal_transformers_greedy_and_beam(
    kind: str, beams: int, s2s_sources: dict[str, Path], s2s_packages: dict[str, Path]
) -> None:
    from toolkit import Seq2SeqGenerator

    generator = Seq2SeqGenerator.load(s2s_packages[kind], providers="cpu")
    for text in CORPUS[:2]:
        want = _text_reference(s2s_sources[kind], text, beams)
        got = generator.generate([text], num_beams=beams)[0]
        assert list(got.token_ids) == want, (kind, beams, text)
        assert len(want) > 1


@pytest.fixture(scope="module")
def early_eos_bart(
    s2s_sources: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    """The tiny BART with its eos logit raised, so beams finish at different lengths and the length penalty
    decides between them (the plain random model never picks eos): its source and package."""
    import shutil

    from transformers import BartForConditionalGeneration

    from converters import convert

    root = tmp_path_factory.mktemp("early-eos-bart")
    model = BartForConditionalGeneration.from_pretrained(s2s_sources["bart"])
    model.final_logits_bias[0, model.config.eos_token_id] = 0.3
    model.save_pretrained(root / "source")
    for file in s2s_sources["bart"].iterdir():
        if "token" in file.name:
            shutil.copy(file, root / "source" / file.name)
    return root / "source", convert(str(root / "source"), root / "package").path


@pytest.mark.parametrize(
    "settings",
    [
        {"length_penalty": 3.0},
        {"length_penalty": 3.0, "early_stopping": True},
        {"length_penalty": 3.0, "early_stopping": "never", "no_repeat_ngram_size": 2, "min_length": 6},
    ],
)
def test_generate_settings_override_the_config_as_in_transformers(
    settings: dict[str, Any], early_eos_bart: tuple[Path, Path]
) -> None:
    from toolkit import Seq2SeqGenerator

    source, package = early_eos_bart
    generator = Seq2SeqGenerator.load(package, providers="cpu")
    for beams in (1, 4):
        got = generator.generate([CORPUS[2]], num_beams=beams, **settings)[0]
        assert list(got.token_ids) == _text_reference(source, CORPUS[2], beams, **settings)
    # the settings take effect: 4 beams with the config's length penalty (1.0) end elsewhere
    assert (
        generator.generate([CORPUS[2]], num_beams=4)[0]
        != generator.generate([CORPUS[2]], num_beams=4, **settings)[0]
    )


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"length_penalty": float("nan")}, "length_penalty must be a finite number"),
        ({"length_penalty": 10**400}, "length_penalty must be a finite number"),
        ({"no_repeat_ngram_size": -1}, "no_repeat_ngram_size must be an integer of at least 0"),
        ({"min_length": 2.5}, "min_length must be an integer of at least 0"),
        ({"early_stopping": "soon"}, 'early_stopping must be true, false or "never"'),
        ({"num_beams": 0}, "num_beams must be an integer of at least 1"),
    ],
)
def test_bad_generate_settings_are_one_line_errors(
    settings: dict[str, Any], message: str, s2s_packages: dict[str, Path]
) -> None:
    from toolkit import Seq2SeqGenerator

    generator = Seq2SeqGenerator.load(s2s_packages["bart"], providers="cpu")
    with pytest.raises(BadInputError, match=message) as error:
        generator.generate([CORPUS[0]], **settings)
    assert "\n" not in str(error.value)


def test_decoder_caches_are_bound_in_place_and_regroup_by_row(s2s_packages: dict[str, Path]) -> None:
    from toolkit import Seq2SeqGenerator
    from toolkit.decoding import DecodingRules, log_softmax

    generator = Seq2SeqGenerator.load(s2s_packages["bart"])
    ids = generator.tokenizer.encode(CORPUS[0]).ids
    mask = np.ones((1, len(ids)), dtype=np.int64)
    states = generator.runner.run({"input_ids": np.asarray([ids]), "attention_mask": mask})[
        "last_hidden_state"
    ]
    prompt = np.tile(np.asarray(generator.spec.decoder_start_ids), (3, 1))
    no_rules = DecodingRules(prompt.shape[1], 100, frozenset(generator.spec.eos_token_ids))
    stepper = generator.stepper(states, mask, prompt, no_rules, 4)  # three rows share one encoder row
    buffers = [address for side in stepper.cache._buffers for address, _ in side]
    stepper.step(np.array([5, 6, 7]))
    before = stepper.cache.view(1, "value")
    stepper.reorder(np.array([2, 0, 0]))
    np.testing.assert_array_equal(stepper.cache.view(1, "value"), before[[2, 0, 0]])
    assert stepper.ids[:, -1].tolist() == [7, 5, 5]
    scores = stepper.step(np.array([8, 8, 8]))
    np.testing.assert_array_equal(scores[1], scores[2])
    assert [address for side in stepper.cache._buffers for address, _ in side] == buffers
    # the cached steps equal one uncached run of the first decoder over the whole history
    first = generator.decoders[0].session
    feeds = {"input_ids": stepper.ids, "encoder_hidden_states": np.repeat(states, 3, axis=0)}
    if "encoder_attention_mask" in {i.name for i in first.get_inputs()}:
        feeds["encoder_attention_mask"] = np.repeat(mask, 3, axis=0)
    plain = first.run(["logits"], feeds)[0][:, -1, :]
    np.testing.assert_allclose(scores, log_softmax(plain), atol=1e-4)
    with pytest.raises(BadInputError, match="a reorder keeps 3 rows"):
        stepper.reorder(np.array([0, 1]))
    # rows over distinct encoder states: regrouping moves their cross-attention caches too
    two = np.concatenate([states, 0.5 * states])
    pair = generator.stepper(two, np.repeat(mask, 2, axis=0), prompt[:2], no_rules, 4)
    swapped = generator.stepper(two[::-1].copy(), np.repeat(mask, 2, axis=0), prompt[:2], no_rules, 4)
    pair.reorder(np.array([1, 0]))
    np.testing.assert_allclose(pair.step(np.array([5, 6])), swapped.step(np.array([5, 6])), atol=1e-5)


def test_registry_loads_the_pipelines_and_refuses_other_tasks(s2s_packages: dict[str, Path]) -> None:
    import toolkit

    assert isinstance(toolkit.load(s2s_packages["whisper"], "cpu"), toolkit.SpeechRecognizer)
    assert isinstance(toolkit.load(s2s_packages["t5"], "cpu"), toolkit.Seq2SeqGenerator)
    with pytest.raises(BadModelError, match="not 'transcribe'"):
        toolkit.SpeechRecognizer.load(s2s_packages["t5"])


@pytest.mark.parametrize("kind", ["whisper", "t5"])
def test_a_tokenizer_file_that_pads_or_truncates_is_read_with_both_off(
    kind: str, s2s_packages: dict[str, Path], tmp_path: Path
) -> None:
    """Every pipeline that writes text reads its tokenizer one way (the transcribe task's used to keep the file's
    truncation and padding): a long text is never cut to the file's length."""
    import shutil

    import toolkit

    package = Path(shutil.copytree(s2s_packages[kind], tmp_path / kind))
    path = package / "tokenizer.json"
    data = json.loads(path.read_text())
    data["truncation"] = {"direction": "Right", "max_length": 2, "strategy": "LongestFirst", "stride": 0}
    data["padding"] = {
        "strategy": {"Fixed": 64},
        "direction": "Right",
        "pad_to_multiple_of": None,
        "pad_id": 0,
        "pad_type_id": 0,
        "pad_token": "<pad>",
    }
    path.write_text(json.dumps(data))
    tokenizer = toolkit.load(package, "cpu").tokenizer
    assert tokenizer.truncation is None
    assert tokenizer.padding is None
    assert 2 < len(tokenizer.encode(CORPUS[0]).ids) < 64


def test_a_44k_stereo_wav_transcribes_like_its_16k_mono_version(
    s2s_packages: dict[str, Path], tmp_path: Path
) -> None:
    from toolkit import SpeechRecognizer
    from toolkit.speech import resample

    audio = speech(2.0)
    mono = write_wav(tmp_path / "mono.wav", audio, 16000)
    stereo = write_wav(tmp_path / "stereo.wav", resample(audio, 16000, 44100), 44100, channels=2)
    recognizer = SpeechRecognizer.load(s2s_packages["whisper"], providers="cpu")
    a, b = recognizer.transcribe([mono, stereo], language="en", max_new_tokens=8)
    assert a.token_ids == b.token_ids
    assert abs(a.seconds - b.seconds) < 1e-3


def test_long_clips_are_decoded_in_overlapping_windows_and_language_is_detected(
    s2s_packages: dict[str, Path],
) -> None:
    from toolkit import SpeechRecognizer

    recognizer = SpeechRecognizer.load(s2s_packages["whisper"], providers="cpu")
    long_clip = speech(65.0)
    result = recognizer.transcribe([long_clip], max_new_tokens=4)[0]
    assert result.language in LANGUAGES
    assert result.segments == ()  # segments come with timestamps
    assert result.seconds == pytest.approx(65.0)
    first = recognizer.transcribe([long_clip[: 30 * 16000]], max_new_tokens=4)[0]
    assert first.language == result.language  # detected on the first window, the same samples
    assert result.token_ids[: len(first.token_ids)] == first.token_ids


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda r, tmp: r.transcribe([np.zeros(0, dtype=np.float32)]), "zero-length clip"),
        (lambda r, tmp: r.transcribe([speech(1.0)], language="xx"), "unknown language code 'xx'"),
        (lambda r, tmp: r.transcribe([_float_wav(tmp)]), "is not a PCM WAV file"),
        (lambda r, tmp: r.transcribe([speech(1.0)], task="summarise"), "unknown task 'summarise'"),
    ],
)
def test_bad_speech_input_is_a_one_line_error(
    call: Any, message: str, s2s_packages: dict[str, Path], tmp_path: Path
) -> None:
    from toolkit import SpeechRecognizer

    recognizer = SpeechRecognizer.load(s2s_packages["whisper"], providers="cpu")
    with pytest.raises(BadInputError, match=None) as caught:
        call(recognizer, tmp_path)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def _float_wav(tmp: Path) -> Path:
    """A WAV file with IEEE float samples (format 3), which the PCM reader refuses."""
    import struct

    data = np.zeros(160, dtype="<f4").tobytes()
    header = b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVE"
    fmt = b"fmt " + struct.pack("<IHHIIHH", 16, 3, 1, 16000, 64000, 4, 32)
    path = tmp / "float.wav"
    path.write_bytes(header + fmt + b"data" + struct.pack("<I", len(data)) + data)
    return path


def test_edge_run_prints_transcripts_and_text2text(s2s_packages: dict[str, Path], tmp_path: Path) -> None:
    clip = write_wav(tmp_path / "clip.wav", speech(1.5), 16000)
    runner = CliRunner()
    result = runner.invoke(edge, ["run", str(s2s_packages["whisper"]), "--audio", str(clip), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["transcripts"][0]["language"] in LANGUAGES
    text = runner.invoke(edge, ["run", str(s2s_packages["bart"]), "--text", CORPUS[0]])
    assert text.exit_code == 0, text.output
    assert "->" in text.output
    empty = write_wav(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32), 16000)
    bad = runner.invoke(edge, ["run", str(s2s_packages["whisper"]), "--audio", str(empty)])
    assert bad.exit_code == 2
    assert "zero-length clip" in bad.output
    assert "Traceback" not in bad.output


def test_a_malformed_seq2seq_section_is_a_bad_model_error(
    s2s_packages: dict[str, Path], tmp_path: Path
) -> None:
    import shutil

    copy = tmp_path / "pkg"
    shutil.copytree(s2s_packages["t5"], copy)
    manifest = json.loads((copy / "edge.json").read_text(encoding="utf-8"))
    manifest["seq2seq"]["eos_token_ids"] = []
    (copy / "edge.json").write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(BadModelError, match=r"seq2seq\.eos_token_ids"):
        ModelPackage.open(copy)


SEQ2SEQ_RECIPES = sorted(r.name for r in list_recipes() if r.task in ("transcribe", "text2text"))


@pytest.mark.parametrize("name", SEQ2SEQ_RECIPES)
def test_recipe_offline_stand_in_converts_and_matches_transformers(name: str, tmp_path: Path) -> None:
    from converters import ConvertOptions, convert
    from converters.recipes import load_recipe
    from toolkit import Seq2SeqGenerator, SpeechRecognizer

    recipe = load_recipe(name)
    assert recipe.offline is not None
    kwargs = dict(recipe.offline.config_kwargs)
    source = tmp_path / "hf"
    if recipe.task == "transcribe":
        multilingual = not name.endswith(".en")
        whisper_source(source, kwargs, multilingual=multilingual)
    else:
        text_source(name, source, (recipe.offline.model, recipe.offline.config, kwargs))
    package = convert(str(source), tmp_path / "package", ConvertOptions(recipe=name))
    manifest = package.manifest
    assert (manifest.name, manifest.task, manifest.source.recipe) == (name, recipe.task, name)
    validation = manifest.variants["fp32"].validation
    assert validation is not None
    assert validation.passed
    assert (validation.atol, validation.rtol) == (recipe.atol, recipe.rtol)
    print_decisions(name, validation)
    if recipe.task == "transcribe":
        language = "en" if multilingual else None
        audio = speech(1.5)
        got = SpeechRecognizer.load(package.path, providers="cpu").transcribe(
            [audio], language=language, max_new_tokens=10
        )
        assert list(got[0].token_ids) == _whisper_reference(source, audio, 1, language, max_new_tokens=10)
    else:
        beams = int(kwargs.get("num_beams", 1))
        generator = Seq2SeqGenerator.load(package.path, providers="cpu")
        assert list(generator.generate([CORPUS[1]])[0].token_ids) == _text_reference(source, CORPUS[1], beams)


@pytest.mark.parametrize(("kind", "method"), [("whisper", "dynamic-int8"), ("t5", "int4")])
def test_quantized_encoder_decoders_report_token_agreement(
    kind: str, method: str, s2s_packages: dict[str, Path], tmp_path: Path
) -> None:
    import shutil

    import toolkit
    from converters import quantize

    copy = tmp_path / kind
    shutil.copytree(s2s_packages[kind], copy)
    result = quantize(copy, method)
    variant = result.variant
    assert variant is not None
    assert variant.validation is not None
    assert variant.validation.metric == "token_agreement"
    assert 0.0 <= variant.validation.value <= 1.0
    for name in ("model", "decoder", "decoder_with_past"):
        assert (copy / f"{name}.{variant.name}.onnx").is_file()
    checks = {c.name for c in variant.validation.outputs}
    assert ("wer_vs_fp32" in checks) == (kind == "whisper")
    pipeline: Any = toolkit.load(copy, "cpu", variant=variant.name)
    sample = [speech(1.0)] if kind == "whisper" else [CORPUS[0]]
    run = pipeline.transcribe if kind == "whisper" else pipeline.generate
    assert run(sample, max_new_tokens=4)[0].token_ids
    result = CliRunner().invoke(edge, ["quantize", str(copy), "--method", "static-int8"])
    assert result.exit_code == 2
    assert "does not apply to encoder-decoder packages" in result.output


def test_edge_bench_reports_the_real_time_factor_of_a_speech_package(s2s_packages: dict[str, Path]) -> None:
    result = CliRunner().invoke(edge, ["bench", str(s2s_packages["whisper"]), "--json", "-"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output[: result.output.rindex("]") + 1])
    assert [row["variant"] for row in rows] == ["fp32"]
    assert rows[0]["rtf"] > 0
    assert rows[0]["clip_seconds"] == 10.0


def test_edge_bench_times_whole_generations_of_a_text2text_package(
    s2s_packages: dict[str, Path], tmp_path: Path
) -> None:
    report = tmp_path / "bench.json"
    result = CliRunner().invoke(edge, ["bench", str(s2s_packages["t5"]), "--json", str(report)])
    assert result.exit_code == 0, result.output
    assert "fp32: 32 new tokens in" in result.output
    rows = json.loads(report.read_text())
    # eos is held back, so every run makes the full 32 tokens: tokens/s is that count over the median time
    assert rows[0]["new_tokens"] == 32
    assert rows[0]["tokens_per_s"] == pytest.approx(32 / rows[0]["median_seconds"])
    assert rows[0]["input_tokens"] > 20


def test_timestamp_tokens_split_the_transcript_into_segments(s2s_packages: dict[str, Path]) -> None:
    from toolkit import SpeechRecognizer
    from toolkit.tasks.transcribe.timestamps import WindowOutput, merge_windows

    recognizer = SpeechRecognizer.load(s2s_packages["whisper"], providers="cpu")
    spec = recognizer.spec
    assert spec.no_timestamps_token_id is not None
    begin = spec.no_timestamps_token_id + 1
    words = recognizer.tokenizer.encode("the quick brown fox").ids
    ids = [begin, *words[:2], begin + 5, begin + 5, *words[2:], begin + 12]

    def merge(windows: list[WindowOutput]) -> list[Any]:
        return merge_windows(
            windows,
            timestamps=True,
            timestamp_begin=begin,
            special_ids=frozenset(spec.eos_token_ids),
            languages={},
        )

    pieces = merge([WindowOutput(tuple(ids), 20.0, 0.0, 0.0)])
    assert [(p.start, p.end, list(p.tokens)) for p in pieces] == [
        (0.0, 0.1, words[:2]),
        (0.1, 0.24, words[2:]),
    ]
    # windows of 30 s overlapping by 5 s: the next starts 20 s in. The first window's last timestamp lies in its
    # right stride, so that segment stays open, the second window's first timestamp (inside its left stride) is
    # skipped, and the segment closes on the second window's end timestamp, 20 s + 6.2 s
    second = [begin + 300, *words[:1], begin + 310]
    pieces = merge([WindowOutput(tuple(ids), 30.0, 0.0, 5.0), WindowOutput(tuple(second), 20.0, 5.0, 0.0)])
    assert [(p.start, p.end, list(p.tokens)) for p in pieces] == [
        (0.0, 0.1, words[:2]),
        (0.1, 26.2, words[2:] + words[:1]),
    ]
    prompt = recognizer._prompt("en", "transcribe", timestamps=True)
    assert spec.no_timestamps_token_id not in prompt
    assert prompt[-1] == spec.tasks["transcribe"]


def test_edge_run_timestamps_needs_a_speech_package(
    s2s_packages: dict[str, Path], whisper_ts_package: Path, tmp_path: Path
) -> None:
    clip = write_wav(tmp_path / "clip.wav", speech(1.0), 16000)
    runner = CliRunner()
    ok = runner.invoke(edge, ["run", str(whisper_ts_package), "--audio", str(clip), "--timestamps", "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)["transcripts"][0]["segments"]
    bad = runner.invoke(edge, ["run", str(s2s_packages["bart"]), "--text", "hi", "--timestamps"])
    assert bad.exit_code == 2
    assert "--timestamps applies to transcribe packages; 'bart' has task text2text" in bad.output


def test_edge_run_passes_decoding_flags_to_the_pipeline(
    s2s_packages: dict[str, Path], tmp_path: Path
) -> None:
    from toolkit import Seq2SeqGenerator, SpeechRecognizer

    clip = write_wav(tmp_path / "clip.wav", speech(1.0), 16000)
    runner = CliRunner()
    args = ["--language", "de", "--translate", "--num-beams", "4", "--max-new-tokens", "5", "--json"]
    result = runner.invoke(edge, ["run", str(s2s_packages["whisper"]), "--audio", str(clip), *args])
    assert result.exit_code == 0, result.output
    (served,) = json.loads(result.output)["transcripts"]
    with SpeechRecognizer.load(s2s_packages["whisper"]) as recognizer:
        want = recognizer.transcribe([clip], language="de", task="translate", num_beams=4, max_new_tokens=5)[
            0
        ]
    assert served["language"] == "de"
    assert served["token_ids"] == list(want.token_ids)
    result = runner.invoke(
        edge,
        ["run", str(s2s_packages["t5"]), "--text", CORPUS[0], "--num-beams", "4", "--max-new-tokens", "3"],
    )
    assert result.exit_code == 0, result.output
    with Seq2SeqGenerator.load(s2s_packages["t5"]) as generator:
        text = generator.generate([CORPUS[0]], num_beams=4, max_new_tokens=3)[0].text
    assert f"-> {text}" in result.output
    refused = runner.invoke(edge, ["run", str(s2s_packages["t5"]), "--text", "hi", "--language", "en"])
    assert refused.exit_code == 2
    assert "--language applies to transcribe packages; 't5' has task text2text" in refused.output
    bad = runner.invoke(edge, ["run", str(s2s_packages["whisper"]), "--audio", str(clip), "--language", "xx"])
    assert bad.exit_code == 2
    assert "unknown language code 'xx'" in bad.output


@needs("cuda")
def test_cuda_keeps_both_decoder_caches_on_the_device_and_matches_cpu(s2s_packages: dict[str, Path]) -> None:
    from toolkit import Seq2SeqGenerator, SpeechRecognizer
    from toolkit.decoding import DecodingRules

    cpu = SpeechRecognizer.load(s2s_packages["whisper"], providers="cpu")
    gpu = SpeechRecognizer.load(s2s_packages["whisper"], providers="cuda")
    assert gpu.runner.device == ("cuda", 0)
    clip = speech(2.0)
    for beams in (1, 4):
        assert gpu.transcribe([clip], language="en", num_beams=beams)[0].token_ids == (
            cpu.transcribe([clip], language="en", num_beams=beams)[0].token_ids
        )
    text_cpu = Seq2SeqGenerator.load(s2s_packages["bart"], providers="cpu")
    text_gpu = Seq2SeqGenerator.load(s2s_packages["bart"], providers="cuda")
    for beams in (1, 4):
        assert text_gpu.generate(CORPUS[:1], num_beams=beams)[0].token_ids == (
            text_cpu.generate(CORPUS[:1], num_beams=beams)[0].token_ids
        )
    ids = text_gpu.tokenizer.encode(CORPUS[0]).ids
    mask = np.ones((1, len(ids)), dtype=np.int64)
    states = text_gpu.runner.run({"input_ids": np.asarray([ids]), "attention_mask": mask})[
        "last_hidden_state"
    ]
    rules = DecodingRules(1, 100, frozenset(text_gpu.spec.eos_token_ids))
    stepper = text_gpu.stepper(states, mask, np.asarray([text_gpu.spec.decoder_start_ids]), rules, 4)
    _, owner = stepper.cache._buffers[0][0]
    assert owner.device_name().lower() == "cuda"
    assert all(value.device_name().lower() == "cuda" for value in stepper._cross.values())
