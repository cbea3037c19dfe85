"""Tiny random encoder-decoders for the seq2seq tests: Whisper, BART, T5 and Marian built from configs with BPE
tokenizers trained here, speech-like clips and WAV files (the fixtures that convert them live in conftest.py)."""

from __future__ import annotations

import wave
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CORPUS",
    "LANGUAGES",
    "TEXT_KINDS",
    "WHISPER_SIZES",
    "WHISPER_SPECIAL",
    "bpe_tokenizer",
    "large_logit_bart",
    "speech",
    "text_source",
    "whisper_source",
    "write_wav",
]

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Edge inference keeps latency low on small devices.",
    "A model package holds the graph, its manifest and the tokenizer.",
    "Speech becomes text, and text becomes other text.",
]
LANGUAGES = ("en", "de", "fr")
WHISPER_SPECIAL = [
    "<|endoftext|>",
    "<|startoftranscript|>",
    *[f"<|{code}|>" for code in LANGUAGES],
    "<|translate|>",
    "<|transcribe|>",
    "<|startoflm|>",
    "<|startofprev|>",
    "<|nospeech|>",
    "<|notimestamps|>",
    *[f"<|{i * 0.02:.2f}|>" for i in range(16)],
]
TEXT_KINDS = ("bart", "t5", "marian", "mbart")
# the encoder-decoder layout every tiny model shares (d_model 32, 2 + 2 layers of 4 heads)
_TINY_LAYERS: dict[str, Any] = {
    "d_model": 32,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "encoder_attention_heads": 4,
    "decoder_attention_heads": 4,
    "encoder_ffn_dim": 64,
    "decoder_ffn_dim": 64,
}
WHISPER_SIZES: dict[str, Any] = {
    **_TINY_LAYERS,
    "num_mel_bins": 80,
    "max_source_positions": 1500,
    "max_target_positions": 64,
}
BART_SIZES: dict[str, Any] = {**_TINY_LAYERS, "max_position_embeddings": 64}  # BART, mBART and Marian


def bpe_tokenizer(special: list[str], vocab: int = 300) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(CORPUS * 20, trainer)
    return tokenizer


def whisper_source(
    folder: Path,
    config_kwargs: dict[str, Any] | None = None,
    multilingual: bool = True,
    timestamps: int | None = None,
) -> Path:
    """A tiny random Whisper saved with its tokenizer and feature extractor. `timestamps` None: 16 timestamp
    tokens, special like the other control tokens (a generic fast tokenizer); a count (Whisper's real 1501):
    that many plain added tokens after ``<|notimestamps|>`` and a ``WhisperTokenizerFast``, the layout
    transformers' timestamp decoding (``_decode_asr``, ``output_offsets``) and ASR pipeline expect."""
    import torch
    from transformers import (
        AddedToken,
        GenerationConfig,
        PreTrainedTokenizerFast,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperTokenizerFast,
    )

    if timestamps is None:
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=bpe_tokenizer(WHISPER_SPECIAL[:-17]),
            eos_token="<|endoftext|>",
            pad_token="<|endoftext|>",
        )
        # <|notimestamps|> and the timestamps come last, as in Whisper's vocabulary (timestamps are its top ids)
        tokenizer.add_special_tokens({"additional_special_tokens": WHISPER_SPECIAL[1:]})
    else:
        tokenizer = WhisperTokenizerFast(
            tokenizer_object=bpe_tokenizer(WHISPER_SPECIAL[:-17]),
            unk_token="<|endoftext|>",
            bos_token="<|endoftext|>",
            eos_token="<|endoftext|>",
            pad_token="<|endoftext|>",
        )
        tokenizer.add_special_tokens({"additional_special_tokens": WHISPER_SPECIAL[1:-16]})
        tokenizer.add_tokens(
            [AddedToken(f"<|{i * 0.02:.2f}|>", special=False, normalized=False) for i in range(timestamps)]
        )
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in WHISPER_SPECIAL}
    eot, sot = ids["<|endoftext|>"], ids["<|startoftranscript|>"]
    sizes = config_kwargs or WHISPER_SIZES
    config = WhisperConfig(
        vocab_size=len(tokenizer),
        **sizes,
        decoder_start_token_id=sot,
        pad_token_id=eot,
        eos_token_id=eot,
        bos_token_id=eot,
        begin_suppress_tokens=[eot],
        suppress_tokens=[ids["<|startoflm|>"]],
    )
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        decoder_start_token_id=sot,
        eos_token_id=eot,
        pad_token_id=eot,
        bos_token_id=eot,
        begin_suppress_tokens=[eot],
        suppress_tokens=[ids["<|startoflm|>"]],
        # an English-only Whisper has no language or task maps at all (transformers reads their presence)
        **(
            {
                "lang_to_id": {f"<|{c}|>": ids[f"<|{c}|>"] for c in LANGUAGES},
                "task_to_id": {"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
            }
            if multilingual
            else {}
        ),
        no_timestamps_token_id=ids["<|notimestamps|>"],
        is_multilingual=multilingual,
        max_initial_timestamp_index=50,
        max_length=64,
    )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(folder)
    return folder


def text_source(kind: str, folder: Path, recipe_model: tuple[str, str, dict[str, Any]] | None = None) -> Path:
    import torch
    import transformers as tf

    special = ["<pad>", "</s>", "<s>", "<unk>"]
    tokenizer = tf.PreTrainedTokenizerFast(
        tokenizer_object=bpe_tokenizer(special),
        pad_token="<pad>",
        eos_token="</s>",
        bos_token="<s>",
        unk_token="<unk>",
    )
    from tokenizers import processors

    backend = tokenizer.backend_tokenizer
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    vocab = len(tokenizer)
    torch.manual_seed(0)
    common = {"vocab_size": vocab, "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0}
    if recipe_model is not None:
        model_name, config_name, kwargs = recipe_model
        # the toy vocabulary's eos is 1: force that one at the length limit (BART and Marian default to 2 and 0)
        forced = {"forced_eos_token_id": 1, "forced_bos_token_id": None}
        model = getattr(tf, model_name)(getattr(tf, config_name)(**{**common, **forced, **kwargs}))
    elif kind == "t5":
        model = tf.T5ForConditionalGeneration(
            tf.T5Config(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, **common)
        )
    elif kind == "mbart":
        # mBART starts decoding from eos and forces a target-language token first (here "<s>", id 2)
        model = tf.MBartForConditionalGeneration(
            tf.MBartConfig(
                **BART_SIZES,
                forced_bos_token_id=2,
                forced_eos_token_id=1,
                **{**common, "decoder_start_token_id": 1},
            )
        )
    elif kind == "marian":
        model = tf.MarianMTModel(
            tf.MarianConfig(
                **BART_SIZES,
                forced_eos_token_id=1,
                **common,
            )
        )
    else:
        model = tf.BartForConditionalGeneration(
            tf.BartConfig(
                **BART_SIZES,
                forced_bos_token_id=2,
                forced_eos_token_id=1,
                bos_token_id=2,
                **{**common, "decoder_start_token_id": 1},
            )
        )
    model.eval()
    if recipe_model is None:
        model.generation_config.max_length = 24
        model.generation_config.no_repeat_ngram_size = 3 if kind == "bart" else 0
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def large_logit_bart(folder: Path) -> Path:
    """The tiny BART with its weight matrices redrawn at std 1: logits span about -16..+21 and log-probabilities
    reach below -30, the scale of a trained model, where float32 reordering alone moves logits by ~1e-4."""
    import torch
    import transformers as tf

    text_source("bart", folder)
    model = tf.BartForConditionalGeneration.from_pretrained(folder)
    torch.manual_seed(1)
    with torch.no_grad():
        for weights in model.parameters():
            if weights.dim() >= 2:
                weights.normal_(0.0, 1.0)
    model.save_pretrained(folder)
    return folder


def speech(seconds: float, rate: int = 16000, seed: int = 3) -> np.ndarray:
    from toolkit.tasks.modality import synthetic_waveform

    return (0.1 * synthetic_waveform(int(seconds * rate), rate, np.random.default_rng(seed))).astype(
        np.float32
    )


def write_wav(path: Path, samples: np.ndarray, rate: int, channels: int = 1) -> Path:
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2")
    if channels > 1:
        pcm = np.repeat(pcm[:, None], channels, axis=1)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm.tobytes())
    return path
