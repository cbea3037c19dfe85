"""Causal LMs: export through optimum-onnx's ``text-generation-with-past`` (one decoder taking and returning
its KV cache), validation over the prompt and cached decode steps, and the manifest's generation contract.

Where the architecture allows (Llama, Qwen2, Mistral: `converters.gqa_decoder`), the decoder is edge-toolkit's own
graph (GroupQueryAttention over one KV buffer written in place, logits for the last position only); other
architectures, or ``decoder_graph="optimum"``, get optimum-onnx's export.

Validation feeds the ONNX decoder and the PyTorch model the same tokens: the prompt's logits (optimum's graph: at
every real position; the in-place graph: at the last, through the generator's own `DecoderStepper` and its
cache), then two decode steps each fed its own cache, at batch 1 and for a left-padded batch of 3, judged by
``allclose`` (`toolkit.agreement.Tolerance`) and top-1/top-5 agreement over the vocabulary.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from converters.export_manifest import FreshExport, fresh_manifest
from converters.export_tasks import TASKS
from converters.gqa_decoder import export_gqa_decoder, supports_gqa
from converters.hf import copy_assets, export_hf_model, load_hf_model, missing_tokenizer
from converters.sources import ResolvedSource, directory_sha256
from converters.validate import OutputTally, validation_of
from toolkit.agreement import Tolerance
from toolkit.atomic import replace_directory, staging_directory
from toolkit.errors import ExportError
from toolkit.inspect import inspect_model
from toolkit.manifest import (
    FP32_VARIANT,
    GQA_SEQLENS_GRAPH,
    OPTIMUM_GRAPH,
    GenerationSpec,
    ModelPackage,
    TensorSpec,
    TextPreprocessing,
    Validation,
    resolve_inside,
    variant_file_name,
)
from toolkit.tasks import tasks

__all__ = [
    "DECODE_STEPS",
    "VALIDATION_ROWS",
    "convert_causal_lm",
    "generation_spec",
    "torch_generation_timer",
    "validate_decoder",
    "validate_in_place_decoder",
]

log = logging.getLogger(__name__)

DECODE_STEPS = 2
# prompt lengths per validation case: batch 1, then a left-padded batch of 3
VALIDATION_ROWS: tuple[tuple[int, ...], ...] = ((7,), (7, 4, 2))
_DEFAULT_KEYS = ("do_sample", "temperature", "top_k", "top_p", "repetition_penalty", "max_new_tokens")
_PAST = "past_key_values.{layer}.{kind}"


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    return tuple(int(v) for v in value) if isinstance(value, list | tuple) else (int(value),)


def _token_id(package_dir: Path, config: Mapping[str, Any], key: str) -> int | None:
    """A special token's id from the tokenizer config (its string) looked up in tokenizer.json."""
    token = config.get(key)
    if isinstance(token, Mapping):
        token = token.get("content")
    if not isinstance(token, str):
        return None
    from tokenizers import Tokenizer

    found = Tokenizer.from_file(str(resolve_inside(package_dir, "tokenizer.json", "tokenizer"))).token_to_id(
        token
    )
    return int(found) if found is not None else None


def generation_spec(
    package_dir: Path, onnx_inputs: Sequence[TensorSpec], model_config: Any
) -> GenerationSpec:
    """The generation contract of an exported decoder: cache layout from its graph, positions and special ids
    from the configs, the chat template, and generation_config.json's defaults."""
    pasts = {spec.name: spec for spec in onnx_inputs if spec.name.startswith("past_key_values.")}
    first = pasts.get(_PAST.format(layer=0, kind="key"))
    if first is None or len(first.shape) != 4:
        raise ExportError(
            "the exported decoder has no 4-D past_key_values.0.key input; this architecture's cache layout "
            "is not supported by edge-toolkit's generator"
        )
    kv_heads, head_dim = first.shape[1], first.shape[3]
    if not isinstance(kv_heads, int) or not isinstance(head_dim, int):
        raise ExportError(f"past_key_values.0.key has symbolic heads or head size ({first.describe()})")
    generation = _read_json(resolve_inside(package_dir, "generation_config.json", "generation config"))
    tokenizer_config = _read_json(resolve_inside(package_dir, "tokenizer_config.json", "tokenizer config"))
    eos = _ids(generation.get("eos_token_id", getattr(model_config, "eos_token_id", None)))
    if not eos:
        eos = _ids(_token_id(package_dir, tokenizer_config, "eos_token"))
    pad = generation.get("pad_token_id", getattr(model_config, "pad_token_id", None))
    if pad is None:
        pad = _token_id(package_dir, tokenizer_config, "pad_token")
    if pad is None:
        pad = eos[0] if eos else 0
    bos = generation.get("bos_token_id", getattr(model_config, "bos_token_id", None))
    template = tokenizer_config.get("chat_template")
    template_file = resolve_inside(package_dir, "chat_template.jinja", "chat template")
    if template is None and template_file.is_file():
        template = template_file.read_text(encoding="utf-8")
    if isinstance(template, list):  # named templates: take the default one
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    positions = getattr(model_config, "max_position_embeddings", None) or getattr(
        model_config, "n_positions", 2048
    )
    return GenerationSpec(
        layers=len(pasts) // 2,
        kv_heads=kv_heads,
        head_dim=head_dim,
        cache_dtype=first.dtype,
        max_positions=int(positions or 2048),
        eos_token_ids=eos,
        pad_token_id=int(pad),
        bos_token_id=int(bos) if bos is not None else None,
        chat_template=template,
        defaults={k: generation[k] for k in _DEFAULT_KEYS if k in generation},
        position_ids=any(spec.name == "position_ids" for spec in onnx_inputs),
    )


def _left_padded(lengths: Sequence[int], vocab: int, pad: int, rng: np.random.Generator) -> tuple[Any, Any]:
    longest = max(lengths)
    ids = np.full((len(lengths), longest), pad, dtype=np.int64)
    mask = np.zeros((len(lengths), longest), dtype=np.int64)
    for row, length in enumerate(lengths):
        ids[row, longest - length :] = rng.integers(0, vocab, size=length)
        mask[row, longest - length :] = 1
    return ids, mask


def _positions(mask: np.ndarray, new: int) -> np.ndarray:
    positions = np.cumsum(mask, axis=-1) - 1
    positions[mask == 0] = 1
    return np.ascontiguousarray(positions[:, -new:])


def _logit_tallies(tolerance: Tolerance) -> dict[str, OutputTally]:
    """The decoder checks' outputs, each judged by ``allclose`` and the generate task's top-1/top-5 agreement."""
    meaning = tasks()["generate"].meaning["logits"]
    return {
        name: OutputTally(name, tolerance, meaning) for name in ("logits (prompt)", "logits (cached steps)")
    }


def _decoder_validation(
    tallies: Mapping[str, OutputTally], tolerance: Tolerance, cases: list[str]
) -> Validation:
    """The validation record of a decoder check (optimum's graph or the in-place one) from its tallies."""
    return validation_of(
        [tally.check() for tally in tallies.values()],
        tolerance,
        sum(len(rows) for rows in VALIDATION_ROWS),
        cases,
    )


def validate_decoder(
    model: Any, onnx_file: Path, spec: GenerationSpec, tolerance: Tolerance, seed: int = 0
) -> Validation:
    """The ONNX decoder against `model` (PyTorch) on the prompt and `DECODE_STEPS` cached steps."""
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    outputs = [o.name for o in session.get_outputs()]
    vocab = int(model.config.vocab_size)
    rng = np.random.default_rng(seed)
    tallies = _logit_tallies(tolerance)
    cases = []
    for lengths in VALIDATION_ROWS:
        ids, mask = _left_padded(lengths, vocab, spec.pad_token_id, rng)
        batch = len(lengths)
        cases.append(
            f"batch {batch}" + (", left-padded" if batch > 1 else "") + f", prompt {max(lengths)}, "
            f"{DECODE_STEPS} cached steps"
        )
        empty = np.zeros((batch, spec.kv_heads, 0, spec.head_dim), dtype=spec.cache_dtype)
        feeds: dict[str, np.ndarray] = {"input_ids": ids, "attention_mask": mask}
        feeds.update(
            {_PAST.format(layer=i, kind=k): empty for i in range(spec.layers) for k in ("key", "value")}
        )
        new = ids
        past = None
        for step in range(DECODE_STEPS + 1):
            positions = _positions(mask, new.shape[1])
            if "position_ids" in names:
                feeds["position_ids"] = positions
            feeds = {k: v for k, v in feeds.items() if k in names}
            got = dict(zip(outputs, session.run(outputs, feeds), strict=True))
            with torch.inference_mode():
                out = model(
                    input_ids=torch.from_numpy(new),
                    attention_mask=torch.from_numpy(mask),
                    position_ids=torch.from_numpy(positions),
                    past_key_values=past,
                    use_cache=True,
                )
            want = out.logits.float().numpy()
            past = out.past_key_values
            real = mask[:, -new.shape[1] :].astype(bool)  # padded positions' logits mean nothing
            tallies["logits (prompt)" if step == 0 else "logits (cached steps)"].add(
                got["logits"][real], want[real]
            )
            new = want[:, -1, :].argmax(-1).astype(np.int64)[:, None]
            mask = np.concatenate([mask, np.ones((batch, 1), dtype=np.int64)], axis=1)
            feeds = {
                "input_ids": new,
                "attention_mask": mask,
                **{
                    _PAST.format(layer=i, kind=k): got[f"present.{i}.{k}"]
                    for i in range(spec.layers)
                    for k in ("key", "value")
                },
            }
    return _decoder_validation(tallies, tolerance, cases)


def validate_in_place_decoder(
    model: Any, onnx_file: Path, spec: GenerationSpec, tolerance: Tolerance, seed: int = 0
) -> Validation:
    """The in-place ONNX decoder, run by the generator's `DecoderStepper` (its cache bound in place), against
    `model` (PyTorch): the last prompt position's logits, then `DECODE_STEPS` cached steps."""
    import onnxruntime as ort
    import torch

    from toolkit.decoding.decoder import DecoderStepper

    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    tallies = _logit_tallies(tolerance)
    cases = []
    for lengths in VALIDATION_ROWS:
        ids, mask = _left_padded(lengths, int(model.config.vocab_size), spec.pad_token_id, rng)
        batch = len(lengths)
        cases.append(
            f"batch {batch}" + (", left-padded" if batch > 1 else "") + f", prompt {max(lengths)} (last "
            f"position), {DECODE_STEPS} cached steps, KV buffer in place"
        )
        stepper = DecoderStepper(session, spec, ids, mask, ids.shape[1] + DECODE_STEPS)
        got = stepper.logits
        new, past = ids, None
        for step in range(DECODE_STEPS + 1):  # PyTorch with each row's real positions
            with torch.inference_mode():
                out = model(
                    input_ids=torch.from_numpy(new),
                    attention_mask=torch.from_numpy(mask),
                    position_ids=torch.from_numpy(_positions(mask, new.shape[1])),
                    past_key_values=past,
                    use_cache=True,
                )
            want = out.logits[:, -1, :].float().numpy()
            past = out.past_key_values
            tallies["logits (prompt)" if step == 0 else "logits (cached steps)"].add(got, want)
            if step < DECODE_STEPS:
                new = want.argmax(-1).astype(np.int64)[:, None]
                mask = np.concatenate([mask, np.ones((batch, 1), dtype=np.int64)], axis=1)
                got = stepper.step(new[:, 0])
    return _decoder_validation(tallies, tolerance, cases)


def _export_decoder(
    model: Any, task: Any, decoder_graph: str, export_dir: Path, onnx_file: Path, opset: int | None, say: Any
) -> tuple[str, tuple[float, ...], dict[str, Any]]:
    """Export `model`'s decoder to `onnx_file`: our in-place graph where it is asked for and supported, else
    optimum-onnx's; returns the graph's name, the rotary frequencies it applies inside (none for optimum's) and
    the variant's export settings."""
    started = time.perf_counter()
    reason = (
        supports_gqa(model.config) if decoder_graph != OPTIMUM_GRAPH else "asked for with --decoder-graph"
    )
    if reason is None:
        say("writing the decoder graph (GroupQueryAttention, KV buffer updated in place)")
        shapes = export_gqa_decoder(model, onnx_file)
        seconds = round(time.perf_counter() - started, 2)
        return (
            GQA_SEQLENS_GRAPH,
            shapes["rotary_inv_freq"],
            {
                "exporter": "edge-toolkit",
                "graph": GQA_SEQLENS_GRAPH,
                "export_seconds": seconds,
            },
        )
    log.info("decoder graph: optimum-onnx's export (%s)", reason)
    say(f"exporting to ONNX with optimum-onnx ({task.optimum_task}): {reason}")
    exported = export_hf_model(model, task, export_dir, opset)
    exported.replace(onnx_file)
    return OPTIMUM_GRAPH, (), task.export_settings(time.perf_counter() - started)


def convert_causal_lm(
    resolved: ResolvedSource,
    out: Path,
    opset: int | None,
    tolerance: Tolerance,
    say: Any,
    decoder_graph: str = "auto",
) -> ModelPackage:
    """Export a causal LM with its KV cache, validate it and write the ``generate`` package to `out`;
    `decoder_graph`: ``auto`` (our in-place graph where the architecture has one) or ``optimum``."""
    task = TASKS["generate"]
    with staging_directory(out) as staging:
        package_dir = staging / "package"
        package_dir.mkdir()
        export_dir = staging / "export"
        export_dir.mkdir()
        say(f"loading {resolved.name} ({task.name}) with PyTorch")
        model = load_hf_model(resolved.model_dir, task)
        onnx_file = package_dir / variant_file_name(FP32_VARIANT)
        graph, inv_freq, settings = _export_decoder(
            model, task, decoder_graph, export_dir, onnx_file, opset, say
        )
        copy_assets(resolved.model_dir, export_dir, package_dir)
        if not resolve_inside(package_dir, "tokenizer.json", "tokenizer").is_file():
            raise missing_tokenizer(resolved.model_dir)
        info = inspect_model(onnx_file)
        spec = replace(
            generation_spec(package_dir, info.inputs, model.config), graph=graph, rotary_inv_freq=inv_freq
        )
        say("validating the decoder against PyTorch (prompt and cached steps)")
        validate = validate_in_place_decoder if spec.in_place else validate_decoder
        validation = validate(model, onnx_file, spec, tolerance)
        manifest = fresh_manifest(
            resolved,
            FreshExport(
                task=task.name,
                sha256=directory_sha256(resolved.model_dir),
                graph=info,
                settings=settings,
                validation=validation,
                exporter=task.exporter_record()
                if graph == OPTIMUM_GRAPH
                else {"name": "edge-toolkit", "graph": graph},
                preprocessing=TextPreprocessing(tokenizer="tokenizer.json", max_length=spec.max_positions),
                generation=spec,
            ),
        )
        ModelPackage(package_dir, manifest).save(manifest)
        replace_directory(package_dir, out)
    say(f"wrote {out}")
    return ModelPackage.open(out)


def torch_generation_timer(model_dir: Path, threads: int | None = None) -> Any:
    """`edge bench --baseline torch` for a generator: transformers' greedy ``generate`` (eager attention) on the
    package's source model, as a `toolkit.bench.generation.GenerationTimer`."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.generation.streamers import BaseStreamer

    from toolkit.bench.generation import GenerationTiming

    if not (model_dir / "config.json").is_file():
        raise ExportError(
            f"the torch baseline needs the source model at '{model_dir}' (the package's source.ref); "
            "run edge bench where that folder exists, or drop --baseline"
        )
    if threads is not None:
        torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager").eval()
    pad = model.generation_config.pad_token_id or 0

    class TokenClock(BaseStreamer):
        """Stamps each step's new tokens as `generate` hands them over (its first call passes the prompt)."""

        def __init__(self) -> None:
            self.calls = 0
            self.stamps: list[float] = []

        def put(self, value: Any) -> None:
            """Stamp the time of every call after the prompt's."""
            self.calls += 1
            if self.calls > 1:
                self.stamps.append(time.perf_counter())

        def end(self) -> None:
            """Nothing to flush: the stamps are the result."""

    def run(ids: np.ndarray, n: int) -> GenerationTiming:
        tensor = torch.from_numpy(ids)
        clock = TokenClock()
        started = time.perf_counter()
        with torch.inference_mode():
            model.generate(
                input_ids=tensor,
                attention_mask=torch.ones_like(tensor),
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                pad_token_id=pad,
                streamer=clock,
            )
        first, last = clock.stamps[0], clock.stamps[-1]
        return GenerationTiming(first - started, last - first)

    return run
