"""`edge convert` on plain PyTorch sources: module factories, .py files, .pt2 programs, weights, exporter fallback.

Every model is tiny and converted once per module; each package must validate against PyTorch and then run in
onnxruntime at batch 1 and 3 with outputs close to the module's.
"""

from __future__ import annotations

import json
import runpy
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from converters import ConvertOptions, convert
from converters.input_specs import InputSpec, parse_input_specs
from toolkit import ModelPackage, Runner
from toolkit.cli import edge
from toolkit.errors import BadInputError, ExportError
from toolkit.inputs import InputLimits, random_feeds, tensor_shape
from toolkit.manifest import Manifest, TensorSpec, Validation

HERE = __name__  # this module is importable under this name, so "HERE:factory" is a pkg.module:factory source


# --- models -------------------------------------------------------------------------------------------

CNN_SOURCE = """
import torch
from torch import nn


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Linear(16, 5)

    def forward(self, pixel_values):
        return self.classifier(self.features(pixel_values).flatten(1))


def small_cnn():
    torch.manual_seed(0)
    model = SmallCNN()
    with torch.no_grad():  # non-trivial batch-norm statistics, so folding them is exercised
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return model.eval()
"""


class GRUTagger(nn.Module):
    """Token ids -> per-token tags and the last hidden state; a batch_first GRU over a dynamic sequence."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 8)
        self.gru = nn.GRU(8, 12, batch_first=True)
        self.tags = nn.Linear(12, 4)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        states, last = self.gru(self.embed(tokens))
        return self.tags(states), last


class TwoInputs(nn.Module):
    """An image and a feature vector in, a nested dict out; `temperature` is a keyword argument left at its default."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.project = nn.Linear(6, 4)
        self.head = nn.Linear(8, 3)

    def forward(
        self, image: torch.Tensor, extra: torch.Tensor, temperature: float = 2.0
    ) -> dict[str, object]:
        pooled = torch.relu(self.conv(image)).mean(dim=(2, 3))
        projected = self.project(extra)
        logits = self.head(torch.cat([pooled, projected], dim=1)) / temperature
        return {"logits": logits, "aux": {"score": logits.sigmoid().sum(dim=1)}, "parts": (pooled, projected)}


class TokenConv(nn.Module):
    """Token ids and an attention mask over a dynamic sequence: a 1-D convolution and masked mean pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(100, 16)
        self.conv = nn.Conv1d(16, 16, 3, padding=1)
        self.head = nn.Linear(16, 4)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        tokens = torch.relu(self.conv(self.embed(input_ids).transpose(1, 2))).transpose(1, 2)
        mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
        pooled = (tokens * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        return {"tokens": tokens, "pooled": self.head(pooled)}


class TinyMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(8, 16)
        self.out = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.hidden(x)))


class Whitening(nn.Module):
    """Singular values: aten::linalg_svd has no ONNX conversion in either exporter of torch 2.13."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.svd(x)[1]


class SpectralNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mix = nn.Linear(4, 4)
        self.spectrum = Whitening()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spectrum(self.mix(x))


def _seeded(cls: type[nn.Module], seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return cls().eval()


def gru_tagger() -> nn.Module:
    return _seeded(GRUTagger, 1)


def two_inputs() -> nn.Module:
    return _seeded(TwoInputs, 2)


def token_conv() -> nn.Module:
    return _seeded(TokenConv, 3)


def tiny_mlp() -> nn.Module:
    return _seeded(TinyMLP, 4)


def spectral_net() -> nn.Module:
    return _seeded(SpectralNet, 5)


# --- helpers ------------------------------------------------------------------------------------------


def _torch_outputs(model: nn.Module, feeds: dict[str, np.ndarray]) -> Any:
    with torch.inference_mode():
        return model(**{k: torch.from_numpy(v) for k, v in feeds.items()})


def _fp32_validation(manifest: Manifest) -> Validation:
    validation = manifest.variant("fp32").validation
    assert validation is not None, "the fp32 variant was not validated"
    return validation


def _validated(package: Path) -> ModelPackage:
    opened = ModelPackage.open(package)
    validation = opened.manifest.variant("fp32").validation
    assert validation is not None
    assert validation.passed, validation
    assert max(check.max_abs_diff for check in validation.outputs) <= 1e-4
    assert not list(package.parent.glob(".*staging*")), "staging directory left behind"
    return opened


def _close(got: np.ndarray, want: torch.Tensor) -> None:
    assert got.shape == tuple(want.shape)
    assert np.abs(got - want.numpy()).max() < 1e-4


def _fails_cleanly(args: list[str], *expected: str) -> str:
    result = CliRunner().invoke(edge, args)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.output
    assert "Traceback" not in result.output
    for text in expected:
        assert text in errors[0], errors[0]
    return errors[0]


# --- packages, converted once -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("torch-packages")


@pytest.fixture(scope="module")
def cnn_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sources") / "vision.py"
    path.write_text(textwrap.dedent(CNN_SOURCE), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def cnn_package(cnn_file: Path, packages: Path) -> Path:
    options = ConvertOptions(inputs=(InputSpec.parse("pixel_values:float32[batch,3,32,32]"),))
    return convert(f"{cnn_file}:small_cnn", packages / "cnn", options).path


@pytest.fixture(scope="module")
def gru_package(packages: Path) -> Path:
    return convert(
        f"{HERE}:gru_tagger", packages / "gru", ConvertOptions(inputs=("tokens:int64[batch,seq]:0..49",))
    ).path


@pytest.fixture(scope="module")
def two_input_package(packages: Path) -> Path:
    # declared in the other order than forward's: inputs are matched by name
    specs = ("extra:float32[batch,6]", "image:float32[batch,3,16,16]")
    return convert(f"{HERE}:two_inputs", packages / "two", ConvertOptions(inputs=specs)).path


@pytest.fixture(scope="module")
def seq_package(packages: Path) -> Path:
    specs = ("input_ids:int64[batch,seq]:0..99", "attention_mask:int64[batch,seq]:0..1")
    return convert(f"{HERE}:token_conv", packages / "seq", ConvertOptions(inputs=specs)).path


# --- the four required models -------------------------------------------------------------------------


def test_cnn_from_a_python_file_validates_and_runs(cnn_package: Path, cnn_file: Path) -> None:
    manifest = _validated(cnn_package).manifest
    assert manifest.name == "small_cnn"
    assert manifest.source.kind == "file"
    assert len(manifest.source.sha256) == 64
    assert manifest.task == "features"
    assert [(t.name, t.dtype, t.shape) for t in manifest.inputs] == [
        ("pixel_values", "float32", ("batch", 3, 32, 32))
    ]
    assert [(t.name, t.shape) for t in manifest.outputs] == [("output", ("batch", 5))]
    assert manifest.exporter["mode"] == "dynamo"
    assert "first_error" not in manifest.exporter
    assert manifest.variant("fp32").settings["exporter"] == "torch.onnx (dynamo)"
    model = runpy.run_path(str(cnn_file))["small_cnn"]()
    runner = Runner(cnn_package)
    for batch in (1, 3):
        pixels = np.random.default_rng(batch).standard_normal((batch, 3, 32, 32)).astype(np.float32)
        _close(
            runner.run({"pixel_values": pixels})["output"], _torch_outputs(model, {"pixel_values": pixels})
        )


def test_gru_falls_back_to_torchscript_and_keeps_the_sequence_dynamic(gru_package: Path) -> None:
    manifest = _validated(gru_package).manifest
    # torch.export specialises a GRU's sequence length; the TorchScript tracer keeps it dynamic
    assert manifest.exporter["mode"] == "torchscript"
    first_error = manifest.variant("fp32").settings["first_exporter_error"]
    assert first_error == manifest.exporter["first_error"]
    assert "dynamo" in first_error
    assert "'seq'" in first_error
    assert "tokens" in first_error
    assert manifest.inputs[0].value_range == (0, 49)
    assert manifest.inputs[0].shape == ("batch", "seq")
    assert [o.name for o in manifest.outputs] == ["output_0", "output_1"]
    cases = _fp32_validation(manifest).cases
    assert any("seq 8" in c for c in cases)
    assert any("seq 16" in c for c in cases)
    model = gru_tagger()
    runner = Runner(gru_package)
    for batch, seq in ((1, 5), (3, 9)):
        tokens = np.random.default_rng(seq).integers(0, 50, size=(batch, seq)).astype(np.int64)
        got = runner.run({"tokens": tokens})
        states, last = _torch_outputs(model, {"tokens": tokens})
        _close(got["output_0"], states)
        _close(got["output_1"], last)


def test_two_inputs_and_a_nested_dict_output(two_input_package: Path) -> None:
    manifest = _validated(two_input_package).manifest
    assert manifest.exporter["mode"] == "dynamo"
    assert {t.name for t in manifest.inputs} == {"image", "extra"}
    assert [o.name for o in manifest.outputs] == ["logits", "aux.score", "parts_0", "parts_1"]
    model = two_inputs()
    runner = Runner(two_input_package)
    for batch in (1, 3):
        rng = np.random.default_rng(batch)
        feeds = {
            "image": rng.standard_normal((batch, 3, 16, 16)).astype(np.float32),
            "extra": rng.standard_normal((batch, 6)).astype(np.float32),
        }
        got = runner.run(feeds)
        want = _torch_outputs(model, feeds)
        assert isinstance(want, dict)
        _close(got["logits"], want["logits"])
        _close(got["aux.score"], want["aux"]["score"])
        _close(got["parts_0"], want["parts"][0])
        _close(got["parts_1"], want["parts"][1])


def test_dynamic_sequence_axis(seq_package: Path) -> None:
    manifest = _validated(seq_package).manifest
    assert manifest.exporter["mode"] == "dynamo"
    assert [(t.name, t.shape, t.value_range) for t in manifest.inputs] == [
        ("input_ids", ("batch", "seq"), (0, 99)),
        ("attention_mask", ("batch", "seq"), (0, 1)),
    ]
    outputs = {o.name: o.shape for o in manifest.outputs}
    assert outputs == {"tokens": ("batch", "seq", 16), "pooled": ("batch", 4)}
    cases = _fp32_validation(manifest).cases
    assert {c.split(",")[1].strip() for c in cases} >= {"seq 8", "seq 16"}
    assert any("padded" in c and "unpadded" not in c for c in cases)
    model = token_conv()
    runner = Runner(seq_package)
    for batch, seq in ((1, 5), (3, 23)):
        rng = np.random.default_rng(seq)
        mask = np.ones((batch, seq), dtype=np.int64)
        mask[-1, seq // 2 :] = 0
        feeds = {
            "input_ids": rng.integers(0, 100, size=(batch, seq)).astype(np.int64),
            "attention_mask": mask,
        }
        got = runner.run(feeds)
        want = _torch_outputs(model, feeds)
        assert isinstance(want, dict)
        _close(got["tokens"], want["tokens"])
        _close(got["pooled"], want["pooled"])


def test_shipped_keyword_spotter_module(packages: Path) -> None:
    out = packages / "kws"
    result = CliRunner().invoke(
        edge,
        [
            "convert",
            "converters.model_recipes.modules:kws_cnn",
            "--input",
            "features:float32[batch,1,40,101]",
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    manifest = _validated(out).manifest
    assert manifest.name == "kws_cnn"
    assert manifest.outputs[0].shape == ("batch", 12)
    features = np.random.default_rng(0).standard_normal((3, 1, 40, 101)).astype(np.float32)
    from converters.model_recipes.modules import kws_cnn

    _close(
        Runner(out).run({"features": features})["output"], _torch_outputs(kws_cnn(), {"features": features})
    )


# --- other sources ------------------------------------------------------------------------------------


def test_pt2_program_needs_no_input_spec(tmp_path: Path) -> None:
    model = tiny_mlp()
    program = torch.export.export(
        model, (torch.randn(4, 8),), dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, strict=False
    )
    torch.export.save(program, tmp_path / "mlp.pt2")
    package = convert(str(tmp_path / "mlp.pt2"), tmp_path / "out")
    manifest = _validated(package.path).manifest
    assert manifest.source.kind == "pt2"
    assert manifest.name == "mlp"
    assert [(t.name, t.dtype, t.shape) for t in manifest.inputs] == [("x", "float32", ("batch", 8))]
    traced = convert(str(tmp_path / "mlp.pt2"), tmp_path / "traced", ConvertOptions(exporter="torchscript"))
    assert _validated(traced.path).manifest.exporter["mode"] == "torchscript"
    for path in (package.path, traced.path):
        runner = Runner(path)
        for batch in (1, 3):
            x = np.random.default_rng(batch).standard_normal((batch, 8)).astype(np.float32)
            _close(runner.run({"x": x})["output"], _torch_outputs(model, {"x": x}))


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_weights_are_loaded_into_the_module(tmp_path: Path, suffix: str) -> None:
    trained = _seeded(TinyMLP, 99)
    weights = tmp_path / f"trained{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(trained.state_dict(), str(weights))
    else:
        torch.save(trained.state_dict(), weights)
    out = tmp_path / "out"
    package = convert(
        f"{HERE}:tiny_mlp",
        out,
        ConvertOptions(inputs=("x:float32[batch,8]",), weights=weights, exporter="torchscript"),
    )
    manifest = _validated(package.path).manifest
    assert manifest.variant("fp32").settings["weights"] == weights.name
    x = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    got = Runner(out).run({"x": x})["output"]
    _close(got, _torch_outputs(trained, {"x": x}))
    random_init = _torch_outputs(tiny_mlp(), {"x": x})
    assert np.abs(got - random_init.numpy()).max() > 1e-2, "the weights did not change the outputs"


def test_mismatched_weights_name_the_keys(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"hidden.weight": torch.zeros(16, 8)}, str(tmp_path / "partial.safetensors"))
    with pytest.raises(BadInputError, match=r"missing 3 \(hidden\.bias, out\.weight, out\.bias\)"):
        convert(
            f"{HERE}:tiny_mlp",
            tmp_path / "out",
            ConvertOptions(inputs=("x:float32[batch,8]",), weights=tmp_path / "partial.safetensors"),
        )
    assert not (tmp_path / "out").exists()


def test_pickled_module_needs_trust_remote_code(tmp_path: Path) -> None:
    model = tiny_mlp()
    torch.save(model, tmp_path / "whole.pt")
    out = tmp_path / "out"
    message = _fails_cleanly(
        ["convert", str(tmp_path / "whole.pt"), "--input", "x:float32[batch,8]", "-o", str(out)],
        "--trust-remote-code",
        "runs code",
    )
    assert "whole.pt" in message
    assert not out.exists()
    result = CliRunner().invoke(
        edge,
        [
            "convert",
            str(tmp_path / "whole.pt"),
            "--input",
            "x:float32[batch,8]",
            "--trust-remote-code",
            "--exporter",
            "torchscript",
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    x = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    _close(Runner(_validated(out).path).run({"x": x})["output"], _torch_outputs(model, {"x": x}))


def test_forced_torchscript_exporter(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(
        edge,
        [
            "convert",
            f"{HERE}:tiny_mlp",
            "--input",
            "x:float32[batch,8]",
            "--exporter",
            "torchscript",
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "torch.onnx (torchscript)" in result.output
    manifest = json.loads((out / "edge.json").read_text())
    assert manifest["exporter"] == {"name": "torch.onnx", "mode": "torchscript", "requested": "torchscript"}
    assert "first_exporter_error" not in manifest["variants"]["fp32"]["settings"]


# --- failures -----------------------------------------------------------------------------------------


def test_unsupported_operator_names_operator_and_module(tmp_path: Path) -> None:
    out = tmp_path / "out"
    message = _fails_cleanly(
        ["convert", f"{HERE}:spectral_net", "--input", "x:float32[batch,4,4]", "-o", str(out)],
        "SpectralNet",
        "aten::linalg_svd",
        "Whitening",
        "'spectrum'",
        "dynamo",
        "TorchScript",
    )
    assert len(message) < 400
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [], "staging files were left beside the output"
    with pytest.raises(ExportError, match="linalg_svd"):
        convert(
            f"{HERE}:spectral_net",
            out,
            ConvertOptions(inputs=("x:float32[batch,4,4]",), exporter="torchscript"),
        )


def test_forced_dynamo_on_a_gru_says_which_dim_it_specialised(tmp_path: Path) -> None:
    _fails_cleanly(
        [
            "convert",
            f"{HERE}:gru_tagger",
            "--input",
            "tokens:int64[batch,seq]:0..49",
            "--exporter",
            "dynamo",
            "-o",
            str(tmp_path / "out"),
        ],
        "GRUTagger",
        "'seq'",
        "--exporter torchscript",
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("pixel_values", "no ':'"),
        ("x:float32", "no [dims]"),
        ("x:float99[batch,3]", "unknown dtype 'float99'"),
        ("x:float32[batch,0]", "dim 0"),
        ("x:float32[batch,,3]", "empty dim"),
        ("x:float32[batch,3-d]", "dim '3-d'"),
        ("x:int64[batch,seq]:9..1", "empty"),
        ("x:int64[batch,seq]:0..lots", "LO..HI"),
        ("x:float32[batch,8]:0..1", "integer inputs only"),
        ("2x:float32[batch]", "Python identifier"),
    ],
)
def test_bad_input_specs_exit_2_with_one_line(tmp_path: Path, spec: str, problem: str) -> None:
    _fails_cleanly(
        ["convert", f"{HERE}:tiny_mlp", "--input", spec, "-o", str(tmp_path / "out")], problem, spec
    )


def test_input_spec_mistakes_against_the_module(tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    _fails_cleanly(["convert", f"{HERE}:tiny_mlp", "-o", out], "needs an --input")
    _fails_cleanly(
        ["convert", f"{HERE}:tiny_mlp", "--input", "pixels:float32[batch,8]", "-o", out],
        "'pixels' is not a parameter of TinyMLP.forward(x)",
    )
    _fails_cleanly(
        ["convert", f"{HERE}:tiny_mlp", "--input", "x:float32[batch,5]", "-o", out],
        "does not run on the declared inputs",
        "x float32 [2, 5]",
    )
    _fails_cleanly(
        ["convert", f"{HERE}:token_conv", "--input", "input_ids:int64[batch,seq]", "-o", out], "value range"
    )
    _fails_cleanly(
        ["convert", f"{HERE}:no_such_factory", "--input", "x:float32[8]", "-o", out], "no 'no_such_factory'"
    )
    _fails_cleanly(
        ["convert", "no_such_package.models:net", "--input", "x:float32[8]", "-o", out], "cannot import"
    )
    assert not (tmp_path / "out").exists()


def test_torch_options_are_refused_for_hugging_face_sources(tmp_path: Path) -> None:
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text("{}", encoding="utf-8")
    _fails_cleanly(
        ["convert", str(folder), "--input", "x:float32[batch,8]", "-o", str(tmp_path / "out")],
        "--input applies to PyTorch sources",
    )


# --- specs and synthetic inputs -----------------------------------------------------------------------


def test_input_spec_round_trip_and_tensor_spec() -> None:
    spec = InputSpec.parse(" input_ids : long [ batch , seq ] : 0..30521 ")
    assert spec == InputSpec("input_ids", "int64", ("batch", "seq"), (0, 30521))
    assert str(spec) == "input_ids:int64[batch,seq]:0..30521"
    assert InputSpec.parse(str(spec)) == spec
    assert spec.dynamic_dims == {0: "batch", 1: "seq"}
    assert spec.to_tensor_spec() == TensorSpec("input_ids", "int64", ("batch", "seq"), (0, 30521))
    assert InputSpec.parse("scale:float32[]").shape == ()
    with pytest.raises(BadInputError, match="given twice"):
        parse_input_specs(["x:float32[1]", "x:float32[2]"])


def test_synthetic_inputs_honour_value_ranges_and_dim_names() -> None:
    ids = TensorSpec("ids", "int64", ("batch", "seq"), (5, 9))
    time_major = TensorSpec("frames", "float32", ("seq", "batch", 8))
    free = TensorSpec("grid", "float32", ("batch", "height"))
    limits = InputLimits(dim_sizes={"height": 7})
    feeds = random_feeds([ids, time_major, free], batch=3, seq=11, limits=limits, rng=0)
    assert feeds["ids"].shape == (3, 11)
    assert feeds["ids"].min() >= 5
    assert feeds["ids"].max() <= 9
    assert set(np.unique(feeds["ids"])) == {5, 6, 7, 8, 9}
    assert feeds["frames"].shape == (11, 3, 8)
    assert feeds["grid"].shape == (3, 7)
    strict = InputLimits(default_dim=None, vocab_size=None)
    with pytest.raises(BadInputError, match="free dimension 'height'"):
        tensor_shape(free, 3, None, strict)
    with pytest.raises(BadInputError, match="vocabulary size"):
        random_feeds([TensorSpec("ids", "int64", ("batch", 4))], 1, None, strict)
