"""`auto`: try int8 candidates, measure each for accuracy and latency, keep the fastest within the budget.

Candidates: dynamic per-tensor, per-channel and per-channel with reduced-range (7-bit) weights, static QDQ,
8-bit blockwise weight-only on every MatMul, and families that protect the layers a per-layer sensitivity pass
finds most sensitive (left in fp32, or 8-bit blockwise), on top of full- or reduced-range weights. The
sensitivity pass runs the fp32 model on calibration inputs (never the held-out ones), simulates int8 on each
weight-bearing MatMul/Gemm alone (uint8 dynamic activations, int8 symmetric weights) and ranks layers by the
relative error of their output. Every candidate is validated on the same held-out inputs; latency is measured
with all candidates and fp32 interleaved in one process, so load on the machine hits them all alike.

Accuracy is measured on *this* host, and int8 accuracy depends on the host's int8 kernel path
(`toolkit.host`): full-range u8s8 kernels saturate on AVX2 and AVX-512BW without VNNI. A candidate is
*portable* when no kernel it uses can saturate (reduced-range weights, or no u8s8 integer GEMM at all), so its
accuracy holds on every CPU; `portable_only` keeps only those, for packages headed to unknown devices.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from converters.accuracy import (
    HeldOutSets,
    Latency,
    compare_variant,
    latency_feeds,
    measure_latency,
    reference_outputs,
)
from converters.quantization.calibration import load_calibration
from converters.quantization.methods import (
    METHODS,
    Candidate,
    Progress,
    QuantizeOptions,
    QuantizeResult,
    Workspace,
    install_variant,
)
from toolkit.atomic import staging_directory
from toolkit.errors import EdgeError
from toolkit.host import current_host
from toolkit.inspect import model_size, op_types
from toolkit.manifest import FP32_VARIANT, Host, ModelPackage, Variant, tool_versions, variant_file_name
from toolkit.runner import Runner
from toolkit.tasks import Family, family_of

__all__ = ["AUTO_VARIANT", "LayerSensitivity", "layer_sensitivity", "quantize_auto"]

log = logging.getLogger(__name__)

AUTO_VARIANT = "auto"
EXCLUDE_STEPS = (2, 4, 8)


@dataclass(frozen=True)
class _Family:
    """Candidates that protect the k most sensitive layers on top of one weight scheme.

    `protect` "fp32" leaves them unquantized; "8-bit blockwise" quantizes them weight-only with per-block
    activation scales (MatMulNBits), nearly free in size.
    """

    per_channel: bool
    reduce_range: bool
    protect: str

    def label(self, k: int) -> str:
        weights = ("per-channel" if self.per_channel else "per-tensor") + (
            " reduced-range" if self.reduce_range else ""
        )
        return f"int8 {weights}, {k} most sensitive {self.protect}"


FAMILIES = (
    _Family(True, False, "fp32"),
    _Family(True, False, "8-bit blockwise"),
    _Family(False, False, "8-bit blockwise"),
    _Family(True, True, "8-bit blockwise"),
    _Family(True, True, "fp32"),
)
# Integer ops whose CPU kernels multiply uint8 by full-range int8 (QuantizeLinear: QDQ pairs fuse into them).
U8S8_OPS = frozenset(
    {
        "MatMulInteger",
        "ConvInteger",
        "QLinearMatMul",
        "QLinearConv",
        "DynamicQuantizeMatMul",
        "QuantizeLinear",
        "DynamicQuantizeLinear",
    }
)
SENSITIVITY_SAMPLES = 8
LATENCY_TIE = 0.10
"""Candidates within this fraction of the fastest median count as equally fast: run-to-run noise on a
shared machine is of that order (edge bench flags a CV over 10% as noisy), so among them the smallest file
wins instead of the luckiest timing."""


@dataclass(frozen=True)
class LayerSensitivity:
    """One weight-bearing node and the relative output error int8 gives it alone (|y_q - y|^2 / |y|^2)."""

    node: str
    op_type: str
    error: float


def _fake_quant_activation(x: np.ndarray) -> np.ndarray:
    low, high = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = (high - low) / 255.0 or 1.0
    zero = np.clip(np.round(-low / scale), 0, 255)
    return (np.clip(np.round(x / scale) + zero, 0, 255) - zero) * scale


def _fake_quant_weight(w: np.ndarray, per_channel: bool) -> np.ndarray:
    peak = np.abs(w).max(axis=0, keepdims=True) if per_channel else np.abs(w).max()
    scale = np.where(peak > 0, peak / 127.0, 1.0)
    return np.clip(np.round(w / scale), -127, 127) * scale


def layer_sensitivity(
    model_path: Path, feeds: list[dict[str, np.ndarray]], per_channel: bool
) -> tuple[LayerSensitivity, ...]:
    """Rank MatMul/Gemm nodes with constant weights by the int8 error of their output, worst first."""
    model = onnx.load(str(model_path))
    weights = {t.name: t for t in model.graph.initializer}
    layers: list[tuple[onnx.NodeProto, np.ndarray]] = []
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2 or node.input[1] not in weights:
            continue
        w = numpy_helper.to_array(weights[node.input[1]]).astype(np.float64)
        if w.ndim != 2:
            continue
        if node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute):
            w = w.T
        layers.append((node, w))
    if not layers:
        return ()
    known = {o.name for o in model.graph.output}
    for name in dict.fromkeys(n.input[0] for n, _ in layers):
        if name not in known and name not in {i.name for i in model.graph.input}:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    probe = model_path.with_name("sensitivity.onnx")
    onnx.save(model, str(probe))
    runner = Runner(probe, "cpu")
    errors = {node.name: [0.0, 0.0] for node, _ in layers}
    for feed in feeds:
        outputs = dict(
            zip(
                [o.name for o in runner.session.get_outputs()],
                runner.session.run(None, dict(feed)),
                strict=True,
            )
        )
        values = {**outputs, **feed}
        for node, w in layers:
            x = np.asarray(values[node.input[0]], dtype=np.float64)
            exact = x @ w
            approx = _fake_quant_activation(x) @ _fake_quant_weight(w, per_channel)
            errors[node.name][0] += float(((approx - exact) ** 2).sum())
            errors[node.name][1] += float((exact**2).sum())
    del runner
    probe.unlink(missing_ok=True)
    ranked = [
        LayerSensitivity(node.name, node.op_type, errors[node.name][0] / max(errors[node.name][1], 1e-30))
        for node, _ in layers
    ]
    return tuple(sorted(ranked, key=lambda s: -s.error))


@dataclass(frozen=True)
class _Plan:
    name: str
    method: str
    options: QuantizeOptions


def _settings_row(candidate: Candidate) -> dict[str, Any]:
    acc = candidate.accuracy
    return {
        "name": candidate.name,
        "method": candidate.method,
        "score": round(acc.score, 6) if acc else None,
        "worst": round(acc.worst, 6) if acc else None,
        "latency_ms": candidate.latency_ms,
        "speedup": round(candidate.speedup, 3) if candidate.speedup else None,
        "size_bytes": candidate.size_bytes,
        "meets_budget": candidate.meets_budget,
        "over_size_cap": candidate.over_size_cap,
        "portable": candidate.portable,
        "excluded_nodes": list(candidate.settings.get("excluded_nodes", [])),
        "blockwise_int8_nodes": list(candidate.settings.get("blockwise_int8_nodes", [])),
        "error": candidate.error,
    }


def _pick(fitting: list[Candidate]) -> Candidate:
    """Of the candidates whose latency is within `LATENCY_TIE` of the fastest: a portable one if any (its accuracy
    holds on every CPU, at no cost in speed), then the smallest."""
    fastest = min(c.latency_ms or float("inf") for c in fitting)
    tied = [c for c in fitting if (c.latency_ms or float("inf")) <= fastest * (1 + LATENCY_TIE)]
    return min(tied, key=lambda c: (not c.portable, c.size_bytes, c.latency_ms or float("inf")))


def _fixed_plans(package: ModelPackage, options: QuantizeOptions, base: QuantizeOptions) -> list[_Plan]:
    """The candidates every model gets: dynamic int8 three ways, static QDQ, 8-bit blockwise on every MatMul, and
    for a generator weight-only int4."""
    plans = [
        _Plan("int8 per-tensor", "dynamic-int8", replace(base, per_channel=False)),
        _Plan("int8 per-channel", "dynamic-int8", replace(base, per_channel=True)),
        _Plan(
            "int8 per-channel reduced-range",
            "dynamic-int8",
            replace(base, per_channel=True, reduce_range=True),
        ),
        _Plan("int8 static QDQ", "static-int8", replace(base, per_channel=True)),
        _Plan(
            "8-bit blockwise, every MatMul",
            "dynamic-int8",
            # Only embeddings besides: whatever the blockwise pass left (Gemm, Conv) would be u8s8, not portable.
            replace(base, blockwise=(*(options.blockwise or ()), "MatMul"), op_types=("Gather",)),
        ),
    ]
    if family_of(package) is Family.GENERATOR:  # weight-only int4 is the LM candidate
        plans.append(_Plan("int4 block 32", "int4", replace(base, block_size=32)))
    return plans


class _Trials:
    """Builds and scores candidates on the same held-out inputs against fp32's outputs computed once; keeps the
    files of those `portable_only` allows in `staged`, for timing."""

    def __init__(self, ws: Workspace, options: QuantizeOptions, reference: Runner) -> None:
        self.ws = ws
        self.options = options
        # a static candidate calibrates on the user's calibration text: held-out inputs leave it out
        calibration = load_calibration(ws.package, options.calibration) if options.calibration.data else None
        self.held_out_set = ws.held_out.excluding(calibration.texts if calibration else ())
        self.held_out = self.held_out_set.feeds
        self.wanted = reference_outputs(reference, self.held_out)
        self.size_cap = model_size(ws.source) * options.max_size if options.max_size else float("inf")
        self.staged: dict[str, Path] = {}
        self.candidates: list[Candidate] = []

    def attempt(self, plan: _Plan) -> Candidate:
        """Build `plan`'s file, score it, and record the candidate (a failed build is a candidate with its error)."""
        out = self.ws.folder / f"candidate-{len(self.candidates)}.onnx"
        self.ws.say(f"candidate {plan.name}")
        candidate = self._score(plan, out)
        self.candidates.append(candidate)
        return candidate

    def _score(self, plan: _Plan, out: Path) -> Candidate:
        options = self.options
        try:
            settings = METHODS[plan.method].build(self.ws, plan.options, out)
            settings.pop("_calibration_texts", None)
            report = compare_variant(
                self.ws.package, Runner(out, "cpu", threads=options.threads), self.held_out, self.wanted
            )
        except EdgeError as exc:
            log.info("candidate %s failed: %s", plan.name, exc)
            return Candidate(plan.name, plan.method, {}, None, None, None, 0, False, str(exc))
        size = out.stat().st_size
        over_cap = size > self.size_cap
        portable = plan.options.reduce_range or not (op_types(out) & U8S8_OPS)
        allowed = portable or not options.portable_only
        if allowed:
            self.staged[plan.name] = out
        return Candidate(
            plan.name,
            plan.method,
            {**settings, "portable": portable},
            report,
            None,
            None,
            size,
            report.meets(options.budget) and not over_cap and allowed,
            over_size_cap=over_cap,
            portable=portable,
        )


def _try_protected_layers(trials: _Trials, options: QuantizeOptions, base: QuantizeOptions) -> None:
    """For each of `FAMILIES`, protect the 1, 2, 4, ... most sensitive layers until a candidate meets the budget
    (or passes the size cap)."""
    ws = trials.ws
    calibration = load_calibration(ws.package, options.calibration).feeds[:SENSITIVITY_SAMPLES]
    ranked: dict[bool, tuple[LayerSensitivity, ...]] = {}
    for family in FAMILIES:
        if options.portable_only and not family.reduce_range:
            continue  # full-range int8 layers remain: never portable
        if family.per_channel not in ranked:
            ws.say(f"per-layer sensitivity ({'per-channel' if family.per_channel else 'per-tensor'})")
            ranked[family.per_channel] = layer_sensitivity(
                ws.preprocessed(), list(calibration), family.per_channel
            )
            for line in ranked[family.per_channel][:5]:
                log.info("most sensitive: %s %s (error %.3g)", line.op_type, line.node, line.error)
        layers = ranked[family.per_channel]
        for k in EXCLUDE_STEPS:
            if k >= len(layers):
                break
            nodes = tuple(s.node for s in layers[:k])
            scheme = replace(base, per_channel=family.per_channel, reduce_range=family.reduce_range)
            if family.protect == "fp32":
                plan_options = replace(scheme, exclude=(*options.exclude, *nodes))
            else:
                plan_options = replace(scheme, blockwise=(*(options.blockwise or ()), *nodes))
            candidate = trials.attempt(_Plan(family.label(k), "dynamic-int8", plan_options))
            # Protecting more layers only grows the file, so past the size cap there is nothing to gain.
            if candidate.meets_budget or candidate.over_size_cap:
                break


def _timed(
    trials: _Trials, reference: Runner, feeds: dict[str, np.ndarray], names: list[str], runs: int
) -> tuple[Latency, list[Candidate]]:
    """`names` timed interleaved with fp32 on `feeds`; the candidates so named carry the new figures."""
    measured = measure_latency(
        {FP32_VARIANT: reference, **{n: trials.staged[n] for n in names}},
        feeds,
        runs=runs,
        threads=trials.options.threads,
    )
    return measured, [
        replace(c, latency_ms=measured.median_ms[c.name], speedup=measured.speedup(c.name))
        if c.name in names
        else c
        for c in trials.candidates
    ]


def _time_candidates(
    trials: _Trials, reference: Runner
) -> tuple[Latency, list[Candidate], list[Candidate], tuple[str, ...]]:
    """Time every staged candidate against fp32, then the ones within budget again head to head: (the latency,
    every candidate with its figures, those within budget, notes for the user)."""
    runs = max(trials.options.latency_runs, 30)
    feeds = latency_feeds(trials.ws.package)
    trials.ws.say(f"timing {len(trials.staged)} candidates against fp32")
    latency, candidates = _timed(trials, reference, feeds, list(trials.staged), runs)
    fitting = [c for c in candidates if c.meets_budget]
    notes: tuple[str, ...] = ()
    if len(fitting) > 1:
        # The pick rests on the finalists' timings alone: time them again head to head, twice as long,
        # so one noisy round in a field of ten does not decide it.
        trials.ws.say(f"timing the {len(fitting)} candidates within budget head to head")
        latency, candidates = _timed(trials, reference, feeds, [c.name for c in fitting], 2 * runs)
        fitting = [c for c in candidates if c.meets_budget]
        notes = (
            f"the {len(fitting)} candidates within budget were timed again head to head ({latency.runs} runs); "
            f"within {LATENCY_TIE:.0%} of the fastest of them, a portable one wins, then the smallest file",
        )
    return latency, candidates, fitting, notes


def _auto_variant(
    name: str,
    file: str,
    winner: Candidate,
    candidates: list[Candidate],
    latency: Latency,
    options: QuantizeOptions,
    host: Host,
    held_out: str,
) -> Variant:
    """The manifest entry of the kept candidate, its settings recording how `auto` chose it among the rest, and
    its accuracy with where the `held_out` inputs came from."""
    assert winner.accuracy is not None
    budget = options.budget
    settings = {
        **winner.settings,
        "picked": winner.name,
        "budget": budget,
        "max_size": options.max_size,
        "budget_rule": f"mean >= {budget}, worst sample >= {1 - 2 * (1 - budget):.4g}",
        "portable_only": options.portable_only,
        "measured_on": dataclasses.asdict(host),
        "latency_ms": {
            FP32_VARIANT: latency.median_ms[FP32_VARIANT],
            name: winner.latency_ms,
            "threads": latency.threads,
            "inputs": latency.shape,
        },
        "candidates": [_settings_row(c) for c in candidates],
    }
    return Variant(
        name=name,
        file=file,
        precision=METHODS[winner.method].precision,
        method=winner.method,
        size_bytes=winner.size_bytes,
        settings=settings,
        validation=winner.accuracy.to_validation(budget, held_out=held_out),
        tool_versions=tool_versions(),
    )


def quantize_auto(
    package: ModelPackage, source: Path, options: QuantizeOptions, say: Progress, held_out: HeldOutSets
) -> QuantizeResult:
    """Try the candidates, each measured on `held_out`; of those meeting `options.budget`, keep the one `_pick`
    chooses as variant `auto` (or `options.name`)."""
    name = options.name or AUTO_VARIANT
    target = package.path / variant_file_name(name)
    budget = options.budget
    host = current_host("cpu")
    with staging_directory(target) as folder:
        ws = Workspace(package, source, folder, say, held_out)
        reference = Runner(source, "cpu", threads=options.threads)
        trials = _Trials(ws, options, reference)
        # candidates say which layers go blockwise: none unless given (not the task's int8 default)
        base = replace(options, exclude=options.exclude, blockwise=options.blockwise or ())
        for plan in _fixed_plans(package, options, base):
            trials.attempt(plan)
        _try_protected_layers(trials, options, base)
        latency, candidates, fitting, notes = _time_candidates(trials, reference)
        if not fitting:
            return QuantizeResult(
                package, "auto", None, None, latency, None, budget, tuple(candidates), notes, host
            )
        winner = _pick(fitting)
        variant = _auto_variant(
            name, target.name, winner, candidates, latency, options, host, trials.held_out_set.source
        )
        package = install_variant(package, trials.staged[winner.name], variant)
        variant = package.manifest.variant(variant.name)  # its size counts external data it was given
    return QuantizeResult(
        package=package,
        method="auto",
        variant=variant,
        accuracy=winner.accuracy,
        latency=replace(
            latency,
            median_ms={FP32_VARIANT: latency.median_ms[FP32_VARIANT], name: latency.median_ms[winner.name]},
        ),
        size_ratio=winner.size_bytes / model_size(source),
        budget=budget,
        candidates=tuple(candidates),
        notes=notes,
        host=host,
    )
