"""Saved runs: a report to and from JSON, and the cell-by-cell ratios between two runs.

Cells are matched on (variant, provider that ran, batch, seq, concurrency). A ratio is new / old, so a
latency ratio over 1 is slower and a throughput ratio under 1 is slower; past `threshold` it is flagged.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolkit.atomic import atomic_write_text
from toolkit.bench.suite import REPORT_FORMAT, BenchCell, BenchReport
from toolkit.errors import BadInputError

__all__ = [
    "CellComparison",
    "Comparison",
    "compare_reports",
    "load_report",
    "plain",
    "report_from_dict",
    "report_to_dict",
    "save_report",
]

DEFAULT_THRESHOLD = 0.10


def plain(value: Any) -> Any:
    """Dataclasses, mappings, tuples and paths as JSON-able dicts, lists and strings."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def report_to_dict(report: BenchReport) -> dict[str, Any]:
    """The report as plain JSON-able data, ``format`` first."""
    data = plain(report)
    return {"format": data.pop("format"), **data}


def _build(kind: Any, value: Any) -> Any:
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        options = [a for a in typing.get_args(kind) if a is not type(None)]
        return _build(options[0], value)
    if origin is tuple:
        args = typing.get_args(kind)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_build(args[0], v) for v in value)
        return tuple(_build(a, v) for a, v in zip(args, value, strict=True))
    if dataclasses.is_dataclass(kind):
        hints = typing.get_type_hints(kind)
        fields = {f.name for f in dataclasses.fields(kind) if f.init}
        return kind(**{k: _build(hints[k], v) for k, v in value.items() if k in fields})  # type: ignore[operator]
    if kind is float and isinstance(value, int | float):
        return float(value)
    return value


def report_from_dict(data: Mapping[str, Any], origin: str = "report") -> BenchReport:
    """Rebuild a report saved by `report_to_dict`; a wrong or old file is a one-line BadInputError."""
    if not isinstance(data, Mapping) or data.get("format") != REPORT_FORMAT:
        found = data.get("format") if isinstance(data, Mapping) else type(data).__name__
        raise BadInputError(
            f"'{origin}' is not an edge bench report (format {found!r}, expected {REPORT_FORMAT!r}); "
            "save one with `edge bench ... --json FILE`"
        )
    try:
        report: BenchReport = _build(BenchReport, data)
        return report
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BadInputError(
            f"'{origin}' is a malformed edge bench report ({exc!r}); re-run `edge bench --json`"
        ) from None


def save_report(report: BenchReport, path: Path) -> None:
    """Write the report as JSON, atomically."""
    atomic_write_text(path, json.dumps(report_to_dict(report), indent=2) + "\n")


def load_report(path: str | Path) -> BenchReport:
    """Read a report written by ``edge bench --json FILE``."""
    file = Path(path)
    if not file.is_file():
        raise BadInputError(f"report '{file}' does not exist; save one with `edge bench ... --json {file}`")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadInputError(f"report '{file}' is not valid JSON ({exc})") from None
    return report_from_dict(data, str(file))


@dataclass(frozen=True)
class CellComparison:
    """One cell in both runs: each run's numbers and the ratios new / old."""

    variant: str
    provider: str
    batch: int
    seq: int | None
    concurrency: int
    old_p50_ms: float
    new_p50_ms: float
    p50_ratio: float
    p99_ratio: float
    throughput_ratio: float
    memory_ratio: float | None
    verdict: str


@dataclass(frozen=True)
class Comparison:
    """Two runs side by side: matched cells, and the cells only one of them has."""

    old: str
    new: str
    threshold: float
    cells: tuple[CellComparison, ...]
    only_old: tuple[str, ...]
    only_new: tuple[str, ...]
    environment_changes: tuple[str, ...]

    @property
    def regressions(self) -> tuple[CellComparison, ...]:
        """Cells that got slower than the threshold allows."""
        return tuple(c for c in self.cells if c.verdict == "slower")


def _describe(key: tuple[Any, ...]) -> str:
    variant, provider, batch, seq, concurrency = key
    return (
        f"{variant} on {provider}, batch {batch}"
        + (f", seq {seq}" if seq is not None else "")
        + (f", x{concurrency}" if concurrency > 1 else "")
    )


def _ratio(new: float, old: float) -> float:
    return new / old if old > 0 else float("inf")


def _verdict(p50_ratio: float, threshold: float) -> str:
    if p50_ratio > 1 + threshold:
        return "slower"
    if p50_ratio < 1 / (1 + threshold):
        return "faster"
    return "same"


def _memory_ratio(new: BenchCell, old: BenchCell) -> float | None:
    if new.memory is None or old.memory is None:
        return None
    a, b = new.memory.delta_mb, old.memory.delta_mb
    return None if a is None or b is None or b <= 0 else a / b


def compare_reports(
    old: BenchReport,
    new: BenchReport,
    threshold: float = DEFAULT_THRESHOLD,
    names: tuple[str, str] = ("a", "b"),
) -> Comparison:
    """Ratios new / old for every cell both runs measured; p50 beyond `threshold` is 'slower' or 'faster'."""
    if threshold < 0:
        raise BadInputError(f"--threshold must be 0 or more, got {threshold}")
    before = {c.key: c for c in old.cells}
    after = {c.key: c for c in new.cells}
    cells = []
    for key, cell in after.items():
        if key not in before:
            continue
        prior = before[key]
        p50_ratio = _ratio(cell.latency.p50_ms, prior.latency.p50_ms)
        cells.append(
            CellComparison(
                variant=cell.variant,
                provider=cell.provider,
                batch=cell.batch,
                seq=cell.seq,
                concurrency=cell.concurrency,
                old_p50_ms=prior.latency.p50_ms,
                new_p50_ms=cell.latency.p50_ms,
                p50_ratio=p50_ratio,
                p99_ratio=_ratio(cell.latency.p99_ms, prior.latency.p99_ms),
                throughput_ratio=_ratio(cell.throughput, prior.throughput),
                memory_ratio=_memory_ratio(cell, prior),
                verdict=_verdict(p50_ratio, threshold),
            )
        )
    changes = []
    for field in (
        "cpu_model",
        "logical_cores",
        "onnxruntime",
        "onnxruntime_package",
        "intra_op_threads",
        "graph_optimization",
    ):
        a, b = getattr(old.environment, field), getattr(new.environment, field)
        if a != b:
            changes.append(f"{field}: {a} -> {b}")
    return Comparison(
        old=names[0],
        new=names[1],
        threshold=threshold,
        cells=tuple(cells),
        only_old=tuple(_describe(k) for k in before if k not in after),
        only_new=tuple(_describe(k) for k in after if k not in before),
        environment_changes=tuple(changes),
    )
