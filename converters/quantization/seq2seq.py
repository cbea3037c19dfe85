"""Quantization of encoder-decoder packages (Whisper, BART, T5, ...): every part of the package, measured by token
agreement with fp32 on the task's held-out inputs, and by whatever else the task judges its decoded texts by
(speech: the word error rate against fp32, `Seq2SeqTask.decoded_text_checks`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

from converters.quantization.methods import METHODS, Progress, QuantizeOptions, QuantizeResult, Workspace
from toolkit.atomic import staging_directory
from toolkit.errors import BadInputError
from toolkit.host import current_host
from toolkit.manifest import (
    FP32_VARIANT,
    ModelPackage,
    OutputCheck,
    Validation,
    Variant,
    seq2seq_files,
    tool_versions,
)
from toolkit.runner import Runner
from toolkit.tasks import pipeline_class, task_for
from toolkit.tasks.encoder_decoder import Seq2SeqPipeline, Seq2SeqTask

__all__ = ["SEQ2SEQ_METHODS", "quantize_seq2seq", "token_agreement"]

SEQ2SEQ_METHODS = ("dynamic-int8", "int4")


def token_agreement(got: Sequence[Sequence[int]], want: Sequence[Sequence[int]]) -> tuple[float, float]:
    """(mean, worst) over inputs of the share of fp32's tokens the variant matches at the same position."""
    shares = [
        sum(a == b for a, b in zip(g, w, strict=False)) / max(len(w), len(g), 1)
        for g, w in zip(got, want, strict=True)
    ]
    return float(np.mean(shares)), float(min(shares))


def _decode_all(
    package: ModelPackage, variant: str, max_new_tokens: int
) -> tuple[list[list[int]], list[str]]:
    """Greedy token ids and texts of the package's `variant` on the task's held-out inputs."""
    runner = Runner(package.asset(package.manifest.variant(variant).file, "encoder file"), "cpu")
    pipeline = cast(Seq2SeqPipeline[Any], pipeline_class(package)(package, runner))
    try:
        results = pipeline.held_out_outputs(max_new_tokens)
        return [list(r.token_ids) for r in results], [r.text for r in results]
    finally:
        pipeline.close()


def quantize_seq2seq(
    package: ModelPackage, method: str, options: QuantizeOptions, say: Progress
) -> QuantizeResult:
    """Quantize the encoder and both decoders with `method` (dynamic-int8 or int4); the variant's accuracy is its
    greedy tokens' agreement with fp32 on held-out inputs (and, for speech, the word error rate against fp32)."""
    if method not in SEQ2SEQ_METHODS:
        raise BadInputError(
            f"method '{method}' does not apply to encoder-decoder packages yet; use one of {', '.join(SEQ2SEQ_METHODS)}"
        )
    spec = METHODS[method]
    name = options.name or spec.variant
    targets = seq2seq_files(name)
    settings: dict[str, Any] = {}
    written: list[Path] = []
    try:
        for source_name, target_name in zip(seq2seq_files(FP32_VARIANT), targets, strict=True):
            target = package.asset(target_name, f"variant '{name}' file")
            with staging_directory(target) as folder:
                ws = Workspace(package, package.path / source_name, folder, say)
                staged = folder / "variant.onnx"
                settings[source_name] = spec.build(ws, options, staged)
                staged.replace(target)
                written.append(target)
        size = sum(p.stat().st_size for p in written)
        say(f"decoding held-out inputs with fp32 and {name}")
        want, want_text = _decode_all(package, FP32_VARIANT, 16)
        staged_manifest = package.manifest.with_variant(
            Variant(name=name, file=targets[0], precision=spec.precision, method=method, size_bytes=size)
        )
        staged_package = ModelPackage(package.path, staged_manifest)
        got, got_text = _decode_all(staged_package, name, 16)
        agreement, worst = token_agreement(got, want)
        checks = [OutputCheck("token_agreement_worst", round(1 - worst, 6), round(1 - agreement, 6), True)]
        checks.extend(cast(Seq2SeqTask[Any], task_for(package)).decoded_text_checks(got_text, want_text))
        validation = Validation(
            metric="token_agreement",
            value=round(agreement, 6),
            threshold=options.budget,
            reference="fp32",
            samples=len(want),
            passed=agreement >= options.budget,
            outputs=tuple(checks),
            cases=("greedy decoding of held-out inputs, 16 new tokens",),
            host=current_host("cpu"),
        )
        variant = Variant(
            name=name,
            file=targets[0],
            precision=spec.precision,
            method=method,
            size_bytes=size,
            settings=settings,
            validation=validation,
            tool_versions=tool_versions(),
        )
        saved = package.save(package.manifest.with_variant(variant))
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    fp32_size = sum((package.path / f).stat().st_size for f in seq2seq_files(FP32_VARIANT))
    return QuantizeResult(
        package=saved,
        method=method,
        variant=variant,
        accuracy=None,
        latency=None,
        size_ratio=size / fp32_size,
        budget=options.budget,
        notes=(f"token agreement with fp32 {agreement:.1%} (worst input {worst:.1%})",),
        host=current_host("cpu"),
    )
