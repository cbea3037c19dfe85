"""Quantization of encoder-decoder packages (Whisper, BART, T5, ...): every part of the package, measured by token
agreement with fp32 (and, for speech, the word error rate against fp32)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from converters.quantization.methods import METHODS, Progress, QuantizeOptions, QuantizeResult, Workspace
from toolkit.atomic import staging_directory
from toolkit.corpus import HELD_OUT_SENTENCES
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
from toolkit.tasks import pipeline_class
from toolkit.tasks.modality import synthetic_waveform

__all__ = ["SEQ2SEQ_METHODS", "quantize_seq2seq", "token_agreement", "word_error_rate"]

SEQ2SEQ_METHODS = ("dynamic-int8", "int4")


def word_error_rate(hypothesis: str, reference: str) -> float:
    """Word-level Levenshtein distance over the reference's word count (0.0 when both are empty)."""
    hyp, ref = hypothesis.split(), reference.split()
    if not ref:
        return 0.0 if not hyp else 1.0
    row = list(range(len(hyp) + 1))
    for i, word in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, other in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (word != other))
    return row[len(hyp)] / len(ref)


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
    """Greedy token ids and texts of the package's `variant` on held-out inputs (speech-like clips or sentences)."""
    runner = Runner(package.asset(package.manifest.variant(variant).file, "encoder file"), "cpu")
    pipeline: Any = pipeline_class(package)(package, runner)
    try:
        if package.manifest.task == "transcribe":
            rng = np.random.default_rng(1_000_003)
            clips = [0.1 * synthetic_waveform(16000 * (1 + i % 3), 16000, rng) for i in range(6)]
            language = "en" if "en" in pipeline.spec.languages else None
            results = pipeline.transcribe(
                clips, language=language, max_new_tokens=max_new_tokens, num_beams=1
            )
        else:
            results = pipeline.generate(
                list(HELD_OUT_SENTENCES[:8]), max_new_tokens=max_new_tokens, num_beams=1
            )
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
        if package.manifest.task == "transcribe":
            wer = float(np.mean([word_error_rate(g, w) for g, w in zip(got_text, want_text, strict=True)]))
            checks.append(OutputCheck("wer_vs_fp32", round(wer, 6), round(wer, 6), True))
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
