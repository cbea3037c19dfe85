"""`toolkit.bench`: latency, throughput, cold start and memory of a package's variants on each provider.

Measuring (`plan_bench`, `run_bench`, the primitives in `measure`) returns frozen dataclasses; rendering
(`render`: rich tables, CSV, Markdown, PNG) and saved-run comparison (`compare`) are separate modules.
No torch, transformers or matplotlib is imported until a baseline or a plot asks for it.
"""

from toolkit.bench.compare import Comparison, compare_reports, load_report, save_report
from toolkit.bench.environment import Environment, collect_environment
from toolkit.bench.inputs import BenchInput, InputSource, synthetic_feeds
from toolkit.bench.measure import Budget, LatencyStats, MemoryReading, TimingPlan, latency_stats, parse_budget
from toolkit.bench.suite import (
    Accuracy,
    BenchCell,
    BenchOptions,
    BenchPlan,
    BenchReport,
    BenchSettings,
    plan_bench,
    run_bench,
)

__all__ = [
    "Accuracy",
    "BenchCell",
    "BenchInput",
    "BenchOptions",
    "BenchPlan",
    "BenchReport",
    "BenchSettings",
    "Budget",
    "Comparison",
    "Environment",
    "InputSource",
    "LatencyStats",
    "MemoryReading",
    "TimingPlan",
    "collect_environment",
    "compare_reports",
    "latency_stats",
    "load_report",
    "parse_budget",
    "plan_bench",
    "run_bench",
    "save_report",
    "synthetic_feeds",
]
