"""`verify(package)`: re-measure each variant's held-out accuracy and latency on this machine, against what was
recorded where the variant was made.

int8 accuracy depends on the CPU's int8 kernel path (`toolkit.host`), so a variant validated on a VNNI
workstation can miss its budget on an AVX2 device. This is the check to run on the device itself: every
variant but fp32 (the reference) is compared with the fp32 model on CPU over the same held-out inputs and the
same metric that `edge quantize` used; its budget is the one recorded with it. The held-out inputs are the
built-in samples, or with `held_out` the user's text as `edge quantize --held-out` cut it; a check whose
recorded figure was measured on other inputs says so (`VariantCheck.held_out_note`). With `update`, this host's
result is added to the variant in ``edge.json`` (one entry per int8 path and provider, newest kept).

With an `Emulation` (``edge verify --target linux-aarch64 --cpu cortex-a53``) the variants, and fp32 too, run
inside an emulated device (`converters.target`) while the fp32 reference is still computed natively here; the
host recorded is the emulated CPU as `toolkit.host` sees it there (its int8 path: ``arm-neon``,
``arm-dotprod``, ``arm-i8mm``). qemu executes the integer instructions exactly, so accuracy carries over to the
real device; time does not, so nothing is timed under emulation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from converters.accuracy import (
    USER_FILE_SOURCE,
    Candidate,
    RecordedOutputs,
    compare_variant,
    held_out_set,
    latency_feeds,
    measure_latency,
    reference_outputs,
)
from converters.target import Emulation, open_target, run_variants
from toolkit.errors import BadInputError
from toolkit.host import current_host
from toolkit.manifest import FP32_VARIANT, Host, ModelPackage, Validation, Variant
from toolkit.providers import ProviderConfig
from toolkit.runner import Runner
from toolkit.tasks.accuracy import AccuracyReport

__all__ = ["DEFAULT_BUDGET", "VariantCheck", "VerifyResult", "verify"]

DEFAULT_BUDGET = 0.99
"""The budget for a variant recorded without one (made by another tool, or before budgets were recorded)."""


@dataclass(frozen=True)
class VariantCheck:
    """One variant: what was recorded, what this host measures now, and its latency here against fp32 (None
    under emulation, where time means nothing); `held_out_note` when the recorded figure was measured on other
    held-out inputs than now."""

    variant: str
    recorded: Validation | None
    now: Validation
    accuracy: AccuracyReport
    budget: float
    fp32_ms: float | None
    variant_ms: float | None
    providers: tuple[str, ...]
    held_out_note: str | None = None

    @property
    def meets_budget(self) -> bool:
        """Whether this host's measurement meets the variant's budget."""
        return self.now.passed

    @property
    def speedup(self) -> float | None:
        """fp32 latency over this variant's, both measured here (None when not timed)."""
        if self.fp32_ms is None or self.variant_ms is None:
            return None
        return self.fp32_ms / self.variant_ms


@dataclass(frozen=True)
class VerifyResult:
    """Every checked variant, the host they were checked on, and whether ``edge.json`` was updated; under
    emulation, how that host's fp32 outputs differ from the native ones (max abs diff over every output)."""

    package: ModelPackage
    host: Host
    checks: tuple[VariantCheck, ...]
    updated: bool
    latency_runs: int
    emulation: Emulation | None = None
    fp32_max_abs_diff: float | None = None

    @property
    def failed(self) -> tuple[str, ...]:
        """The variants that miss their budget on this host."""
        return tuple(c.variant for c in self.checks if not c.meets_budget)


def verify(
    package: str | Path | ModelPackage,
    variants: Sequence[str] = (),
    config: ProviderConfig | None = None,
    *,
    update: bool = False,
    threads: int = 2,
    latency_runs: int = 10,
    emulation: Emulation | None = None,
    held_out: Path | None = None,
) -> VerifyResult:
    """Re-measure `variants` (default: all but fp32) on this machine (`config`: providers, CPU by default), or
    inside the emulated device `emulation`, on the built-in held-out samples or the user's text `held_out`;
    with `update`, record the results in ``edge.json``."""
    pkg = package if isinstance(package, ModelPackage) else ModelPackage.open(package)
    names = list(dict.fromkeys(variants)) or [n for n in pkg.manifest.variants if n != FP32_VARIANT]
    if FP32_VARIANT in names:
        raise BadInputError(
            "fp32 is the reference every variant is verified against; name a quantized variant instead"
        )
    if not names:
        raise BadInputError(
            f"package '{pkg.manifest.name}' has no variant besides fp32 to verify; create one with `edge quantize`"
        )
    if latency_runs < 1:
        raise BadInputError(f"--runs must be at least 1, got {latency_runs}")
    selected = [pkg.manifest.variant(name) for name in names]  # unknown names fail here, before any work
    target = (
        open_target(emulation.target, emulation.cache_dir) if emulation else None
    )  # not prepared: fail now
    measured_on = held_out_set(pkg, held_out)
    feeds = list(measured_on.feeds)
    reference = Runner(pkg.model_path(FP32_VARIANT), "cpu", threads=threads)
    wanted = reference_outputs(reference, feeds)
    if target is not None and emulation is not None:
        emulated = run_variants(target, emulation.cpu, pkg, [FP32_VARIANT, *names], feeds, threads)
        fp32_diff = max(
            float(np.abs(got[k].astype(np.float64) - want[k].astype(np.float64)).max())
            for got, want in zip(emulated.outputs[FP32_VARIANT], wanted, strict=True)
            for k in want
        )
        checks = [
            _check(
                pkg,
                variant,
                RecordedOutputs(feeds, emulated.outputs[variant.name]),
                feeds,
                wanted,
                emulated.host,
                measured_on.source,
            )
            for variant in selected
        ]
        checks = [replace(c, providers=emulated.providers) for c in checks]
        host, diff = emulated.host, fp32_diff
    else:
        timing_feeds = latency_feeds(pkg)
        checks = []
        for variant in selected:
            runner = Runner(
                pkg.model_path(variant.name),
                threads=threads,
                config=config or ProviderConfig(providers=("cpu",)),
            )
            check = _check(
                pkg, variant, runner, feeds, wanted, current_host(runner.providers[0]), measured_on.source
            )
            latency = measure_latency(
                {FP32_VARIANT: reference, variant.name: runner},
                timing_feeds,
                runs=latency_runs,
                threads=threads,
            )
            fp32_ms, variant_ms = latency.median_ms[FP32_VARIANT], latency.median_ms[variant.name]
            checks.append(replace(check, fp32_ms=fp32_ms, variant_ms=variant_ms, providers=runner.providers))
        host, diff = current_host(checks[0].providers[0]), None
    manifest = pkg.manifest
    for check in checks:
        manifest = manifest.with_variant(manifest.variant(check.variant).with_verification(check.now))
    if update:
        pkg = pkg.save(manifest)
    return VerifyResult(pkg, host, tuple(checks), update, latency_runs, emulation, diff)


def _check(
    pkg: ModelPackage,
    variant: Variant,
    candidate: Candidate,
    feeds: Sequence[Mapping[str, np.ndarray]],
    wanted: Sequence[Mapping[str, np.ndarray]],
    host: Host,
    held_out: str,
) -> VariantCheck:
    report = compare_variant(pkg, candidate, feeds, reference=wanted)
    budget = variant.validation.threshold if variant.validation else DEFAULT_BUDGET
    return VariantCheck(
        variant=variant.name,
        recorded=variant.validation,
        now=report.to_validation(budget, host, held_out),
        accuracy=report,
        budget=budget,
        fp32_ms=None,
        variant_ms=None,
        providers=(host.provider,),
        held_out_note=_held_out_note(variant.validation.held_out if variant.validation else None, held_out),
    )


def _held_out_note(recorded: str | None, now: str) -> str | None:
    """Which inputs the recorded figure and this one were measured on, when not the same (None when they are, or
    the package did not record them), and how to compare like with like."""
    if recorded is None or recorded == now:
        return None
    if not now.startswith(USER_FILE_SOURCE):
        fix = "pass --held-out with that file to compare like with like"
    elif not recorded.startswith(USER_FILE_SOURCE):
        fix = "drop --held-out to compare like with like"
    else:  # the same file too when quantize left out the lines a static variant calibrated on
        fix = "not the same inputs, so the figures may differ"
    return f"recorded on {recorded}, verified on {now}: {fix}"
