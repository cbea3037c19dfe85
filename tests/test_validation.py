"""Validation judges every output at its own scale (numpy's allclose rule) and by what it means (top-k
agreement, cosine, box IoU), so a tiny model with trained-model-sized logits passes at the defaults while
exports with real bugs (an attention scale off by 1%, a layer norm epsilon ten times too large, a missing
position offset) fail."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import converters.hf as hf
from converters import ConvertOptions, convert
from tests.seq2seq_models import large_logit_bart
from toolkit import Seq2SeqGenerator
from toolkit.agreement import COSINE, TOP1, TOP5, Tolerance, allclose_check, top_k_rules
from toolkit.cli import edge
from toolkit.manifest import ModelPackage
from toolkit.tasks.detect import BOX_IOU


@pytest.fixture(scope="module")
def bart_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return large_logit_bart(tmp_path_factory.mktemp("bart") / "hf")


def test_allclose_scales_with_the_reference() -> None:
    reference = np.array([20.0, -40.0, 0.01])
    near = reference + np.array([5e-3, -2e-2, 5e-5])  # a thousandth of each value, and 5e-5 near zero
    check = allclose_check(near, reference, Tolerance())
    assert check.passed
    assert check.rule == "allclose"
    assert check.ratio == pytest.approx(2e-2 / (1e-4 + 40e-3))
    off = near.copy()
    off[2] += 2e-4  # near zero only atol allows: 2.5e-4 > 1e-4 + 1e-5
    assert not allclose_check(off, reference, Tolerance()).passed
    assert not allclose_check(near, reference, Tolerance(rtol=0.0)).passed  # one absolute tolerance fails
    assert allclose_check(near[:2], reference, Tolerance()).ratio == float("inf")  # a shape mismatch


def test_meaning_rules_catch_changed_meaning_and_forgive_near_ties() -> None:
    logits = np.array([[3.0, 1.0, 2.0, 0.0, -1.0, -2.0], [5.0, 5.0 - 1e-5, 0.0, 0.0, 0.0, 0.0]])
    swapped = logits.copy()
    swapped[1, [0, 1]] = swapped[1, [1, 0]]  # a near-tie flips: still the same meaning
    assert TOP1.check(swapped, logits, Tolerance()).passed
    flipped = logits.copy()
    flipped[0, [0, 2]] = flipped[0, [2, 0]]  # a clear winner changes
    assert TOP1.check(flipped, logits, Tolerance()).ratio > 1
    assert TOP5.check(flipped, logits, Tolerance()).passed  # the same five, in another order
    per_pixel = np.moveaxis(logits[None, None], -1, 1)  # [1, classes, 1, 2]: classes on axis 1
    assert (
        top_k_rules(axis=1)[0].check(np.moveaxis(flipped[None, None], -1, 1), per_pixel, Tolerance()).ratio
        > 1
    )
    embeds = np.random.default_rng(0).standard_normal((3, 16))
    assert COSINE.check(embeds * (1 + 1e-6), embeds, Tolerance()).passed
    turned = embeds.copy()
    turned[1, :2] = turned[1, 1::-1]
    assert not COSINE.check(turned, embeds, Tolerance()).passed
    boxes = np.array([[[0.5, 0.5, 0.2, 0.4], [0.3, 0.3, 0.1, 0.1]]])
    assert BOX_IOU.check(boxes + 1e-6, boxes, Tolerance()).passed
    moved = boxes.copy()
    moved[0, 1, 0] += 0.01  # a tenth of the box's width
    assert BOX_IOU.check(moved, boxes, Tolerance()).value < 0.99


def test_a_tiny_bart_with_large_logits_converts_at_the_defaults(bart_source: Path, tmp_path: Path) -> None:
    import transformers as tf

    model = tf.BartForConditionalGeneration.from_pretrained(bart_source).eval()
    with torch.inference_mode():
        logits = model(
            input_ids=torch.arange(5, 15)[None], decoder_input_ids=torch.tensor([[1, 5, 6]])
        ).logits
    assert float(logits.min()) < -10, "the model must have a trained model's logit scale"
    assert float(logits.max()) > 15
    result = CliRunner().invoke(edge, ["convert", str(bart_source), "-o", str(tmp_path / "pkg")])
    assert result.exit_code == 0, result.output
    assert "decided by" in result.output
    assert "allclose" in result.output
    record = json.loads((tmp_path / "pkg" / "edge.json").read_text())["variants"]["fp32"]["validation"]
    assert (record["metric"], record["atol"], record["rtol"], record["passed"]) == (
        "allclose",
        1e-4,
        1e-3,
        True,
    )
    steps = next(o for o in record["outputs"] if o["name"].startswith("log_probs"))
    assert {r["rule"] for r in steps["rules"]} == {"allclose", "top1_agreement", "top5_agreement"}
    assert steps["max_abs_diff"] > 0
    assert steps["decided_by"] in {r["rule"] for r in steps["rules"]}
    # and the package decodes as transformers does, token for token
    tokenizer = tf.AutoTokenizer.from_pretrained(bart_source)
    generator = Seq2SeqGenerator.load(tmp_path / "pkg", providers="cpu")
    for text in ("The quick brown fox jumps over the lazy dog.", "Edge inference keeps latency low."):
        encoded = tokenizer([text], return_tensors="pt", return_token_type_ids=False)
        with torch.inference_mode():
            want = model.generate(**encoded, num_beams=1, do_sample=False, max_new_tokens=12)[0].tolist()[1:]
        got = list(generator.generate([text], max_new_tokens=12)[0].token_ids)
        assert got == [t for t in want if t != model.generation_config.pad_token_id], text
        assert len(got) > 1
    # the raw worst difference stays recorded; a zero tolerance fails it and says which rule did (the old rule,
    # --rtol 0 at atol 1e-4, fails it too here on float rounding alone, by about 20%: too near to assert)
    strict = CliRunner().invoke(
        edge, ["convert", str(bart_source), "-o", str(tmp_path / "strict"), "--atol", "0", "--rtol", "0"]
    )
    assert strict.exit_code == 1, strict.output
    assert "fails allclose" in strict.output
    assert "--atol/--rtol" in strict.output


def _scale_attention(model: Any) -> Iterator[tuple[Any, str, Any]]:
    for module in model.modules():
        if hasattr(module, "scaling") and hasattr(module, "q_proj"):
            yield module, "scaling", module.scaling * 1.01


def _layer_norm_epsilon(model: Any) -> Iterator[tuple[Any, str, Any]]:
    for module in model.modules():
        if isinstance(module, torch.nn.LayerNorm):
            yield module, "eps", module.eps * 10


def _drop_position_offset(model: Any) -> Iterator[tuple[Any, str, Any]]:
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding) and getattr(module, "offset", 0):
            yield module, "offset", 0


BUGS: dict[str, Callable[[Any], Iterator[tuple[Any, str, Any]]]] = {
    "attention scale off by 1%": _scale_attention,
    "layer norm epsilon 1e-4 for 1e-5": _layer_norm_epsilon,
    "position offset missing": _drop_position_offset,
}


@contextlib.contextmanager
def _exported_with(
    bug: Callable[[Any], Iterator[tuple[Any, str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """The export sees the model with `bug`; validation's PyTorch reference sees the model as it is."""
    export = hf.export_hf_model

    def buggy_export(model: Any, *args: Any, **kwargs: Any) -> Path:
        changes = list(bug(model))
        assert changes, "the bug must change something"
        saved = [(module, name, getattr(module, name)) for module, name, _ in changes]
        for module, name, value in changes:
            setattr(module, name, value)
        try:
            return export(model, *args, **kwargs)
        finally:
            for module, name, value in saved:
                setattr(module, name, value)

    monkeypatch.setattr(hf, "export_hf_model", buggy_export)
    yield


@pytest.mark.parametrize("bug", list(BUGS))
def test_exports_with_real_bugs_fail_validation_at_the_defaults(
    bug: str, bart_source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _exported_with(BUGS[bug], monkeypatch):
        package = convert(str(bart_source), tmp_path / "pkg", ConvertOptions())
    validation = ModelPackage.open(package.path).manifest.variant("fp32").validation
    assert validation is not None
    assert not validation.passed, validation
    failed = [check for check in validation.outputs if not check.passed]
    assert failed
    assert all(check.decided_by == "allclose" for check in failed)
    assert validation.value > 1
