"""edge quantize / converters.quantize: real onnxruntime sessions on tiny models (and the real MiniLM, marked slow)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from converters.accuracy import held_out_feeds
from converters.quantization import CalibrationOptions, QuantizeOptions, quantize
from converters.quantization.auto import LATENCY_TIE, _pick
from converters.quantization.methods import Candidate
from toolkit.cli import edge
from toolkit.corpus import CALIBRATION_SENTENCES, HELD_OUT_SENTENCES
from toolkit.errors import BadInputError
from toolkit.manifest import ModelPackage
from toolkit.runner import Runner
from toolkit.tasks.accuracy import budget_floor


@pytest.fixture
def bert(tiny_bert_package: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_bert_package, tmp_path / "bert"))


@pytest.fixture
def classifier(tiny_classifier_package: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_classifier_package, tmp_path / "classifier"))


@pytest.fixture
def vit(tiny_vit_package: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_vit_package, tmp_path / "vit"))


def _ops(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def _leftovers(package: Path) -> list[str]:
    return sorted(p.name for p in package.iterdir() if p.name.startswith("."))


def _invoke(*args: str) -> object:
    return CliRunner().invoke(edge, list(args))


def test_corpora_are_disjoint_and_held_out_is_big_enough() -> None:
    assert len(HELD_OUT_SENTENCES) >= 64
    assert not set(HELD_OUT_SENTENCES) & set(CALIBRATION_SENTENCES)
    lengths = [len(s.split()) for s in HELD_OUT_SENTENCES]
    assert min(lengths) == 1
    assert max(lengths) > 30
    assert budget_floor(0.99) == pytest.approx(0.98)


def test_dynamic_int8_defaults_to_per_channel_and_records_everything(bert: Path) -> None:
    result = quantize(bert, "dynamic-int8")
    variant = ModelPackage.open(bert).manifest.variant("int8")
    assert variant == result.variant
    assert variant.file == "model.int8.onnx"
    assert (bert / "model.int8.onnx").stat().st_size == variant.size_bytes
    assert variant.precision == "int8"
    assert variant.method == "dynamic-int8"
    assert variant.settings["per_channel"] is True
    assert variant.settings["weight_symmetric"] is True
    assert variant.tool_versions["onnx"]
    validation = variant.validation
    assert validation is not None
    assert validation.reference == "fp32"
    assert validation.threshold == 0.99
    assert validation.samples == len(HELD_OUT_SENTENCES)
    assert validation.metric == "max_abs_diff"
    assert validation.outputs
    assert result.accuracy is not None
    assert result.accuracy.score > 0.9
    assert "MatMulInteger" in _ops(bert / "model.int8.onnx") or "DynamicQuantizeMatMul" in _ops(
        bert / "model.int8.onnx"
    )
    assert set(result.latency.median_ms) == {"fp32", "int8"}
    assert result.size_ratio is not None
    assert result.size_ratio < 0.75  # tiny model: scales and graph overhead weigh more than on MiniLM
    assert _leftovers(bert) == []
    assert Runner(bert, variant="int8").providers == ("cpu",)


def test_per_tensor_and_exclude_by_op_type(bert: Path) -> None:
    result = quantize(
        bert, "dynamic-int8", QuantizeOptions(name="int8-pt", per_channel=False, exclude=("Gather",))
    )
    assert result.variant is not None
    assert result.variant.settings["per_channel"] is False
    assert result.variant.settings["excluded_nodes"]
    assert "Gather" in _ops(bert / "model.int8-pt.onnx")


def test_unknown_exclude_pattern_fails_cleanly_and_leaves_nothing(bert: Path) -> None:
    before = (bert / "edge.json").read_text()
    result = _invoke("quantize", str(bert), "--exclude", "no-such-node*")
    assert result.exit_code == 2
    assert result.output.count("\n") == 1
    assert "matches no node" in result.output
    assert not (bert / "model.int8.onnx").exists()
    assert (bert / "edge.json").read_text() == before
    assert _leftovers(bert) == []


def test_static_int8_qdq_on_image_model_reports_top1_agreement(vit: Path, tmp_path: Path) -> None:
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(5)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, size=(40, 48, 3), dtype=np.uint8)).save(images / f"{i}.png")
    result = _invoke(
        "quantize", str(vit), "--method", "static-int8", "--calibration-data", str(images), "--budget", "0.5"
    )
    assert result.exit_code == 0, result.output
    assert "top-1 agreement" in result.output
    variant = ModelPackage.open(vit).manifest.variant("int8-static")
    assert variant.settings["format"] == "QDQ"
    assert variant.settings["samples"] == 6
    assert "QuantizeLinear" in _ops(vit / "model.int8-static.onnx")
    validation = variant.validation
    assert validation is not None
    assert validation.metric == "top1_agreement"
    assert validation.samples == 64
    assert 0.5 <= validation.value <= 1.0
    runner = Runner(vit, variant="int8-static")
    assert runner.providers == ("cpu",)
    logits = runner.run(held_out_feeds(ModelPackage.open(vit), 1)[0])["logits"]
    assert logits.shape == (1, 5)
    assert np.isfinite(logits).all()


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_static_int8_histogram_calibration_on_text(bert: Path, tmp_path: Path, method: str) -> None:
    text = tmp_path / "calib.txt"
    text.write_text(
        "\n".join(["a short one", "", "the quick brown fox jumps over the lazy dog"] * 3), encoding="utf-8"
    )
    options = QuantizeOptions(calibration=CalibrationOptions(method=method, data=text, samples=4))
    result = quantize(bert, "static-int8", options)
    assert result.variant is not None
    assert result.variant.settings["calibration_method"] == method
    assert result.variant.settings["samples"] == 4


def test_static_int8_npz_calibration(bert: Path, tmp_path: Path) -> None:
    feeds = held_out_feeds(ModelPackage.open(bert), 1)[0]
    np.savez(tmp_path / "calib.npz", **{k: np.repeat(v, 3, axis=0) for k, v in feeds.items()})
    result = quantize(
        bert, "static-int8", QuantizeOptions(calibration=CalibrationOptions(data=tmp_path / "calib.npz"))
    )
    assert result.variant is not None
    assert result.variant.settings["samples"] == 3


def test_calibration_images_are_preprocessed_as_the_classifier_does(vit: Path, tmp_path: Path) -> None:
    from PIL import Image

    from converters.quantization.calibration import load_calibration
    from toolkit import load
    from toolkit.pipelines import ImageClassifier

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(11)
    for i, (height, width) in enumerate([(40, 64), (90, 30), (32, 32)]):
        Image.fromarray(rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)).save(
            images / f"{i}.png"
        )
    package = ModelPackage.open(vit)
    feeds = load_calibration(package, CalibrationOptions(data=images)).feeds
    (name,) = {spec.name for spec in package.manifest.inputs}
    classifier = load(vit)
    assert isinstance(classifier, ImageClassifier)
    expected = classifier.preprocess(sorted(images.iterdir()))
    np.testing.assert_array_equal(np.concatenate([f[name] for f in feeds]), expected)


def test_undecodable_calibration_image_is_a_one_line_error(vit: Path, tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    (images / "broken.jpg").write_bytes(b"not a jpeg")
    result = _invoke("quantize", str(vit), "--method", "static-int8", "--calibration-data", str(images))
    assert result.exit_code == 2
    assert result.output.startswith(f"error: image '{images / 'broken.jpg'}' could not be decoded")
    assert result.output.count("\n") == 1
    assert not (vit / "model.int8-static.onnx").exists()


def test_empty_calibration_folder_is_a_one_line_error(vit: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = _invoke("quantize", str(vit), "--method", "static-int8", "--calibration-data", str(empty))
    assert result.exit_code == 2
    assert result.output.startswith("error: calibration folder")
    assert result.output.count("\n") == 1
    assert not (vit / "model.int8-static.onnx").exists()
    assert _leftovers(vit) == []


def test_fp16_keeps_fp32_io_and_says_it_is_a_gpu_format(classifier: Path) -> None:
    result = _invoke("quantize", str(classifier), "--method", "fp16")
    assert result.exit_code == 0, result.output
    assert "GPU format" in result.output
    model = onnx.load(str(classifier / "model.fp16.onnx"))
    assert all(i.type.tensor_type.elem_type != onnx.TensorProto.FLOAT16 for i in model.graph.input)
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    validation = ModelPackage.open(classifier).manifest.variant("fp16").validation
    assert validation is not None
    assert validation.metric == "top1_agreement"
    assert validation.value == 1.0
    assert "max_logit_diff" in " ".join(validation.cases)


def test_int4_uses_matmulnbits(bert: Path) -> None:
    result = quantize(bert, "int4", QuantizeOptions(block_size=32))
    assert result.variant is not None
    assert result.variant.precision == "int4"
    assert result.variant.settings["block_size"] == 32
    assert result.variant.settings["quantized_matmuls"] > 0
    assert "MatMulNBits" in _ops(bert / "model.int4.onnx")
    with pytest.raises(BadInputError, match="power of two"):
        quantize(bert, "int4", QuantizeOptions(block_size=24))


def test_auto_picks_portable_then_smallest_of_the_near_fastest_within_budget(classifier: Path) -> None:
    result = _invoke("quantize", str(classifier), "--method", "auto", "--budget", "0.9", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert len(data["candidates"]) >= 3
    variant = ModelPackage.open(classifier).manifest.variant("auto")
    rows = variant.settings["candidates"]
    assert {r["name"] for r in rows} >= {"int8 per-tensor", "int8 per-channel", "int8 static QDQ"}
    fitting = [r for r in rows if r["meets_budget"]]
    fastest = min(r["latency_ms"] for r in fitting)
    tied = [r for r in fitting if r["latency_ms"] <= fastest * (1 + LATENCY_TIE)]
    picked = next(r for r in rows if r["name"] == variant.settings["picked"])
    assert picked in tied
    # A portable candidate wins a tie, then the smallest.
    preferred = [r for r in tied if r["portable"]] or tied
    assert picked["size_bytes"] == min(r["size_bytes"] for r in preferred)
    assert picked["portable"] == any(r["portable"] for r in tied)
    assert variant.validation is not None
    assert variant.validation.passed
    assert variant.validation.value >= 0.9
    assert (classifier / "model.auto.onnx").stat().st_size == variant.size_bytes
    assert _leftovers(classifier) == []


def test_auto_says_plainly_when_nothing_meets_the_budget(bert: Path) -> None:
    result = _invoke("quantize", str(bert), "--method", "auto", "--budget", "1")
    assert result.exit_code == 1
    assert "no candidate meets the budget 1" in result.output
    assert "nothing was written" in result.output
    assert "auto candidates" in result.output
    assert not (bert / "model.auto.onnx").exists()
    assert "auto" not in ModelPackage.open(bert).manifest.variants


def test_auto_keeps_no_candidate_over_max_size(bert: Path) -> None:
    result = _invoke("quantize", str(bert), "--method", "auto", "--budget", "0.5", "--max-size", "0.01")
    assert result.exit_code == 1
    assert "no candidate meets the budget 0.5 within --max-size 0.01" in result.output
    assert "raise --max-size" in result.output
    assert "too big" in result.output
    assert not (bert / "model.auto.onnx").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "dynamic-int8", "--max-size", "0.3"], "--max-size applies to --method auto only"),
        (["--method", "auto", "--max-size", "1.5"], "--max-size must be a fraction of the fp32 file size"),
    ],
)
def test_bad_max_size_is_exit_2(bert: Path, args: list[str], message: str) -> None:
    result = _invoke("quantize", str(bert), *args)
    assert result.exit_code == 2
    assert result.output.startswith(f"error: {message}")
    assert result.output.count("\n") == 1


@pytest.mark.parametrize("budget", ["0", "1.5", "-0.2"])
def test_budget_outside_unit_interval_is_exit_2(bert: Path, budget: str) -> None:
    result = _invoke("quantize", str(bert), "--method", "auto", "--budget", budget)
    assert result.exit_code == 2
    assert result.output.startswith("error: --budget must be in (0, 1]")
    assert result.output.count("\n") == 1


def test_corrupt_model_is_exit_2(bert: Path) -> None:
    (bert / "model.onnx").write_bytes(b"\x08\x07garbage that is not a protobuf" * 10)
    result = _invoke("quantize", str(bert))
    assert result.exit_code == 2
    assert "not a readable ONNX model" in result.output
    assert result.output.count("\n") == 1
    assert not (bert / "model.int8.onnx").exists()
    assert _leftovers(bert) == []


def test_package_without_fp32_model_is_exit_2(bert: Path) -> None:
    (bert / "model.onnx").unlink()
    result = _invoke("quantize", str(bert))
    assert result.exit_code == 2
    assert "model.onnx is missing" in result.output
    assert result.output.count("\n") == 1


def test_already_quantized_model_is_exit_2(bert: Path) -> None:
    quantize(bert, "dynamic-int8")
    shutil.copy(bert / "model.int8.onnx", bert / "model.onnx")
    result = _invoke("quantize", str(bert), "--name", "again")
    assert result.exit_code == 2
    assert "already quantized" in result.output


@pytest.mark.slow
def test_minilm_auto_keeps_only_what_meets_the_budget_on_this_host(
    minilm_package: Path, tmp_path: Path
) -> None:
    """The contract on any CPU: a kept variant meets budget and size cap here and records this host; when no
    candidate does (int8 accuracy differs between CPUs), nothing is written. The figures are the benchmark's."""
    package = Path(shutil.copytree(minilm_package, tmp_path / "minilm"))
    result = quantize(package, "auto", QuantizeOptions(budget=0.99, max_size=0.30))
    fp32_size = package.joinpath("model.onnx").stat().st_size
    assert result.candidates
    assert all(c.size_bytes <= 0.30 * fp32_size for c in result.candidates if c.meets_budget)
    assert all(
        c.accuracy is not None and c.accuracy.samples >= 64 for c in result.candidates if c.meets_budget
    )
    if result.variant is None:
        assert not any(c.meets_budget for c in result.candidates)
        assert not (package / "model.auto.onnx").exists()
        assert "auto" not in ModelPackage.open(package).manifest.variants
        return
    assert result.accuracy is not None
    assert result.accuracy.score >= 0.99
    assert result.accuracy.worst >= 0.98
    assert result.size_ratio is not None
    assert result.size_ratio <= 0.30
    assert result.latency is not None
    assert set(result.latency.median_ms) == {"fp32", "auto"}
    validation = ModelPackage.open(package).manifest.variant("auto").validation
    assert validation is not None
    assert validation.passed
    assert validation.host == result.host


def test_auto_prefers_the_smallest_of_equally_fast_candidates() -> None:
    def candidate(name: str, latency_ms: float, size_bytes: int) -> Candidate:
        return Candidate(name, "dynamic-int8", {}, None, latency_ms, None, size_bytes, True)

    fastest_big = candidate("4 layers fp32", 10.0, 30_000_000)
    tied_small = candidate("4 layers 8-bit blockwise", 10.0 * (1 + LATENCY_TIE / 2), 23_000_000)
    slow_smaller = candidate("per-tensor", 10.0 * (1 + LATENCY_TIE * 2), 20_000_000)
    assert _pick([fastest_big, tied_small, slow_smaller]) is tied_small
    assert _pick([fastest_big, slow_smaller]) is fastest_big
    tied_portable = replace(tied_small, name="reduced-range", size_bytes=24_000_000, portable=True)
    assert _pick([fastest_big, tied_small, tied_portable, slow_smaller]) is tied_portable
    slow_portable = replace(slow_smaller, name="slow reduced-range", portable=True)
    assert _pick([fastest_big, tied_small, slow_portable]) is tied_small
