"""`plan_bench` checks a benchmark request cheaply; `run_bench` measures every cell of it.

A cell is one variant on one execution provider at one batch size, sequence length and concurrency.
Each (variant, provider) gets a fresh session; the sweep's shapes run on it in order. What is timed is
``InferenceSession.run`` on feeds checked once by `Runner.check_feeds` beforehand, so the numbers are the
model's, not the Python checks'.
"""

from __future__ import annotations

import dataclasses
import datetime
import gc
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from toolkit.bench.environment import Environment, collect_environment
from toolkit.bench.inputs import (
    DEFAULT_SEQUENCE,
    BenchInput,
    InputSource,
    has_sequence_axis,
    load_npz,
    max_sequence_length,
    npz_feeds,
    synthetic_feeds,
    text_feeds,
    vocab_size_of,
)
from toolkit.bench.measure import (
    LatencyStats,
    MemoryReading,
    MemoryTracker,
    TimingPlan,
    latency_stats,
    memory_method,
    time_calls,
    time_concurrent,
    timed,
)
from toolkit.errors import BadInputError, EdgeError
from toolkit.manifest import FP32_VARIANT, AudioPreprocessing, ModelPackage, TextPreprocessing, Validation
from toolkit.providers import ProviderConfig, provider_names, resolve_providers
from toolkit.runner import Runner, build_session_options

__all__ = [
    "BASELINE_PROVIDER",
    "REPORT_FORMAT",
    "Accuracy",
    "Baseline",
    "BaselineLoader",
    "BenchCell",
    "BenchOptions",
    "BenchPlan",
    "BenchReport",
    "BenchSettings",
    "ProgressCallback",
    "plan_bench",
    "provider_chain",
    "run_bench",
]

log = logging.getLogger(__name__)

REPORT_FORMAT = "edge-bench/1"
BASELINE_PROVIDER = "torch"

ProgressCallback = Callable[[str, int, int], None]
"""Called as (description of the cell starting, cells done, cells in all)."""

BASELINES = ("torch",)


class Baseline(Protocol):
    """The package's original model, timed beside its variants (``converters.baseline.TorchBaseline``)."""

    @property
    def load_ms(self) -> float:
        """How long loading it took."""
        ...

    @property
    def threads(self) -> int:
        """The intra-op threads it runs with."""
        ...

    def caller(self, feeds: Mapping[str, np.ndarray]) -> Callable[[], Any]:
        """A zero-argument call running the model on `feeds`."""
        ...


BaselineLoader = Callable[[ModelPackage, int | None], Baseline]
"""Loads a package's baseline with that many threads (None: its default); ``edge bench`` passes
``converters.baseline.load_torch_baseline``, so toolkit itself never imports torch or converters."""


@dataclass(frozen=True)
class Accuracy:
    """A variant's validation from ``edge.json``: metric and value against its reference."""

    metric: str
    value: float
    threshold: float
    reference: str
    passed: bool

    def describe(self) -> str:
        """``cosine 0.9991 vs fp32`` (with FAIL when it did not pass)."""
        return f"{self.metric} {self.value:.4g} vs {self.reference}" + ("" if self.passed else " FAIL")


@dataclass(frozen=True)
class BenchCell:
    """One measured cell. Latency in ms; throughput in items (batch rows) per second; memory in MiB."""

    variant: str
    precision: str
    requested_provider: str
    provider: str
    providers: tuple[str, ...]
    batch: int
    seq: int | None
    concurrency: int
    inputs: str
    latency: LatencyStats
    throughput: float
    session_ms: float
    first_run_ms: float
    memory: MemoryReading | None
    size_bytes: int | None
    accuracy: Accuracy | None
    speedup: float | None = None
    vs_fp32: float | None = None
    placement: tuple[tuple[str, int], ...] = ()
    engine_cache: str | None = None  # TensorRT only: "built" (build time is in first_run_ms) or "reused"

    @property
    def key(self) -> tuple[str, str, int, int | None, int]:
        """What identifies the cell across runs: variant, provider that ran, batch, seq, concurrency."""
        return (self.variant, self.provider, self.batch, self.seq, self.concurrency)


@dataclass(frozen=True)
class BenchSettings:
    """How the numbers were taken, printed above the table and saved with them."""

    warmup: str
    measure: str
    threads: int | None
    graph_optimization: str
    inputs: str
    timing: str
    cold_start: str
    memory: str
    baseline: str | None


@dataclass(frozen=True)
class BenchReport:
    """A whole benchmark run: where, how, and every cell; `notes` holds fallbacks and skipped cells."""

    model: str
    task: str | None
    created: str
    environment: Environment
    settings: BenchSettings
    cells: tuple[BenchCell, ...]
    notes: tuple[str, ...] = ()
    format: str = REPORT_FORMAT


@dataclass(frozen=True)
class BenchOptions:
    """What to benchmark. None means the default: every variant, the model's default sequence length."""

    variants: tuple[str, ...] | None = None
    providers: str | Sequence[str] = "cpu"
    batches: tuple[int, ...] = (1,)
    seqs: tuple[int, ...] | None = None
    concurrency: tuple[int, ...] = (1,)
    timing: TimingPlan = dataclasses.field(default_factory=TimingPlan)
    threads: int | None = None
    graph_optimization: str = "all"
    text_file: Path | None = None
    npz_file: Path | None = None
    baseline: str | None = None
    seed: int = 0
    provider_config: ProviderConfig | None = None
    """CUDA / TensorRT options and IO binding; the providers themselves come from `providers`, one per row."""


@dataclass(frozen=True)
class _VariantFile:
    name: str
    path: Path
    precision: str
    size_bytes: int | None
    accuracy: Accuracy | None


@dataclass(frozen=True)
class BenchPlan:
    """A checked request: the files, providers, shapes and inputs `run_bench` will measure."""

    target: Path
    package: ModelPackage | None
    variants: tuple[_VariantFile, ...]
    providers: tuple[str, ...]
    shapes: tuple[tuple[int, int | None], ...]
    concurrency: tuple[int, ...]
    source: InputSource
    options: BenchOptions
    texts: tuple[str, ...] | None = None
    npz: Mapping[str, np.ndarray] | None = dataclasses.field(default=None, repr=False)

    @property
    def cell_count(self) -> int:
        """Cells to measure, baseline included (an upper bound: duplicate fallbacks are skipped)."""
        per_session = len(self.shapes) * len(self.concurrency)
        baseline = per_session if self.options.baseline else 0
        return len(self.variants) * len(self.providers) * per_session + baseline


def provider_chain(provider: str) -> tuple[str, ...]:
    """The providers a session for `provider` asks for: it, then what ORT needs behind it, then cpu."""
    if provider == "cpu":
        return ("cpu",)
    if provider == "tensorrt":
        return ("tensorrt", "cuda", "cpu")
    return (provider, "cpu")


def _accuracy(validation: Validation | None) -> Accuracy | None:
    if validation is None:
        return None
    return Accuracy(
        validation.metric, validation.value, validation.threshold, validation.reference, validation.passed
    )


def _file_size(path: Path) -> int:
    from toolkit.inspect import model_size  # reads no graph, but toolkit.inspect imports onnx

    return model_size(path)


def _positive(values: Sequence[int], option: str) -> tuple[int, ...]:
    if not values:
        raise BadInputError(f"{option} needs at least one value, e.g. {option} 1,8")
    for value in values:
        if value < 1:
            raise BadInputError(f"{option} values must be at least 1, got {value}; e.g. {option} 1,8,32")
    return tuple(dict.fromkeys(values))


def plan_bench(target: str | Path, options: BenchOptions) -> BenchPlan:
    """Check every option against the model before anything slow runs; each problem is a one-line BadInputError."""
    path = Path(target)
    providers = tuple(spec.short for spec in resolve_providers(provider_names(options.providers)))
    batches = _positive(options.batches, "--batch")
    concurrency = _positive(options.concurrency, "--concurrency")
    build_session_options(graph_optimization=options.graph_optimization)  # an unknown level fails here, first
    if options.baseline is not None and options.baseline not in BASELINES:
        raise BadInputError(f"unknown baseline '{options.baseline}'; use one of: {', '.join(BASELINES)}")
    if options.text_file is not None and options.npz_file is not None:
        raise BadInputError("pass --text or --npz, not both")
    if not path.exists():
        raise BadInputError(f"model '{path}' does not exist; pass a model package directory or an .onnx file")

    package: ModelPackage | None = None
    if path.is_dir():
        package = ModelPackage.open(path)
        manifest = package.manifest
        names = options.variants or tuple(manifest.variants)
        variants = []
        for name in names:
            variant = manifest.variant(name)
            file = package.model_path(name)
            variants.append(
                _VariantFile(name, file, variant.precision, _file_size(file), _accuracy(variant.validation))
            )
        text = manifest.section(TextPreprocessing)
        max_length = text.max_length if text is not None else None
        source = InputSource(manifest.inputs, path, manifest, vocab_size_of(path, manifest), max_length)
        if options.baseline is not None and not manifest.source.ref:
            raise BadInputError("the package's manifest names no source to load for --baseline torch")
    else:
        if options.variants:
            raise BadInputError("--variant needs a model package directory; an .onnx file has one model")
        if options.baseline is not None:
            raise BadInputError("--baseline needs a model package directory (its edge.json names the source)")
        specs = Runner(path, "cpu").inputs
        variants = [_VariantFile(path.stem, path, "unknown", _file_size(path), None)]
        source = InputSource(specs, path.parent, None, vocab_size_of(path.parent, None), None)

    sequence = has_sequence_axis(source.specs)
    audio = _audio_preprocessing(package)
    seqs: tuple[int | None, ...]
    if options.seqs is not None:
        seqs = _positive(options.seqs, "--seq")
        if not sequence:
            raise BadInputError(
                f"--seq was given but '{path.name}' has no sequence axis "
                f"(inputs: {', '.join(f'{s.name} {s.describe()}' for s in source.specs)}); drop --seq"
            )
        if options.npz_file is not None:
            raise BadInputError(
                "--seq cannot resize --npz inputs; save arrays of the length you want to time"
            )
        longest = None if audio is not None else max_sequence_length(source)  # a waveform has no cap
        too_long = [s for s in seqs if longest is not None and s > longest]
        if too_long:
            raise BadInputError(
                f"--seq {too_long[0]} is beyond the model's maximum sequence length {longest}; use --seq {longest} or less"
            )
    elif sequence and options.text_file is None and options.npz_file is None and audio is not None:
        seqs = (audio.sampling_rate,)  # one second of audio, not 128 samples (8 ms at 16 kHz)
    elif sequence and options.text_file is None and options.npz_file is None:
        longest = max_sequence_length(source)
        seqs = (min(DEFAULT_SEQUENCE, longest) if longest else DEFAULT_SEQUENCE,)
    else:
        seqs = (None,)

    texts = None
    npz = None
    if options.text_file is not None:
        from toolkit.bench.inputs import load_texts

        texts = tuple(load_texts(options.text_file))
        if package is None or package.manifest.section(TextPreprocessing) is None:
            raise BadInputError(
                "--text needs a model package with a tokenizer; use --npz FILE for this model"
            )
    if options.npz_file is not None:
        npz = load_npz(options.npz_file)
    plan = BenchPlan(
        target=path,
        package=package,
        variants=tuple(variants),
        providers=providers,
        shapes=tuple((b, s) for b in batches for s in seqs),
        concurrency=concurrency,
        source=source,
        options=options,
        texts=texts,
        npz=npz,
    )
    _make_input(plan, batches[0], seqs[0])  # fail now, not after the first session, on unsynthesisable inputs
    return plan


def _audio_preprocessing(package: ModelPackage | None) -> AudioPreprocessing | None:
    return package.manifest.section(AudioPreprocessing) if package is not None else None


def _make_input(plan: BenchPlan, batch: int, seq: int | None) -> BenchInput:
    if plan.texts is not None:
        return text_feeds(plan.source, plan.texts, batch, seq)
    if plan.npz is not None:
        return npz_feeds(plan.source, plan.npz, batch)
    return synthetic_feeds(plan.source, batch, seq, plan.options.seed)


def _session_call(runner: Runner, names: list[str], feeds: dict[str, np.ndarray]) -> Callable[[], Any]:
    """The timed call: the bare session run, or with IO binding a device-resident run (outputs stay put)."""
    if runner.config.io_binding:
        return lambda: runner.run_on_device(feeds, names)
    session = runner.session
    return lambda: session.run(names, feeds)


def _throughput(batch: int, stats: LatencyStats, samples: int, wall_s: float | None) -> float:
    if wall_s:
        return batch * samples / wall_s
    return batch * 1e3 / stats.mean_ms if stats.mean_ms > 0 else 0.0


def _measure_shape(
    call: Callable[[], Any],
    bench_input: BenchInput,
    plan: BenchPlan,
    tracker: MemoryTracker,
    base_mb: float,
    make_cell: Callable[..., BenchCell],
    progress: ProgressCallback,
    label: str,
    done: list[int],
) -> list[BenchCell]:
    cells = []
    first_ms = 0.0
    for index, threads in enumerate(plan.concurrency):
        progress(
            f"{label} batch {bench_input.batch}"
            + (f" seq {bench_input.seq}" if bench_input.seq else "")
            + (f" x{threads} threads" if threads > 1 else ""),
            done[0],
            plan.cell_count,
        )
        with tracker.peak(base_mb) as reading:
            if index == 0:
                first_ms = timed(call)
            if threads == 1:
                samples = time_calls(call, plan.options.timing)
                wall = None
            else:
                samples, wall = time_concurrent(call, threads, plan.options.timing)
        stats = latency_stats(samples)
        cells.append(
            make_cell(
                batch=bench_input.batch,
                seq=bench_input.seq,
                concurrency=threads,
                inputs=bench_input.kind,
                latency=stats,
                throughput=_throughput(bench_input.batch, stats, len(samples), wall),
                first_run_ms=first_ms,
                memory=reading[0] if reading else None,
            )
        )
        done[0] += 1
    return cells


def run_bench(
    plan: BenchPlan,
    progress: ProgressCallback | None = None,
    baseline_loader: BaselineLoader | None = None,
) -> BenchReport:
    """Measure every cell of `plan` in this process and return the report (nothing is printed); a baseline the
    options ask for is loaded with `baseline_loader`."""
    report_progress: ProgressCallback = progress or (lambda _label, _done, _total: None)
    options = plan.options
    tracker = MemoryTracker()
    cells: list[BenchCell] = []
    notes: list[str] = []
    done = [0]
    measured: dict[str, str] = {}
    for variant in plan.variants:
        for requested in plan.providers:
            label = f"{variant.name} on {requested}"
            report_progress(f"{label}: creating session", done[0], plan.cell_count)
            base_mb = tracker.base()
            started = time.perf_counter()
            runner = Runner(
                variant.path,
                provider_chain(requested),
                threads=options.threads,
                graph_optimization=options.graph_optimization,
                config=options.provider_config,
            )
            session_ms = (time.perf_counter() - started) * 1e3
            ran = runner.providers
            for fallback in runner.fallbacks:
                notes.append(
                    f"{variant.name}: {fallback.provider} requested, unavailable ({fallback.reason}); ran on {ran[0]}"
                )
            chain = ",".join(ran)
            if chain in measured.get(variant.name, "").split("|"):
                notes.append(
                    f"{variant.name} on {requested} ran as {ran[0]}, already measured; not timed twice"
                )
                done[0] += len(plan.shapes) * len(plan.concurrency)
                del runner
                gc.collect()
                continue
            measured[variant.name] = measured.get(variant.name, "") + "|" + chain
            make_cell = _cell_factory(
                variant.name,
                variant.precision,
                requested,
                ran,
                session_ms,
                variant.size_bytes,
                variant.accuracy,
            )
            session_cells = _measure_session(
                runner, plan, tracker, base_mb, make_cell, report_progress, label, done
            )
            cells.extend(session_cells)
            notes.extend(_startup_notes(variant.name, requested, runner, session_cells))
            del runner  # the session's memory goes before the next one's base is read
            gc.collect()
    torch_threads = None
    if options.baseline == "torch" and plan.package is not None:
        if baseline_loader is None:
            raise BadInputError(
                "--baseline torch needs its loader: pass baseline_loader=converters.baseline.load_torch_baseline"
            )
        report_progress("pytorch baseline: loading the source model", done[0], plan.cell_count)
        base_mb = tracker.base()
        try:
            baseline = baseline_loader(plan.package, options.threads)
        except EdgeError as exc:
            notes.append(f"baseline torch skipped: {exc}")
            log.warning("baseline torch skipped: %s", exc)
        else:
            torch_threads = baseline.threads
            cells.extend(_measure_baseline(baseline, plan, tracker, base_mb, report_progress, done))
            del baseline
            gc.collect()
    audio = _audio_preprocessing(plan.package)
    if audio is not None:
        seconds = ", ".join(
            f"{seq} = {seq / audio.sampling_rate:g} s" for seq in sorted({s for _, s in plan.shapes if s})
        )
        notes.append(f"seq counts audio samples at {audio.sampling_rate} Hz: {seconds}")
    cells = _with_speedups(cells)
    report_progress("done", plan.cell_count, plan.cell_count)
    manifest = plan.package.manifest if plan.package is not None else None
    return BenchReport(
        model=str(plan.target),
        task=manifest.task if manifest is not None else None,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        environment=collect_environment(options.threads, options.graph_optimization, torch_threads),
        settings=_settings(plan),
        cells=tuple(cells),
        notes=tuple(notes),
    )


def _measure_session(
    runner: Runner,
    plan: BenchPlan,
    tracker: MemoryTracker,
    base_mb: float,
    make_cell: Callable[..., BenchCell],
    progress: ProgressCallback,
    label: str,
    done: list[int],
) -> list[BenchCell]:
    names = [o.name for o in runner.outputs]
    cells: list[BenchCell] = []
    for batch, seq in plan.shapes:
        bench_input = _make_input(plan, batch, seq)
        feeds = runner.check_feeds(bench_input.feeds)
        call = _session_call(runner, names, feeds)
        shape_cells = _measure_shape(
            call, bench_input, plan, tracker, base_mb, make_cell, progress, label, done
        )
        # After the first run: TensorRT has built (or loaded) its engine and placed the graph by now.
        placement = tuple(runner.node_placement(feeds).items())
        cells.extend(
            dataclasses.replace(cell, placement=placement, engine_cache=runner.startup.engine_cache)
            for cell in shape_cells
        )
    return cells


def _startup_notes(variant: str, requested: str, runner: Runner, cells: Sequence[BenchCell]) -> list[str]:
    """TensorRT's engine build (or cache reuse) and a graph split across providers, said apart from latency."""
    notes = []
    startup = runner.startup
    if startup.engine_cache == "built" and cells:
        build_s = (cells[0].session_ms + cells[0].first_run_ms) / 1e3
        notes.append(
            f"{variant} on {requested}: TensorRT built its engine in {build_s:.1f} s (session + first run), "
            f"not counted in latency; cached in {startup.cache_dir} for the next session"
        )
    elif startup.engine_cache == "reused" and cells:
        notes.append(
            f"{variant} on {requested}: TensorRT engine reused from {startup.cache_dir}; "
            f"session ready in {cells[0].session_ms / 1e3:.2f} s"
        )
    split = {cell.placement for cell in cells if len(cell.placement) > 1}
    for placement in sorted(split):
        nodes = ", ".join(f"{name} {count}" for name, count in placement)
        notes.append(f"{variant} on {requested}: graph split across providers ({nodes} nodes)")
    return notes


def _cell_factory(
    variant: str,
    precision: str,
    requested: str,
    ran: tuple[str, ...],
    session_ms: float,
    size_bytes: int | None,
    accuracy: Accuracy | None,
) -> Callable[..., BenchCell]:
    def make(**fields: Any) -> BenchCell:
        return BenchCell(
            variant=variant,
            precision=precision,
            requested_provider=requested,
            provider=ran[0],
            providers=ran,
            session_ms=session_ms,
            size_bytes=size_bytes,
            accuracy=accuracy,
            **fields,
        )

    return make


def _measure_baseline(
    baseline: Baseline,
    plan: BenchPlan,
    tracker: MemoryTracker,
    base_mb: float,
    progress: ProgressCallback,
    done: list[int],
) -> list[BenchCell]:
    cells = []
    make_cell = _cell_factory(
        "pytorch", "fp32", BASELINE_PROVIDER, (BASELINE_PROVIDER,), baseline.load_ms, None, None
    )
    for batch, seq in plan.shapes:
        bench_input = _make_input(plan, batch, seq)
        call = baseline.caller(bench_input.feeds)
        cells.extend(
            _measure_shape(call, bench_input, plan, tracker, base_mb, make_cell, progress, "pytorch", done)
        )
    return cells


def _with_speedups(cells: list[BenchCell]) -> list[BenchCell]:
    """Fill `speedup` (baseline p50 / p50 at the same shape) and `vs_fp32` (fp32 p50 / p50, same provider)."""
    torch_p50 = {
        (c.batch, c.seq, c.concurrency): c.latency.p50_ms for c in cells if c.provider == BASELINE_PROVIDER
    }
    fp32_p50 = {
        (c.provider, c.batch, c.seq, c.concurrency): c.latency.p50_ms
        for c in cells
        if c.variant == FP32_VARIANT and c.provider != BASELINE_PROVIDER
    }
    result = []
    for cell in cells:
        shape = (cell.batch, cell.seq, cell.concurrency)
        p50 = cell.latency.p50_ms
        speedup = torch_p50[shape] / p50 if shape in torch_p50 and p50 > 0 else None
        fp32 = fp32_p50.get((cell.provider, *shape))
        vs_fp32 = fp32 / p50 if fp32 is not None and p50 > 0 and cell.provider != BASELINE_PROVIDER else None
        result.append(dataclasses.replace(cell, speedup=speedup, vs_fp32=vs_fp32))
    return result


def _settings(plan: BenchPlan) -> BenchSettings:
    options = plan.options
    timing = options.timing
    inputs = (
        "real text from --text"
        if plan.texts is not None
        else "arrays from --npz"
        if plan.npz is not None
        else (
            "synthetic: token ids within the vocabulary"
            + (f" ({plan.source.vocab_size})" if plan.source.vocab_size else "")
            + ", attention masks of ones, images in range"
        )
    )
    return BenchSettings(
        warmup=timing.warmup.describe(),
        measure=timing.measure.describe() + f" (at least {timing.min_runs})",
        threads=options.threads,
        graph_optimization=options.graph_optimization,
        inputs=inputs,
        timing="wall clock around InferenceSession.run on feeds checked once beforehand; GC off while timing",
        cold_start="session: creating the session (per variant and provider); first run: first call at each shape",
        memory=memory_method(),
        baseline=options.baseline,
    )
