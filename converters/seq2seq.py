"""Encoder-decoder models: Whisper (``transcribe``) and BART, T5, Marian, mBART (``text2text``).

optimum-onnx's ``automatic-speech-recognition-with-past`` / ``text2text-generation-with-past`` export writes an
encoder, a decoder for the start tokens (which also returns the cross-attention cache) and a decoder with past
(one token a step). The package keeps them as ``model.onnx`` (the encoder: the manifest's inputs and outputs),
``decoder.onnx`` and ``decoder_with_past.onnx``. Validation runs the encoder and then the decoder start plus two
cached greedy steps against PyTorch. The manifest's ``seq2seq`` section records the decoder contract: start
tokens, eos/pad ids, positions, suppressed and forced tokens, the generation defaults and, for Whisper, its
languages, tasks and front end.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from converters.attention_fusion import attention_heads, fuse_attention
from converters.export_manifest import FreshExport, fresh_manifest
from converters.export_tasks import TASKS
from converters.hf import copy_assets, load_and_export, missing_tokenizer
from converters.sources import ResolvedSource, directory_sha256
from converters.validate import OutputTally, validation_of
from toolkit.agreement import Tolerance
from toolkit.atomic import replace_directory, staging_directory
from toolkit.errors import ExportError
from toolkit.inspect import inspect_model
from toolkit.manifest import (
    FP32_VARIANT,
    AudioPreprocessing,
    ModelPackage,
    Preprocessing,
    Seq2SeqSpec,
    TextPreprocessing,
    Validation,
    resolve_inside,
    seq2seq_files,
)
from toolkit.tasks import Family, tasks

__all__ = [
    "SPEECH_MODEL_TYPES",
    "TEXT_MODEL_TYPES",
    "convert_seq2seq",
    "seq2seq_spec",
    "seq2seq_task",
]

SPEECH_MODEL_TYPES = frozenset({"whisper"})
TEXT_MODEL_TYPES = frozenset({"bart", "mbart", "marian", "t5", "mt5"})
_EXPORTED = {
    "encoder_model.onnx": "encoder",
    "decoder_model.onnx": "decoder",
    "decoder_with_past_model.onnx": "decoder_with_past",
}
_DEFAULT_KEYS = (
    "num_beams",
    "max_length",
    "max_new_tokens",
    "length_penalty",
    "early_stopping",
    "no_repeat_ngram_size",
    "min_length",
)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def seq2seq_task(model_dir: Path, requested: str | None) -> str | None:
    """``transcribe`` or ``text2text`` when the source converts as an encoder-decoder, else None."""
    if requested is not None:
        known = TASKS.get(requested)
        return requested if known is not None and known.family is Family.ENCODER_DECODER else None
    config = _read_json(model_dir / "config.json")
    kind = config.get("model_type")
    if kind in SPEECH_MODEL_TYPES:
        return "transcribe"
    if config.get("is_encoder_decoder") and kind in TEXT_MODEL_TYPES:
        return "text2text"
    return None


def _ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    return tuple(int(v) for v in value) if isinstance(value, list | tuple) else (int(value),)


def seq2seq_spec(package_dir: Path, task: str, model: Any, layers: int) -> Seq2SeqSpec:
    """The decoder contract of an exported encoder-decoder, from its configs."""
    config = model.config
    generation = _read_json(resolve_inside(package_dir, "generation_config.json", "generation config"))
    if not generation:
        generation = model.generation_config.to_dict()
    start = generation.get("decoder_start_token_id", config.decoder_start_token_id)
    eos = _ids(generation.get("eos_token_id", config.eos_token_id))
    pad = generation.get("pad_token_id", config.pad_token_id)
    positions = (
        getattr(config, "max_target_positions", None)
        or getattr(config, "max_position_embeddings", None)
        or 512
    )
    pre = _read_json(resolve_inside(package_dir, "preprocessor_config.json", "preprocessor config"))
    return Seq2SeqSpec(
        layers=layers,
        decoder_start_ids=_ids(start),
        eos_token_ids=eos,
        pad_token_id=int(pad if pad is not None else eos[0]),
        max_target_positions=int(positions),
        suppress_tokens=_ids(generation.get("suppress_tokens")),
        begin_suppress_tokens=_ids(generation.get("begin_suppress_tokens")),
        forced_bos_token_id=generation.get("forced_bos_token_id"),
        forced_eos_token_id=generation.get("forced_eos_token_id"),
        # without a max_length of its own, transformers generates its default 20 new tokens after the start
        defaults={
            **({} if generation.get("max_length") is not None else {"max_new_tokens": 20}),
            **{k: generation[k] for k in _DEFAULT_KEYS if generation.get(k) is not None},
        },
        no_timestamps_token_id=generation.get("no_timestamps_token_id"),
        # transformers' WhisperTimeStampLogitsProcessor reads it with getattr(..., None): absent means no limit
        max_initial_timestamp_index=generation.get("max_initial_timestamp_index"),
        chunk_length=int(pre.get("chunk_length", 30)),
        **_encoder_of(task).spec_fields(generation, pre, config),
    )


def _speech_spec_fields(generation: Mapping[str, Any], pre: Mapping[str, Any], config: Any) -> dict[str, Any]:
    """Whisper's language and task tokens, and its front end's mel bins."""
    return {
        "languages": {k.strip("<|>"): int(v) for k, v in (generation.get("lang_to_id") or {}).items()},
        "tasks": {k: int(v) for k, v in (generation.get("task_to_id") or {}).items()},
        "n_mels": int(pre.get("feature_size", getattr(config, "num_mel_bins", 0)) or 0),
    }


def _speech_feeds(model: Any, package_dir: Path, spec: Seq2SeqSpec) -> dict[str, np.ndarray]:
    """Log-mel features of a 2 s speech-like clip, cut to the encoder's frames."""
    from toolkit.speech import LogMelSpec, log_mel
    from toolkit.tasks.modality import synthetic_waveform

    wave = synthetic_waveform(16000 * 2, 16000, np.random.default_rng(5))
    features = log_mel(wave, LogMelSpec(n_mels=spec.n_mels, chunk_length=spec.chunk_length))
    frames = 2 * int(model.config.max_source_positions)
    return {"input_features": features[None, :, :frames]}


def _text_feeds(model: Any, package_dir: Path, spec: Seq2SeqSpec) -> dict[str, np.ndarray]:
    """One sentence through the package's tokenizer."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(resolve_inside(package_dir, "tokenizer.json", "tokenizer")))
    ids = tokenizer.encode("Edge inference keeps latency low on small devices.").ids
    return {
        "input_ids": np.asarray([ids], dtype=np.int64),
        "attention_mask": np.ones((1, len(ids)), dtype=np.int64),
    }


def _text_preprocessing(config: Any) -> Preprocessing:
    """The package's tokenizer, truncated at the encoder's positions."""
    return TextPreprocessing(
        tokenizer="tokenizer.json", max_length=int(getattr(config, "max_position_embeddings", 512) or 512)
    )


@dataclass(frozen=True)
class _Encoder:
    """What converting an encoder-decoder does by what its encoder reads (the task's modality, `ExportTask`):
    the seq2seq fields only that input has (from the generation config, the preprocessor config and the model
    config), the encoder's validation feeds, the package's preprocessing section, and whether the package must
    hold a tokenizer.json."""

    spec_fields: Callable[[Mapping[str, Any], Mapping[str, Any], Any], dict[str, Any]]
    feeds: Callable[[Any, Path, Seq2SeqSpec], dict[str, np.ndarray]]
    preprocessing: Callable[[Any], Preprocessing]
    needs_tokenizer: bool


_ENCODERS: dict[str, _Encoder] = {
    "audio": _Encoder(
        _speech_spec_fields,
        _speech_feeds,
        lambda config: AudioPreprocessing(sampling_rate=16000, normalize=False),
        needs_tokenizer=False,
    ),
    "text": _Encoder(lambda *_: {}, _text_feeds, _text_preprocessing, needs_tokenizer=True),
}


def _encoder_of(task: str) -> _Encoder:
    """How the encoder-decoder task `task` converts, by its modality."""
    return _ENCODERS[TASKS[task].modality]


def validate_seq2seq(
    task: str, model: Any, package_dir: Path, spec: Seq2SeqSpec, tolerance: Tolerance
) -> Validation:
    """Encoder outputs, then the decoder's start and two cached greedy steps, against PyTorch."""
    import onnxruntime as ort
    import torch

    from toolkit.decoding import DecodingRules, Seq2SeqStepper, log_softmax

    encoder_file, decoder_file, past_file = (package_dir / f for f in seq2seq_files(FP32_VARIANT))
    feeds = _encoder_of(task).feeds(model, package_dir, spec)
    encoder = ort.InferenceSession(str(encoder_file), providers=["CPUExecutionProvider"])
    states = encoder.run(None, feeds)[0]
    encoder_stack = model.get_encoder()
    if getattr(encoder_stack, "is_decoder", True) is False and getattr(
        encoder_stack.config, "use_cache", False
    ):
        encoder_stack.config.use_cache = False  # the export turns the shared flag on; a T5 encoder refuses it
    with torch.inference_mode():
        torch_feeds = {k: torch.from_numpy(v) for k, v in feeds.items()}
        start = torch.tensor([spec.decoder_start_ids], dtype=torch.int64)
        want_states = model(
            **torch_feeds, decoder_input_ids=start, use_cache=False
        ).encoder_last_hidden_state.numpy()
    meaning = tasks()[task].meaning
    encoder_tally = OutputTally("last_hidden_state", tolerance, meaning["last_hidden_state"])
    encoder_tally.add(states, want_states)
    steps_tally = OutputTally("log_probs (start + cached steps)", tolerance, meaning["log_probs"])
    prompt = np.asarray([spec.decoder_start_ids], dtype=np.int64)
    rules = DecodingRules(prompt.shape[1], 10**9, frozenset(spec.eos_token_ids))
    stepper = Seq2SeqStepper(
        ort.InferenceSession(str(decoder_file), providers=["CPUExecutionProvider"]),
        ort.InferenceSession(str(past_file), providers=["CPUExecutionProvider"]),
        spec,
        states,
        feeds.get("attention_mask"),
        prompt,
        rules,
        capacity=prompt.shape[1] + 2,
    )
    got = stepper.logits
    for step in range(3):
        with torch.inference_mode():
            output = model(
                **torch_feeds, decoder_input_ids=torch.from_numpy(stepper.ids), use_cache=False
            ).logits[:, -1, :]
        want = log_softmax(output.numpy())
        steps_tally.add(got, want)
        if step < 2:
            got = stepper.step(want.argmax(-1).astype(np.int64))
    return validation_of(
        [encoder_tally.check(), steps_tally.check()],
        tolerance,
        1,
        ("encoder + decoder start + 2 cached steps",),
    )


def convert_seq2seq(
    resolved: ResolvedSource, out: Path, task_name: str, opset: int | None, tolerance: Tolerance, say: Any
) -> ModelPackage:
    """Export an encoder-decoder (encoder, decoder, decoder with past), validate it, write the package to `out`."""
    task = TASKS[task_name]
    with staging_directory(out) as staging:
        package_dir = staging / "package"
        package_dir.mkdir()
        export_dir = staging / "export"
        model, _, export_seconds = load_and_export(
            resolved.model_dir, resolved.name, task, export_dir, opset, say, main_file="encoder_model.onnx"
        )
        names = dict(
            zip(("encoder", "decoder", "decoder_with_past"), seq2seq_files(FP32_VARIANT), strict=True)
        )
        for exported, part in _EXPORTED.items():
            if not (export_dir / exported).is_file():
                raise ExportError(
                    f"optimum-onnx wrote no {exported} for {type(model).__name__}; it cannot be packaged"
                )
            (export_dir / exported).replace(package_dir / names[part])
        copy_assets(resolved.model_dir, export_dir, package_dir)
        heads = attention_heads(model.config)
        fused = fuse_attention(package_dir / names["encoder"], heads) if heads else 0
        if fused:
            say(f"fused {fused} encoder self-attention blocks into MultiHeadAttention")
        encoder = _encoder_of(task_name)
        if (
            encoder.needs_tokenizer
            and not resolve_inside(package_dir, "tokenizer.json", "tokenizer").is_file()
        ):
            raise missing_tokenizer(resolved.model_dir)
        info = inspect_model(package_dir / names["encoder"])
        decoder_info = inspect_model(package_dir / names["decoder_with_past"])
        layers = sum(1 for o in decoder_info.outputs if o.name.endswith(".decoder.key"))
        spec = seq2seq_spec(package_dir, task_name, model, layers)
        say("validating encoder and decoder steps against PyTorch")
        validation = validate_seq2seq(task_name, model, package_dir, spec, tolerance)
        size = sum((package_dir / f).stat().st_size for f in seq2seq_files(FP32_VARIANT))
        manifest = fresh_manifest(
            resolved,
            FreshExport(
                task=task_name,
                sha256=directory_sha256(resolved.model_dir),
                graph=info,
                settings={**task.export_settings(export_seconds), "fused_attention": fused},
                validation=validation,
                exporter=task.exporter_record(),
                preprocessing=encoder.preprocessing(model.config),
                size_bytes=size,
                seq2seq=spec,
            ),
        )
        ModelPackage(package_dir, manifest).save(manifest)
        replace_directory(package_dir, out)
    say(f"wrote {out}")
    return ModelPackage.open(out)
