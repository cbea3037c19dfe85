"""`verify(package)`: re-measure each variant's held-out accuracy and latency on this machine, against what was
recorded where the variant was made.

int8 accuracy depends on the CPU's int8 kernel path (`toolkit.host`), so a variant validated on a VNNI
workstation can miss its budget on an AVX2 device. This is the check to run on the device itself: every
variant but fp32 (the reference) is compared with the fp32 model on CPU over the same held-out inputs and the
same metric that `edge quantize` used; its budget is the one recorded with it. With `update`, this host's
result is added to the variant in ``edge.json`` (one entry per int8 path and provider, newest kept).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from converters.accuracy import (
    AccuracyReport,
    compare_variant,
    held_out_feeds,
    latency_feeds,
    measure_latency,
    reference_outputs,
)
from toolkit.errors import BadInputError
from toolkit.host import current_host
from toolkit.manifest import FP32_VARIANT, Host, ModelPackage, Validation
from toolkit.providers import ProviderConfig
from toolkit.runner import Runner

__all__ = ["DEFAULT_BUDGET", "VariantCheck", "VerifyResult", "verify"]

DEFAULT_BUDGET = 0.99
"""The budget for a variant recorded without one (made by another tool, or before budgets were recorded)."""


@dataclass(frozen=True)
class VariantCheck:
    """One variant: what was recorded, what this host measures now, and its latency here against fp32."""

    variant: str
    recorded: Validation | None
    now: Validation
    accuracy: AccuracyReport
    budget: float
    fp32_ms: float
    variant_ms: float
    providers: tuple[str, ...]

    @property
    def meets_budget(self) -> bool:
        """Whether this host's measurement meets the variant's budget."""
        return self.now.passed

    @property
    def speedup(self) -> float:
        """fp32 latency over this variant's, both measured here."""
        return self.fp32_ms / self.variant_ms


@dataclass(frozen=True)
class VerifyResult:
    """Every checked variant, the host they were checked on, and whether ``edge.json`` was updated."""

    package: ModelPackage
    host: Host
    checks: tuple[VariantCheck, ...]
    updated: bool
    latency_runs: int

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
) -> VerifyResult:
    """Re-measure `variants` (default: all but fp32) on this machine (`config`: providers, CPU by default); with
    `update`, record the results in ``edge.json``."""
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
    feeds = held_out_feeds(pkg)
    reference = Runner(pkg.model_path(FP32_VARIANT), "cpu", threads=threads)
    wanted = reference_outputs(reference, feeds)
    timing_feeds = latency_feeds(pkg)
    checks: list[VariantCheck] = []
    manifest = pkg.manifest
    for variant in selected:
        runner = Runner(
            pkg.model_path(variant.name), threads=threads, config=config or ProviderConfig(providers=("cpu",))
        )
        report = compare_variant(pkg, runner, feeds, reference=wanted)
        budget = variant.validation.threshold if variant.validation else DEFAULT_BUDGET
        now = report.to_validation(budget, current_host(runner.providers[0]))
        latency = measure_latency(
            {FP32_VARIANT: reference, variant.name: runner}, timing_feeds, runs=latency_runs, threads=threads
        )
        checks.append(
            VariantCheck(
                variant=variant.name,
                recorded=variant.validation,
                now=now,
                accuracy=report,
                budget=budget,
                fp32_ms=latency.median_ms[FP32_VARIANT],
                variant_ms=latency.median_ms[variant.name],
                providers=runner.providers,
            )
        )
        manifest = manifest.with_variant(variant.with_verification(now))
    if update:
        pkg = pkg.save(manifest)
    return VerifyResult(pkg, current_host(checks[0].providers[0]), tuple(checks), update, latency_runs)
