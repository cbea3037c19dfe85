"""`quantize(package, method, options)`: the options checked once, then the package's family and the method
choose who quantizes: an encoder-decoder's every part (`seq2seq.py`), `auto`'s candidates (`auto.py`), or one
of `METHODS` (`methods.py`)."""

from __future__ import annotations

import logging
from pathlib import Path

from converters.accuracy import HeldOutSets
from converters.quantization.auto import quantize_auto
from converters.quantization.methods import (
    METHODS,
    Progress,
    QuantizeOptions,
    QuantizeResult,
    check_budget,
    open_package,
    quantize_with,
)
from converters.quantization.seq2seq import quantize_seq2seq
from toolkit.errors import BadInputError
from toolkit.manifest import FP32_VARIANT, ModelPackage
from toolkit.tasks import Family, family_of

__all__ = ["quantize"]

log = logging.getLogger(__name__)


def _check_options(method: str, options: QuantizeOptions) -> None:
    """Options that do not fit `method`, or are out of range, are errors naming the fix."""
    check_budget(options.budget)
    if options.max_size is not None and method != "auto":
        raise BadInputError(f"--max-size applies to --method auto only, not {method}; drop it or use auto")
    if options.portable_only and method != "auto":
        raise BadInputError(
            f"--portable applies to --method auto only, not {method}; for dynamic-int8 pass --reduce-range"
        )
    if options.max_size is not None and not (0.0 < options.max_size <= 1.0):
        raise BadInputError(
            f"--max-size must be a fraction of the fp32 file size in (0, 1] (0.3 = 30%), got {options.max_size}"
        )
    if options.threads < 1:
        raise BadInputError(f"--threads must be at least 1, got {options.threads}")
    if method != "auto" and method not in METHODS:
        raise BadInputError(f"unknown method '{method}'; use one of {', '.join([*METHODS, 'auto'])}")


def quantize(
    package: str | Path | ModelPackage,
    method: str = "dynamic-int8",
    options: QuantizeOptions | None = None,
    progress: Progress | None = None,
) -> QuantizeResult:
    """Quantize the package's fp32 model with `method`, validate and time it against fp32, and record the variant."""
    options = options or QuantizeOptions()
    say = progress or (lambda message: log.info(message))
    _check_options(method, options)
    pkg = open_package(package)
    held_out = HeldOutSets(pkg, options.held_out)
    if options.held_out is not None:
        held_out.excluding()  # a bad file fails now, not after the quantizer ran
    if family_of(pkg) is Family.ENCODER_DECODER:  # encoder + decoders, measured by token agreement
        return quantize_seq2seq(pkg, method, options, say)
    if method == "auto":
        return quantize_auto(pkg, pkg.model_path(FP32_VARIANT), options, say, held_out)
    return quantize_with(pkg, method, options, say, held_out)
