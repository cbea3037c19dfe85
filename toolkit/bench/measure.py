"""Measurement primitives: timed loops, latency statistics, concurrency, cold start and peak memory.

Every function here times a zero-argument callable and returns frozen dataclasses; nothing prints.
Latencies are wall-clock `time.perf_counter` around each call, in milliseconds.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.errors import BadInputError

__all__ = [
    "NOISY_CV",
    "Budget",
    "LatencyStats",
    "MemoryReading",
    "MemoryTracker",
    "TimingPlan",
    "latency_stats",
    "memory_method",
    "parse_budget",
    "time_calls",
    "time_concurrent",
    "timed",
]

log = logging.getLogger(__name__)

NOISY_CV = 0.10
"""A cell whose coefficient of variation (std / mean) is over this is flagged as noisy."""


@dataclass(frozen=True)
class Budget:
    """A number of runs, or a number of seconds when `seconds` is set."""

    runs: int = 0
    seconds: float | None = None

    def describe(self) -> str:
        """``10 runs`` or ``2.0 s``."""
        return f"{self.seconds:g} s" if self.seconds is not None else f"{self.runs} runs"


def parse_budget(text: str | int, option: str, minimum: int = 0) -> Budget:
    """``"10"`` -> 10 runs, ``"2s"`` or ``"2.5s"`` -> seconds; anything else is a one-line BadInputError."""
    value = str(text).strip().lower()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|sec|seconds?)", value)
    if match:
        seconds = float(match.group(1))
        if seconds <= 0:
            raise BadInputError(f"{option} must be a positive duration, got '{text}'; e.g. {option} 2s")
        return Budget(seconds=seconds)
    if not value.isdigit():
        raise BadInputError(f"{option} must be a run count or seconds like 2s, got '{text}'")
    runs = int(value)
    if runs < minimum:
        raise BadInputError(f"{option} must be at least {minimum}, got {runs}")
    return Budget(runs=runs)


@dataclass(frozen=True)
class TimingPlan:
    """Warm-up then measurement, each either a run count or seconds."""

    warmup: Budget = Budget(runs=10)
    measure: Budget = Budget(runs=100)
    min_runs: int = 5


@dataclass(frozen=True)
class LatencyStats:
    """Latency percentiles, mean, spread and extremes in milliseconds over `runs` timed calls."""

    runs: int
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    cv: float
    noisy: bool


def latency_stats(samples_ms: Sequence[float]) -> LatencyStats:
    """Percentiles (linear interpolation), mean, population std and the coefficient of variation."""
    if not samples_ms:
        raise BadInputError("no timed runs to summarise; raise --iterations or --duration")
    values = np.asarray(samples_ms, dtype=np.float64)
    p50, p90, p95, p99 = np.percentile(values, [50, 90, 95, 99])
    mean = float(values.mean())
    std = float(values.std())
    cv = std / mean if mean > 0 else 0.0
    return LatencyStats(
        runs=len(values),
        p50_ms=float(p50),
        p90_ms=float(p90),
        p95_ms=float(p95),
        p99_ms=float(p99),
        mean_ms=mean,
        std_ms=std,
        min_ms=float(values.min()),
        max_ms=float(values.max()),
        cv=cv,
        noisy=cv > NOISY_CV,
    )


def timed(call: Callable[[], Any]) -> float:
    """Milliseconds one call takes."""
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1e3


def _spend(call: Callable[[], Any], budget: Budget, record: list[float] | None, min_runs: int = 0) -> None:
    if budget.seconds is not None:
        deadline = time.perf_counter() + budget.seconds
        count = 0
        while time.perf_counter() < deadline or count < min_runs:
            elapsed = timed(call)
            if record is not None:
                record.append(elapsed)
            count += 1
        return
    for _ in range(max(budget.runs, min_runs)):
        elapsed = timed(call)
        if record is not None:
            record.append(elapsed)


def time_calls(call: Callable[[], Any], plan: TimingPlan, warm: bool = True) -> list[float]:
    """Warm up (unless `warm` is False), then time calls one after another; returns milliseconds per call."""
    if warm:
        _spend(call, plan.warmup, None)
    samples: list[float] = []
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection inside the loop would be charged to one unlucky call
    try:
        _spend(call, plan.measure, samples, plan.min_runs)
    finally:
        if gc_was_enabled:
            gc.enable()
    return samples


def time_concurrent(call: Callable[[], Any], threads: int, plan: TimingPlan) -> tuple[list[float], float]:
    """`threads` threads calling the same callable (one shared session); per-call ms and the wall seconds.

    With a run budget, the threads share that many calls (at least one round each); with seconds, every
    thread calls until the deadline. Each thread warms up with one call before a barrier releases them all.
    """
    if threads < 1:
        raise BadInputError(f"concurrency must be at least 1, got {threads}")
    samples: list[float] = []
    lock = threading.Lock()
    remaining = [max(plan.measure.runs, plan.min_runs, threads)]
    deadline: list[float] = [0.0]
    started: list[float] = [0.0]

    def release() -> None:  # runs once, when every thread has warmed up, before any is released
        started[0] = time.perf_counter()
        deadline[0] = started[0] + (plan.measure.seconds or 0.0)

    barrier = threading.Barrier(threads + 1, action=release)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            call()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread below
            errors.append(exc)
        barrier.wait()
        mine: list[float] = []
        while not errors:
            if plan.measure.seconds is not None:
                if time.perf_counter() >= deadline[0]:
                    break
            else:
                with lock:
                    if remaining[0] <= 0:
                        break
                    remaining[0] -= 1
            try:
                mine.append(timed(call))
            except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread below
                errors.append(exc)
        with lock:
            samples.extend(mine)

    workers = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for worker_thread in workers:
        worker_thread.start()
    barrier.wait()
    for worker_thread in workers:
        worker_thread.join()
    wall = time.perf_counter() - started[0]
    if errors:
        raise errors[0]
    return samples, wall


@dataclass(frozen=True)
class MemoryReading:
    """Resident memory around one benchmark cell, in MiB.

    `base_mb` is the process RSS before the cell's session (or model) was created; `peak_mb` the highest
    RSS while the cell ran (None where the OS cannot say); `delta_mb` = peak - base, what the cell cost.
    """

    base_mb: float
    peak_mb: float | None
    after_mb: float
    method: str

    @property
    def delta_mb(self) -> float | None:
        """Peak over the base, or None without a peak."""
        return None if self.peak_mb is None else self.peak_mb - self.base_mb


_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> float | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1])
    except OSError:
        return None
    return None


def _can_reset_peak() -> bool:
    if _status_kib("VmHWM") is None:
        return False
    try:
        with _CLEAR_REFS.open("w") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


def memory_method() -> str:
    """How peaks are measured on this machine, for the report header."""
    if _can_reset_peak():
        return (
            "in-process: Linux VmHWM (peak RSS) reset before each cell; delta = peak minus RSS before the "
            "session was created (freed heap trimmed first)"
        )
    try:
        import psutil  # noqa: F401
    except ImportError:
        return "unavailable: not Linux and psutil is not installed (pip install 'edge-toolkit[bench]')"
    return (
        "in-process: psutil RSS sampled every 2 ms during each cell, minus RSS before the session was created"
    )


def _rss_mb() -> float:
    kib = _status_kib("VmRSS")
    if kib is not None:
        return kib / 1024
    try:
        import psutil
    except ImportError:
        return float("nan")
    return float(psutil.Process().memory_info().rss) / 2**20


def _malloc_trim() -> None:
    """Ask glibc to hand freed heap back to the OS, so one cell's leftovers do not hide in the next's base."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        log.debug("malloc_trim unavailable; RSS bases may include memory freed by earlier cells")


class MemoryTracker:
    """Peak RSS of a block: the kernel's high-water mark reset at entry on Linux, else a 2 ms psutil sampler."""

    def __init__(self) -> None:
        self.linux = _can_reset_peak()

    def base(self) -> float:
        """The current RSS, in MiB, after returning freed heap to the OS: take it before creating the session."""
        gc.collect()
        _malloc_trim()
        return _rss_mb()

    @contextlib.contextmanager
    def peak(self, base_mb: float) -> Iterator[list[MemoryReading]]:
        """Yields a list that holds the block's `MemoryReading` once the block has finished."""
        result: list[MemoryReading] = []
        if self.linux:
            _can_reset_peak()
            yield result
            hwm = _status_kib("VmHWM")
            result.append(MemoryReading(base_mb, hwm / 1024 if hwm else None, _rss_mb(), "VmHWM"))
            return
        try:
            import psutil
        except ImportError:
            yield result
            result.append(MemoryReading(base_mb, None, _rss_mb(), "none"))
            return
        process = psutil.Process(os.getpid())
        peak = [float(process.memory_info().rss)]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.002):
                peak[0] = max(peak[0], float(process.memory_info().rss))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            yield result
        finally:
            stop.set()
            sampler.join()
        result.append(MemoryReading(base_mb, peak[0] / 2**20, _rss_mb(), "psutil"))
