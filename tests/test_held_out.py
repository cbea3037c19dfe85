"""`edge quantize --held-out`: the user's own text replaces the built-in held-out samples wherever a variant's
accuracy is measured (the int4 search's scores, the recorded accuracy, the budget check), cut once per quantize;
`edge verify --held-out` re-measures on the same text; tiny random models."""

from __future__ import annotations

import inspect
import shutil
import textwrap
from collections.abc import Sequence
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from converters.accuracy import compare_variant, held_out_set
from converters.quantization import CalibrationOptions, QuantizeOptions, QuantizeResult, quantize
from converters.verify import verify
from tests.test_generate import _model, _tokenizer
from tests.test_rerank import cross_encoder_dir, cross_encoder_package  # noqa: F401 - fixtures used here
from toolkit.cli import edge
from toolkit.errors import BadInputError
from toolkit.manifest import ModelPackage, Validation
from toolkit.tasks.base import Feeds
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


@pytest.fixture(scope="module")
def llama_int4_on_code(llama_package: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny Llama with an int4 variant (block 32, no search) quantized with `--held-out` on `CODE`, and that
    text file. Read-only."""
    root = tmp_path_factory.mktemp("llama-int4-on-code")
    llama = Path(shutil.copytree(llama_package, root / "llama"))
    text = root / "code.txt"
    text.write_text(CODE, encoding="utf-8")
    # a low budget: the random model's agreement is whatever it is, and verify exits 1 below its budget
    options = QuantizeOptions(block_size=32, held_out=text, budget=0.1)
    quantize(llama, "int4", options)
    return llama, text


def test_int4_search_and_recorded_accuracy_on_a_generator_use_the_users_text(
    llama_package: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    llama = Path(shutil.copytree(llama_package, tmp_path / "llama"))
    text = tmp_path / "code.txt"
    text.write_text(CODE, encoding="utf-8")
    cuts: list[str] = []
    cut_text = GenerateTask.own_held_out

    def counted(task: GenerateTask, own: str, exclude_texts: Sequence[str] = ()) -> list[Feeds]:
        cuts.append(own)
        return cut_text(task, own, exclude_texts)

    monkeypatch.setattr(GenerateTask, "own_held_out", counted)
    result = _invoke("quantize", str(llama), "--method", "int4", "--held-out", str(text), "--budget", "0.5")
    assert result.exit_code == 0, result.output
    # the file's check, the block search and the recorded accuracy share one cut of the text
    assert cuts == [CODE]
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


BAD_TEXT_FILES = [
    ("missing.txt", None, "does not exist; pass a .txt file of your own text to --held-out"),
    ("held.csv", "a,b\n", "is not a .txt file; pass a .txt file"),
    ("empty.txt", "\n  \n", "has no text to measure on"),
]
"""(file name, content or None for no file, what the error says) for a text model's --held-out."""


@pytest.mark.parametrize(
    ("package", "name", "content", "message"),
    [
        *(("bert", *case) for case in BAD_TEXT_FILES),
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


def test_verify_with_the_same_held_out_text_measures_what_quantize_recorded(
    llama_int4_on_code: tuple[Path, Path], tmp_path: Path
) -> None:
    llama, text = Path(shutil.copytree(llama_int4_on_code[0], tmp_path / "llama")), llama_int4_on_code[1]
    recorded = ModelPackage.open(llama).manifest.variants["int4"].validation
    assert recorded is not None
    assert recorded.held_out is not None
    assert recorded.held_out.startswith("user file code.txt (")
    result = _invoke("verify", str(llama), "--held-out", str(text), "--runs", "1", "--update")
    assert result.exit_code == 0, result.output
    assert f"on {recorded.held_out}" in " ".join(result.output.split())  # rich may wrap the line
    assert "compare like with like" not in result.output
    (now,) = ModelPackage.open(llama).manifest.variants["int4"].verifications
    # the same text gives the same windows, so the same figure; the re-verification records its source
    assert (now.held_out, now.samples) == (recorded.held_out, recorded.samples)
    assert now.value == pytest.approx(recorded.value, abs=1e-9)


def test_verify_without_the_held_out_text_says_which_inputs_each_figure_came_from(
    llama_int4_on_code: tuple[Path, Path],
) -> None:
    llama = llama_int4_on_code[0]
    recorded = ModelPackage.open(llama).manifest.variants["int4"].validation
    assert recorded is not None
    result = _invoke("verify", str(llama), "--runs", "1")
    assert result.exit_code == 0, result.output
    (check,) = verify(llama, latency_runs=1).checks
    builtin = check.now.held_out
    assert builtin is not None
    assert builtin.startswith("built-in held-out samples (")
    assert check.now.value != pytest.approx(recorded.value, abs=1e-4)  # why saying so matters
    note = (
        f"int4: accuracy recorded on {recorded.held_out}, verified on {builtin}: pass --held-out with that "
        "file to compare like with like"
    )
    assert check.held_out_note == note.removeprefix("int4: accuracy ")
    assert note in " ".join(result.output.split())  # rich may wrap the line


@pytest.mark.parametrize(("name", "content", "message"), BAD_TEXT_FILES)
def test_verify_bad_held_out_file_is_the_same_one_line_error(
    name: str, content: str | None, message: str, llama_int4_on_code: tuple[Path, Path], tmp_path: Path
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content, encoding="utf-8")
    result = _invoke("verify", str(llama_int4_on_code[0]), "--held-out", str(path))
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: held-out text '{path}'")
    assert message in result.output
    assert result.output.count("\n") == 1


def test_an_encoder_decoder_refuses_held_out_text(s2s_packages: dict[str, Path], tmp_path: Path) -> None:
    held = tmp_path / "held.txt"
    held.write_text("a sentence of my own\n", encoding="utf-8")
    bart = s2s_packages["bart"]
    files = sorted(bart.iterdir())
    result = _invoke("quantize", str(bart), "--method", "dynamic-int8", "--held-out", str(held))
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: --held-out applies to single-graph models and generators;")
    assert result.output.count("\n") == 1
    assert sorted(bart.iterdir()) == files
    with pytest.raises(BadInputError, match="is an encoder-decoder measured on its built-in"):
        held_out_set(ModelPackage.open(bart), held)  # what `edge verify --held-out` meets too
