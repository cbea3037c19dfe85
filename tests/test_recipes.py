"""The `models/` catalogue: every recipe parses, `edge models` lists each on one line, and every recipe converts.

Hub recipes are exercised offline through their ``[offline]`` stand-in (the same architecture at toy size with
random weights, built by `build_offline_model`), converted with the recipe's settings (``--recipe``); the plain
``nn.Module`` recipe converts as itself. Recipes are read from the catalogue, so a new one is tested here
without editing this file.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import build_offline_model, print_decisions

from converters import ConvertOptions, convert
from converters.export_tasks import TASKS
from converters.hf import load_hf_model, run_reference
from converters.recipes import (
    SAMPLE_KINDS,
    Recipe,
    RecipePreprocessing,
    list_recipes,
    load_recipe,
    parse_recipe,
)
from converters.samples import SAMPLERS, sample_cases
from toolkit import ModelPackage, Runner
from toolkit.cli import edge
from toolkit.errors import BadModelError
from toolkit.inputs import InputLimits
from toolkit.manifest import AudioPreprocessing, ImagePreprocessing, TextPreprocessing
from toolkit.pipelines import TextTokenizer

RECIPES = {recipe.name: recipe for recipe in list_recipes()}
# Generators (task generate) convert and generate in tests/test_generate.py, encoder-decoders (transcribe,
# text2text) in tests/test_seq2seq.py: both need tokenizers with special tokens those tests build.
DECODING_TASKS = ("generate", "transcribe", "text2text")
OFFLINE = sorted(
    name
    for name, recipe in RECIPES.items()
    if recipe.offline is not None and recipe.task not in DECODING_TASKS
)
MODULES = sorted(name for name, recipe in RECIPES.items() if recipe.source.module is not None)

# What validation's first two cases are made of, per sample kind (the rest are spec-driven tensors).
SAMPLE_CASE_WORDS = {"text": "text", "image": "synthetic photo", "audio": "waveform"}


# --- the catalogue --------------------------------------------------------------------------------------


def test_catalogue_covers_the_models_people_deploy() -> None:
    assert len(RECIPES) >= 8
    tasks = [recipe.task for recipe in RECIPES.values()]
    for task in ("embed", "classify", "token-classify", "segment", "audio-features"):
        assert task in tasks, task
    assert tasks.count("image-classify") >= 2  # a CNN and a ViT
    assert MODULES, "no plain nn.Module recipe"
    assert RECIPES["minilm"].source.availability() == "installed"


def test_every_recipe_can_be_converted_offline() -> None:
    """A hub or package recipe without an [offline] stand-in would go untested here."""
    untested = [name for name, r in RECIPES.items() if r.offline is None and r.source.module is None]
    assert not untested


def test_every_sample_kind_has_a_generator() -> None:
    assert set(SAMPLERS) == set(SAMPLE_KINDS)
    assert {r.sample.kind for r in RECIPES.values()} <= set(SAMPLE_KINDS)


def test_edge_models_lists_every_recipe_on_one_line() -> None:
    result = CliRunner().invoke(edge, ["models"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) == len(RECIPES)
    for line, (name, recipe) in zip(lines, sorted(RECIPES.items()), strict=True):
        assert line.split()[:3] == [name, recipe.task, recipe.source.availability()]
        assert line.endswith(recipe.summary)
    availability = {line.split()[0]: line.split()[2] for line in lines}
    assert availability["minilm"] == "installed"
    assert availability["resnet50"] == "hub"
    assert availability["kws-cnn"] == "module"

    data = json.loads(CliRunner().invoke(edge, ["models", "--json"]).output)
    assert [entry["name"] for entry in data] == sorted(RECIPES)
    assert {entry["availability"] for entry in data} == {"installed", "hub", "module"}
    kws = next(entry for entry in data if entry["name"] == "kws-cnn")
    assert kws["inputs"][0] == {
        "name": "features",
        "dtype": "float32",
        "shape": ["batch", 1, 40, 101],
        "value_range": None,
    }


MINIMAL = 'name = "x"\nsummary = "s"\ntask = "classify"\n[source]\nhub = "org/x"\n'


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("name = ", "not valid TOML"),
        ('summary = "s"\ntask = "classify"\n[source]\nhub = "org/x"\n', "needs 'name'"),
        (MINIMAL.replace('name = "x"', 'name = "y"'), "differs from the file name 'x.toml'"),
        (MINIMAL.replace("classify", "classfy"), "task 'classfy' is not one of: embed,"),
        ("colour = 1\n" + MINIMAL, "unknown key 'colour' in the top level"),
        (MINIMAL.replace('hub = "org/x"', 'hubb = "org/x"'), "unknown key 'hubb' in [source]"),
        (
            MINIMAL.replace('hub = "org/x"', 'install = "pip"'),
            "[source] needs a package, a hub id or a module",
        ),
        (MINIMAL.replace('hub = "org/x"', 'module = "not a factory"'), "must look like pkg.module:factory"),
        (MINIMAL.replace('hub = "org/x"', 'module = "pkg.mod:make"'), "a [source] module needs 'inputs'"),
        (MINIMAL + '[sample]\nkind = ""\n', "'kind' in [sample] must be a non-empty string"),
        ('inputs = ["x:float33[batch]"]\n' + MINIMAL, "inputs: 'x:float33[batch]': unknown dtype 'float33'"),
        (MINIMAL + '[sample]\nkind = "video"\n', "'kind' in [sample] is 'video'; use one of: text, image"),
        (MINIMAL + "[validation]\natol = -1\n", "[validation] atol must be zero or positive"),
        (
            MINIMAL + "[preprocessing]\nsize = [1, 2, 3]\n",
            "'size' in [preprocessing] must be a positive integer",
        ),
        (MINIMAL + '[preprocessing]\nresize = "fit"\n', "'resize' in [preprocessing] is 'fit'"),
        (MINIMAL + '[offline]\nmodel = "BertModel"\n', "[offline] needs 'config'"),
        (
            MINIMAL + '[offline]\nmodel = "a.b"\nconfig = "C"\n',
            "'model' in [offline] must be a transformers class",
        ),
    ],
)
def test_malformed_recipes_are_one_line_errors(text: str, problem: str) -> None:
    with pytest.raises(BadModelError) as caught:
        parse_recipe("x", text)
    message = str(caught.value)
    assert message.startswith("recipe 'x' is malformed (")
    assert message.endswith("; fix models/x.toml")
    assert problem in message
    assert "\n" not in message


def test_preprocessing_overrides_apply_to_their_kind() -> None:
    recipe = parse_recipe(
        "x",
        MINIMAL
        + "[preprocessing]\nsize = 256\ncrop_size = [224, 200]\nmean = [0.5]\n"
        + 'resize = "shortest_edge"\nresample = "bicubic"\nmax_length = 32\n',
    )
    assert recipe.preprocessing == RecipePreprocessing(
        size=(256, 256),
        crop_size=(224, 200),
        mean=(0.5,),
        resize="shortest_edge",
        resample="bicubic",
        max_length=32,
    )
    image = ImagePreprocessing(size=(224, 224), crop_size=None, mean=(0.1, 0.2, 0.3), std=(1.0, 1.0, 1.0))
    assert recipe.preprocessing.apply(image) == ImagePreprocessing(
        size=(256, 256),
        crop_size=(224, 200),
        mean=(0.5,),
        std=(1.0, 1.0, 1.0),
        resize="shortest_edge",
        resample="bicubic",
    )
    text = TextPreprocessing(tokenizer="tokenizer.json", max_length=128)
    assert recipe.preprocessing.apply(text) == TextPreprocessing(tokenizer="tokenizer.json", max_length=32)
    assert recipe.preprocessing.apply(None) is None


# --- every recipe, converted ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def offline_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Recipe name -> its [offline] stand-in directory, built once on first use."""
    root = tmp_path_factory.mktemp("offline")
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            built[name] = build_offline_model(name, root / name)
        return built[name]

    return get


@pytest.fixture(scope="module", params=OFFLINE)
def converted(
    request: pytest.FixtureRequest,
    offline_dir: Callable[[str], Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Recipe, Path, Path]:
    """(recipe, offline stand-in directory, its package converted with ConvertOptions(recipe=name))."""
    name = request.param
    source = offline_dir(name)
    package = convert(str(source), tmp_path_factory.mktemp("pkg") / name, ConvertOptions(recipe=name)).path
    return RECIPES[name], source, package


def _first_cases(recipe: Recipe, package: ModelPackage) -> list[dict[str, np.ndarray]]:
    """Validation's batch-1 and batch-3 sample cases for the package, made by the recipe's generator."""
    pre = package.manifest.preprocessing
    tokenizer = (
        TextTokenizer(package.path / pre.tokenizer, pre.max_length)
        if isinstance(pre, TextPreprocessing)
        else None
    )
    cases = sample_cases(package.manifest.inputs, InputLimits(), recipe.task, recipe, tokenizer, pre, seed=5)
    assert [case.rows for case in cases[:2]] == [1, 3]
    return [dict(case.feeds) for case in cases[:2]]


def test_recipe_converts_validates_and_runs(converted: tuple[Recipe, Path, Path]) -> None:
    recipe, source, path = converted
    package = ModelPackage.open(path)
    manifest = package.manifest
    assert (manifest.name, manifest.task, manifest.source.recipe) == (recipe.name, recipe.task, recipe.name)
    validation = manifest.variant("fp32").validation
    assert validation is not None
    assert validation.passed, validation
    assert (validation.atol, validation.rtol) == (recipe.atol, recipe.rtol)
    print_decisions(recipe.name, validation)
    if recipe.sample.kind in SAMPLE_CASE_WORDS:
        assert all(SAMPLE_CASE_WORDS[recipe.sample.kind] in case for case in validation.cases[:2])
    if recipe.sample.texts:
        assert "recipe text" in validation.cases[0]
    # the recipe documents what the package takes: names, dtypes and ranks agree with the export
    assert [(s.name, s.dtype, len(s.shape)) for s in manifest.inputs] == [
        (s.name, s.dtype, len(s.shape)) for s in recipe.inputs
    ]
    modality = TASKS[recipe.task].modality
    kind = {"text": TextPreprocessing, "image": ImagePreprocessing, "audio": AudioPreprocessing}[modality]
    assert isinstance(manifest.preprocessing, kind)  # an audio feature extractor is not read as an image one
    assert recipe.offline is not None
    if recipe.offline.labels and TASKS[recipe.task].has_labels:
        assert manifest.labels == recipe.offline.labels

    # onnxruntime at batch 1 and 3 on fresh sample inputs, against the PyTorch model read back from disk
    model = load_hf_model(source, TASKS[recipe.task])
    runner = Runner(path)
    names = tuple(spec.name for spec in runner.outputs)
    for feeds in _first_cases(recipe, package):
        got = runner.run(feeds)
        want = run_reference(model, feeds, names)
        rows = next(iter(feeds.values())).shape[0]
        for name in names:
            assert got[name].shape == want[name].shape
            assert got[name].shape[0] == rows
            assert np.isfinite(got[name]).all()
            np.testing.assert_allclose(got[name], want[name], atol=max(recipe.atol, 1e-5), rtol=0)


def test_resnet_recipe_records_its_processor_convention(
    offline_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    """ResNet's processor resizes the shortest edge to size / crop_pct (bicubic), then crops the centre; and
    `edge convert DIR --recipe` is how a local checkpoint gets a recipe's settings."""
    result = CliRunner().invoke(
        edge, ["convert", str(offline_dir("resnet50")), "--recipe", "resnet50", "-o", str(tmp_path / "r")]
    )
    assert result.exit_code == 0, result.output
    manifest = ModelPackage.open(tmp_path / "r").manifest
    assert manifest.source.kind == "hf-dir"
    assert manifest.source.recipe == "resnet50"
    assert manifest.preprocessing == ImagePreprocessing(
        size=(36, 36),  # int(32 / 0.875)
        crop_size=(32, 32),
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        resize="shortest_edge",
        resample="bicubic",
    )


def test_module_recipe_converts_from_its_factory(tmp_path: Path) -> None:
    from converters.model_recipes.modules import kws_cnn

    name = MODULES[0]
    package = convert(name, tmp_path / name).path
    manifest = ModelPackage.open(package).manifest
    assert (manifest.name, manifest.task, manifest.source.recipe) == (name, "audio-classify", name)
    validation = manifest.variant("fp32").validation
    assert validation is not None
    assert validation.passed
    print_decisions(name, validation)
    assert [(s.name, s.shape) for s in manifest.inputs] == [("features", ("batch", 1, 40, 101))]
    import torch

    runner = Runner(package)
    model = kws_cnn()
    for batch in (1, 3):
        features = np.random.default_rng(batch).standard_normal((batch, 1, 40, 101)).astype(np.float32)
        with torch.inference_mode():
            want = model(torch.from_numpy(features)).numpy()
        np.testing.assert_allclose(runner.run({"features": features})["output"], want, atol=1e-4)


def test_hub_recipe_offline_fails_at_once_with_the_way_out(tmp_path: Path) -> None:
    result = CliRunner().invoke(edge, ["convert", "vit", "-o", str(tmp_path / "vit")])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1
    assert "google/vit-base-patch16-224" in result.output
    assert "offline" in result.output
    assert not (tmp_path / "vit").exists()


def test_unknown_recipe_option_lists_the_known(offline_dir: Callable[[str], Path], tmp_path: Path) -> None:
    result = CliRunner().invoke(
        edge, ["convert", str(offline_dir("vit")), "--recipe", "vitt", "-o", str(tmp_path / "o")]
    )
    assert result.exit_code == 2
    assert "unknown recipe 'vitt' (known: bart-large-cnn, bert-ner," in result.output
    assert load_recipe("vit").source.hub == "google/vit-base-patch16-224"


@pytest.mark.parametrize(
    ("architecture", "audio", "task"),
    [
        ("SegformerForSemanticSegmentation", False, "segment"),
        ("ResNetForImageClassification", False, "image-classify"),
        ("BertForSequenceClassification", False, "classify"),
        ("Wav2Vec2ForSequenceClassification", True, "audio-classify"),
        ("Wav2Vec2Model", True, "audio-features"),
        ("ViTModel", False, "features"),
    ],
)
def test_task_detection_reads_the_architecture_and_the_modality(
    architecture: str, audio: bool, task: str, tmp_path: Path
) -> None:
    from converters.hf import detect_task

    (tmp_path / "config.json").write_text(json.dumps({"architectures": [architecture]}), encoding="utf-8")
    processor = {"sampling_rate": 16000} if audio else {"size": {"height": 8, "width": 8}}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(processor), encoding="utf-8")
    assert detect_task(tmp_path, None).name == task
