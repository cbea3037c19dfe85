"""`edge quantize --held-out`: the user's own text replaces the built-in held-out samples wherever a variant's
accuracy is measured (the int4 search's scores, the recorded accuracy, the budget check); tiny random models."""

from __future__ import annotations

import inspect
import shutil
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from converters.accuracy import compare_variant, held_out_set
from converters.quantization import CalibrationOptions, QuantizeOptions, QuantizeResult, quantize
from converters.verify import verify
from tests.test_generate import _model, _tokenizer
from tests.test_rerank import cross_encoder_dir, cross_encoder_package  # noqa: F401 - fixtures used here
from toolkit.cli import edge
from toolkit.manifest import ModelPackage, Validation
from toolkit.tasks.generate import GenerateTask

# a domain unlike the built-in English sentences: Python source
CODE = inspect.getsource(textwrap)[:4000]


@pytest.fixture(scope="module")
def llama_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random Llama of test_generate (64 positions) converted once. Read-only."""
    from transformers import PreTrainedTokenizerFast

    from converters import convert

    root = tmp_path_factory.mktemp("held-out-llama")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_tokenizer(), bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    _model("llama", len(tokenizer)).save_pretrained(root / "hf")
    tokenizer.save_pretrained(root / "hf")
    return convert(str(root / "hf"), root / "package").path


def _invoke(*args: str) -> Result:
    return CliRunner().invoke(edge, list(args))


def _validation(result: QuantizeResult) -> Validation:
    """The written variant's recorded accuracy."""
    assert result.variant is not None
    assert result.variant.validation is not None
    return result.variant.validation


def test_int4_search_and_recorded_accuracy_on_a_generator_use_the_users_text(
    llama_package: Path, tmp_path: Path
) -> None:
    llama = Path(shutil.copytree(llama_package, tmp_path / "llama"))
    text = tmp_path / "code.txt"
    text.write_text(CODE, encoding="utf-8")
    result = _invoke("quantize", str(llama), "--method", "int4", "--held-out", str(text), "--budget", "0.5")
    assert result.exit_code == 0, result.output
    package = ModelPackage.open(llama)
    own = held_out_set(package, text)
    count = len(own.feeds)
    assert f"on user file code.txt ({count} samples)" in result.output
    variant = package.manifest.variants["int4"]
    validation = variant.validation
    assert validation is not None
    assert (validation.held_out, validation.samples) == (f"user file code.txt ({count} samples)", count)
    # the text cut into consecutive windows of the model's 64 positions, all of it (a 1-token tail aside)
    windows = [list(f["input_ids"][0]) for f in own.feeds]
    ids = GenerateTask(package).tokenizer.encode(CODE).ids
    cut = [token for window in windows for token in window]
    assert count > 1
    assert len(windows[0]) == 64
    assert all(len(w) <= 64 for w in windows)
    assert cut == ids[: len(cut)]
    assert len(ids) - len(cut) <= 1
    # the search scored the candidates on those windows: the picked one's score is the recorded accuracy,
    # which the built-in sentences would not have given
    picked = next(
        c
        for c in variant.settings["candidates"]
        if (c["block_size"], c["accuracy_level"])
        == (variant.settings["block_size"], variant.settings["accuracy_level"])
    )
    on_own = compare_variant(package, llama / variant.file, own.feeds).score
    on_builtin = compare_variant(package, llama / variant.file).score
    assert picked["score"] == pytest.approx(validation.value, abs=1e-6) == pytest.approx(on_own, abs=1e-6)
    assert on_builtin != pytest.approx(on_own, abs=1e-4)


def test_text_model_measures_one_sample_a_line_disjoint_from_calibration(
    tiny_bert_package: Path, tmp_path: Path
) -> None:
    bert = Path(shutil.copytree(tiny_bert_package, tmp_path / "bert"))
    calibration, held = tmp_path / "calibration.txt", tmp_path / "held.txt"
    calibration.write_text("first line\nsecond line\nthird line\n", encoding="utf-8")
    held.write_text("second line\n\nthird line\n  fourth line  \nfifth one\nsixth one\n", encoding="utf-8")
    options = QuantizeOptions(calibration=CalibrationOptions(data=calibration), held_out=held)
    static = _validation(quantize(bert, "static-int8", options))
    # the lines the calibration used are left out: fourth, fifth, sixth
    assert (static.held_out, static.samples) == ("user file held.txt (3 samples)", 3)
    plain = _validation(quantize(bert, "dynamic-int8", QuantizeOptions(held_out=held)))
    assert (plain.held_out, plain.samples) == ("user file held.txt (5 samples)", 5)
    builtin = _validation(quantize(bert, "dynamic-int8", QuantizeOptions(name="int8-builtin")))
    assert builtin.held_out == f"built-in held-out samples ({builtin.samples})"
    assert builtin.samples > 5
    # `edge verify` re-measures on the built-in samples, and its record says so
    (check,) = verify(bert, ["int8"], update=True, latency_runs=1).checks
    assert check.recorded is not None
    assert check.recorded.held_out == "user file held.txt (5 samples)"
    assert check.now.held_out == builtin.held_out


def test_reranker_measures_lists_of_the_users_lines(
    cross_encoder_package: Path,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    reranker = Path(shutil.copytree(cross_encoder_package, tmp_path / "reranker"))
    held = tmp_path / "held.txt"
    held.write_text("\n".join(f"line {i} about topic {i * 7 % 5}" for i in range(10)), encoding="utf-8")
    own = held_out_set(ModelPackage.open(reranker), held)
    assert [len(f["input_ids"]) for f in own.feeds] == [8] * 10  # one query against 8 of the lines each
    result = _validation(quantize(reranker, "dynamic-int8", QuantizeOptions(held_out=held)))
    assert (result.metric, result.held_out) == ("ranking_agreement", "user file held.txt (10 samples)")


@pytest.mark.parametrize(
    ("package", "name", "content", "message"),
    [
        ("bert", "missing.txt", None, "does not exist; pass a .txt file of your own text to --held-out"),
        ("bert", "held.csv", "a,b\n", "is not a .txt file; pass a .txt file"),
        ("bert", "empty.txt", "\n  \n", "has no text to measure on"),
        ("vit", "held.txt", "a line\n", "needs a text model, but package"),
    ],
)
def test_bad_held_out_file_is_a_one_line_error(
    package: str,
    name: str,
    content: str | None,
    message: str,
    tiny_bert_package: Path,
    tiny_vit_package: Path,
    tmp_path: Path,
) -> None:
    source = {"bert": tiny_bert_package, "vit": tiny_vit_package}[package]
    folder = Path(shutil.copytree(source, tmp_path / package))
    path = tmp_path / name
    if content is not None:
        path.write_text(content, encoding="utf-8")
    result = _invoke("quantize", str(folder), "--method", "dynamic-int8", "--held-out", str(path))
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: held-out text '{path}'")
    assert message in result.output
    assert result.output.count("\n") == 1
    assert not (folder / "model.int8.onnx").exists()
