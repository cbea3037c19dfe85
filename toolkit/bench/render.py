"""Rendering bench results: rich tables for the terminal, CSV, Markdown and a PNG plot. Nothing here measures.

matplotlib is imported only inside `write_plot`, so ``import toolkit`` stays free of it.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from rich import box
from rich.table import Table

from toolkit.atomic import atomic_path, atomic_write_text
from toolkit.bench.compare import Comparison
from toolkit.bench.suite import BASELINE_PROVIDER, BenchCell, BenchReport
from toolkit.errors import BadInputError

__all__ = [
    "COLUMNS",
    "WIDE_TERMINAL",
    "comparison_table",
    "environment_lines",
    "report_table",
    "to_csv",
    "to_markdown",
    "write_csv",
    "write_markdown",
    "write_plot",
]


def _ms(value: float) -> str:
    return f"{value:.3f}" if value < 10 else f"{value:.2f}" if value < 100 else f"{value:.1f}"


def _opt(value: float | None, fmt: str) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def _provider(cell: BenchCell) -> str:
    if cell.requested_provider != cell.provider:
        return f"{cell.provider} (asked {cell.requested_provider})"
    return cell.provider


@dataclass(frozen=True)
class Column:
    """One output column: header, how to read a cell as text, and whether the terminal table shows it."""

    header: str
    value: Callable[[BenchCell], str]
    terminal: bool = True
    wide_only: bool = False


COLUMNS: tuple[Column, ...] = (
    Column("variant", lambda c: c.variant),
    Column("provider", _provider),
    Column("batch", lambda c: str(c.batch)),
    Column("seq", lambda c: "" if c.seq is None else str(c.seq)),
    Column("threads", lambda c: str(c.concurrency)),
    Column("p50 ms", lambda c: _ms(c.latency.p50_ms)),
    Column("p90 ms", lambda c: _ms(c.latency.p90_ms), wide_only=True),
    Column("p95 ms", lambda c: _ms(c.latency.p95_ms)),
    Column("p99 ms", lambda c: _ms(c.latency.p99_ms)),
    Column("mean ms", lambda c: _ms(c.latency.mean_ms), wide_only=True),
    Column("std ms", lambda c: _ms(c.latency.std_ms), wide_only=True),
    Column("cv", lambda c: f"{c.latency.cv * 100:.1f}%" + (" noisy" if c.latency.noisy else "")),
    Column("min ms", lambda c: _ms(c.latency.min_ms), wide_only=True),
    Column("max ms", lambda c: _ms(c.latency.max_ms), wide_only=True),
    Column("runs", lambda c: str(c.latency.runs), terminal=False),
    Column("items/s", lambda c: f"{c.throughput:.1f}"),
    Column("vs fp32", lambda c: _opt(c.vs_fp32, ".2f") + ("x" if c.vs_fp32 is not None else "")),
    Column("vs torch", lambda c: _opt(c.speedup, ".2f") + ("x" if c.speedup is not None else "")),
    Column("nodes", lambda c: ", ".join(f"{name} {count}" for name, count in c.placement)),
    Column("session ms", lambda c: _ms(c.session_ms), wide_only=True),
    Column("first run ms", lambda c: _ms(c.first_run_ms), wide_only=True),
    Column("peak MiB", lambda c: _opt(c.memory.peak_mb if c.memory else None, ".0f")),
    Column("Δ MiB", lambda c: _opt(c.memory.delta_mb if c.memory else None, "+.0f"), wide_only=True),
    Column("size MB", lambda c: _opt(c.size_bytes / 1e6 if c.size_bytes is not None else None, ".1f")),
    Column(
        "accuracy",
        lambda c: (
            c.accuracy.describe() if c.accuracy else ("reference" if c.provider == BASELINE_PROVIDER else "")
        ),
    ),
    Column("inputs", lambda c: c.inputs, terminal=False),
)


WIDE_TERMINAL = 180
"""Terminals at least this wide get every column; narrower ones the essentials (files always get all)."""


def _columns(report: BenchReport, terminal: bool, width: int | None = None) -> list[Column]:
    cells = report.cells
    skip = set()
    if all(c.concurrency == 1 for c in cells):
        skip.add("threads")
    if all(c.seq is None for c in cells):
        skip.add("seq")
    if all(c.speedup is None for c in cells):
        skip.add("vs torch")
    if all(c.vs_fp32 is None or c.variant == "fp32" for c in cells):
        skip.add("vs fp32")
    wide = not terminal or (width or 0) >= WIDE_TERMINAL
    return [
        col
        for col in COLUMNS
        if col.header not in skip and (col.terminal or not terminal) and (wide or not col.wide_only)
    ]


def environment_lines(report: BenchReport) -> list[str]:
    """The environment and settings block, one fact per line."""
    env = report.environment
    s = report.settings
    lines = [
        f"model: {report.model}" + (f" (task {report.task})" if report.task else ""),
        f"cpu: {env.cpu_model}, {env.physical_cores or '?'} physical / {env.logical_cores} logical cores, "
        f"{env.machine}; ISA: {', '.join(env.isa) or 'none of AVX2/AVX-512 VNNI/AMX'}",
        f"onnxruntime {env.onnxruntime} ({env.onnxruntime_package}); available providers: "
        + ", ".join(p.replace("ExecutionProvider", "") for p in env.available_providers),
        f"threads: intra-op {env.intra_op_threads}, inter-op {env.inter_op_threads}; graph optimisation: {env.graph_optimization}"
        + ("".join(f"; {k}={v}" for k, v in env.thread_env)),
        f"timing: warm-up {s.warmup}, then {s.measure}; {s.timing}",
        f"inputs: {s.inputs}",
        f"cold start: {s.cold_start}",
        f"memory: {s.memory}",
    ]
    if env.torch:
        lines.append(f"baseline: torch {env.torch}, {env.torch_threads} threads, eager, inference_mode")
    lines.append(f"python {env.python}, numpy {env.numpy}, {env.os}; {report.created}")
    return lines


def report_table(report: BenchReport, width: int | None = None) -> Table:
    """The terminal table for a console `width`: one row per cell, noisy spreads in yellow, failed accuracy in red."""
    table = Table(
        title=f"edge bench: {Path(report.model).name}",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    columns = _columns(report, terminal=True, width=width)
    numeric = {"batch", "seq", "threads"}
    for col in columns:
        left = col.header in ("variant", "provider", "accuracy")
        table.add_column(
            col.header,
            justify="left" if left else "right",
            no_wrap=col.header not in ("accuracy", "provider", "cv") and col.header not in numeric,
            min_width={"accuracy": 14, "provider": 4, "cv": 5}.get(
                col.header, 3 if col.header in numeric else None
            ),
        )
    for cell in report.cells:
        row = []
        for col in columns:
            text = col.value(cell)
            if col.header == "cv" and cell.latency.noisy:
                text = f"[yellow]{text}[/]"
            if col.header == "accuracy" and cell.accuracy is not None and not cell.accuracy.passed:
                text = f"[red]{text}[/]"
            row.append(text)
        table.add_row(*row)
    if any(c.latency.noisy for c in report.cells):
        table.caption = (
            "noisy: coefficient of variation over 10%; re-run on an idle machine or raise --iterations"
        )
    return table


def to_csv(report: BenchReport) -> str:
    """Every cell with every column, as CSV text."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    columns = [c for c in COLUMNS if c.header != "cv"]
    writer.writerow([c.header for c in columns] + ["cv", "noisy"])
    for cell in report.cells:
        writer.writerow(
            [c.value(cell) for c in columns] + [f"{cell.latency.cv:.4f}", str(cell.latency.noisy).lower()]
        )
    return buffer.getvalue()


def to_markdown(report: BenchReport) -> str:
    """A Markdown table of the cells, the environment block above it and notes below."""
    columns = _columns(report, terminal=False)
    lines = [f"## edge bench: {Path(report.model).name}", ""]
    lines += [f"- {line}" for line in environment_lines(report)]
    lines += ["", "| " + " | ".join(c.header for c in columns) + " |"]
    lines.append(
        "|"
        + "|".join(
            "---" if c.header in ("variant", "provider", "accuracy", "inputs") else "---:" for c in columns
        )
        + "|"
    )
    for cell in report.cells:
        lines.append("| " + " | ".join(c.value(cell).replace("|", "\\|") for c in columns) + " |")
    if report.notes:
        lines += ["", *[f"- note: {n}" for n in report.notes]]
    return "\n".join(lines) + "\n"


def write_csv(report: BenchReport, path: Path) -> None:
    """Write `to_csv` atomically."""
    atomic_write_text(path, to_csv(report))


def write_markdown(report: BenchReport, path: Path) -> None:
    """Write `to_markdown` atomically."""
    atomic_write_text(path, to_markdown(report))


def _series(cells: Sequence[BenchCell]) -> dict[str, list[BenchCell]]:
    series: dict[str, list[BenchCell]] = {}
    for cell in cells:
        series.setdefault(f"{cell.variant} / {_provider(cell)}", []).append(cell)
    return series


def write_plot(report: BenchReport, path: Path) -> None:
    """Latency (p50, whisker to p95) and throughput vs batch size, one line per variant and provider, one column per sequence length."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import FuncFormatter, NullFormatter
    except ImportError:
        raise BadInputError(
            "--plot needs matplotlib; install it with pip install 'edge-toolkit[bench]'"
        ) from None
    if path.suffix.lower() != ".png":
        raise BadInputError(f"--plot writes a PNG; name the file with .png, got '{path.name}'")
    single = [c for c in report.cells if c.concurrency == 1]
    concurrent = any(c.concurrency > 1 for c in report.cells)
    seqs = sorted({c.seq for c in single}, key=lambda s: -1 if s is None else s)
    rows = 3 if concurrent else 2
    figure = Figure(figsize=(5.2 * max(len(seqs), 1) + 1.5, 3.6 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, max(len(seqs), 1), squeeze=False)
    names = sorted(_series(report.cells))
    colours = {name: f"C{i % 10}" for i, name in enumerate(names)}
    for column, seq in enumerate(seqs):
        latency_ax, throughput_ax = axes[0][column], axes[1][column]
        for name, cells in _series([c for c in single if c.seq == seq]).items():
            cells = sorted(cells, key=lambda c: c.batch)
            batches = [c.batch for c in cells]
            p50 = [c.latency.p50_ms for c in cells]
            upper = [c.latency.p95_ms - c.latency.p50_ms for c in cells]
            style = "--" if cells[0].provider == BASELINE_PROVIDER else "-"
            latency_ax.errorbar(
                batches,
                p50,
                yerr=[[0] * len(p50), upper],
                fmt="o" + style,
                color=colours[name],
                label=name,
                capsize=3,
                linewidth=1.8,
                markersize=5,
            )
            throughput_ax.plot(
                batches, [c.throughput for c in cells], "o" + style, color=colours[name], label=name
            )
        title = f"sequence length {seq}" if seq is not None else "all inputs"
        latency_ax.set_title(title)
        for ax, label in (
            (latency_ax, "p50 latency, ms (whisker: p95)"),
            (throughput_ax, "throughput, items/s"),
        ):
            ax.set_xscale("log", base=2)
            ax.set_xticks(sorted({c.batch for c in single}))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_ylim(bottom=0)
            ax.set_xlabel("batch size")
            ax.set_ylabel(label)
            ax.grid(True, alpha=0.3)
    if concurrent:
        for column, seq in enumerate(seqs):
            ax = axes[2][column]
            for name, cells in _series([c for c in report.cells if c.seq == seq]).items():
                smallest = min(c.batch for c in cells)
                points = sorted((c for c in cells if c.batch == smallest), key=lambda c: c.concurrency)
                ax.plot(
                    [c.concurrency for c in points],
                    [c.throughput for c in points],
                    "o-",
                    color=colours[name],
                )
            ax.set_title(f"batch {min(c.batch for c in report.cells)}: throughput vs concurrency")
            ax.set_xticks(sorted({c.concurrency for c in report.cells}))
            ax.set_ylim(bottom=0)
            ax.set_xlabel("threads sharing one session")
            ax.set_ylabel("throughput, items/s")
            ax.grid(True, alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4), fontsize="medium")
    env = report.environment
    figure.suptitle(
        f"{Path(report.model).name}: {env.cpu_model}, onnxruntime {env.onnxruntime}, "
        f"intra-op threads {env.intra_op_threads}",
        fontsize="medium",
    )
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)


def comparison_table(comparison: Comparison) -> Table:
    """Ratios new / old per cell; slower cells in red, faster in green."""
    table = Table(
        title=f"edge bench --compare: {comparison.new} / {comparison.old} (threshold {comparison.threshold:.0%})",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    for header in (
        "variant",
        "provider",
        "batch",
        "seq",
        "threads",
        "old p50 ms",
        "new p50 ms",
        "p50 ratio",
        "p99 ratio",
        "items/s ratio",
        "Δ MiB ratio",
        "verdict",
    ):
        table.add_column(header, justify="left" if header in ("variant", "provider", "verdict") else "right")
    for c in comparison.cells:
        colour = {"slower": "red", "faster": "green"}.get(c.verdict)
        verdict = f"[{colour}]{c.verdict}[/]" if colour else c.verdict
        table.add_row(
            c.variant,
            c.provider,
            str(c.batch),
            "" if c.seq is None else str(c.seq),
            str(c.concurrency),
            _ms(c.old_p50_ms),
            _ms(c.new_p50_ms),
            f"{c.p50_ratio:.3f}",
            f"{c.p99_ratio:.3f}",
            f"{c.throughput_ratio:.3f}",
            _opt(c.memory_ratio, ".3f"),
            verdict,
        )
    return table
