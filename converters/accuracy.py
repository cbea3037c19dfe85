"""How much a variant costs: its task's accuracy report against the fp32 model on held-out inputs, and its latency.

`compare_variant` runs the variant and fp32 on the task's held-out samples (`Task.samples` for the
``held-out`` purpose, which never overlap its calibration samples) and asks the task for the report
(`Task.accuracy_report`; the report shapes and `AccuracyReport` are `toolkit.tasks.accuracy`'s).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from toolkit.bench.measure import timed
from toolkit.errors import BadInputError
from toolkit.manifest import ModelPackage
from toolkit.runner import Runner
from toolkit.tasks import Family, family_of, task_for
from toolkit.tasks.accuracy import AccuracyReport
from toolkit.tasks.base import own_lines
from toolkit.tasks.modality import HELD_OUT_SEED, TextModality

__all__ = [
    "HELD_OUT_SEED",
    "USER_FILE_SOURCE",
    "Candidate",
    "HeldOutSet",
    "HeldOutSets",
    "Latency",
    "RecordedOutputs",
    "as_declared",
    "compare_variant",
    "held_out_feeds",
    "held_out_set",
    "latency_feeds",
    "measure_latency",
    "reference_outputs",
]

log = logging.getLogger(__name__)

Feeds = Mapping[str, np.ndarray]


USER_FILE_SOURCE = "user file "
"""How a `HeldOutSet.source` cut from the user's `--held-out` file begins (then its name and sample count)."""


def held_out_feeds(
    package: ModelPackage, count: int | None = None, exclude_texts: Sequence[str] = ()
) -> list[dict[str, np.ndarray]]:
    """Validation inputs, batch 1 each, disjoint from any calibration input (and from `exclude_texts`)."""
    return list(held_out_set(package, None, exclude_texts, count).feeds)


@dataclass(frozen=True)
class HeldOutSet:
    """The inputs a variant's accuracy is measured on, and where they came from (recorded beside the accuracy)."""

    feeds: tuple[dict[str, np.ndarray], ...]
    source: str


def held_out_set(
    package: ModelPackage,
    own: Path | None = None,
    exclude_texts: Sequence[str] = (),
    count: int | None = None,
) -> HeldOutSet:
    """The task's built-in held-out samples, or with `own` (a .txt file of the user's text, for a model trained
    on another domain) the task's samples cut from it (`Task.own_held_out`); minus `exclude_texts` either way."""
    task = task_for(package)
    if own is not None and family_of(package) is Family.ENCODER_DECODER:
        raise BadInputError(
            f"--held-out applies to single-graph models and generators; package '{package.path}' is an "
            "encoder-decoder measured on its built-in clips and sentences: drop --held-out"
        )
    if own is None:
        feeds = task.samples("held-out", count, exclude_texts)
        return HeldOutSet(tuple(feeds), f"built-in held-out samples ({len(feeds)})")
    if own.suffix != ".txt" or not own.is_file():
        problem = "does not exist" if not own.exists() else "is not a .txt file"
        raise BadInputError(
            f"held-out text '{own}' {problem}; pass a .txt file of your own text to --held-out"
        )
    if not isinstance(task.data, TextModality):
        raise BadInputError(
            f"held-out text '{own}' needs a text model, but package '{package.path}' takes "
            f"{package.manifest.inputs[0].describe()}; drop --held-out to measure on the built-in samples"
        )
    try:
        text = own.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise BadInputError(f"held-out text '{own}' is not UTF-8 text; save it as UTF-8") from None
    # a generator cuts the whole text, blank lines too: whitespace alone is no text to measure on either
    feeds = task.own_held_out(text, exclude_texts)[:count] if own_lines(text, exclude_texts) else []
    if not feeds:
        raise BadInputError(
            f"held-out text '{own}' has no text to measure on (empty, or every line is calibration data); "
            "put your own text in it, one sample a line"
        )
    return HeldOutSet(tuple(feeds), f"{USER_FILE_SOURCE}{own.name} ({len(feeds)} samples)")


class HeldOutSets:
    """`held_out_set` of one package and one `own` text (or None), each set built once per exclusion: a quantize
    call asks for it where it checks `--held-out`, in int4's block search and where it records and judges the
    variant's accuracy, and cutting a user's text into feeds tokenizes all of it."""

    def __init__(self, package: ModelPackage, own: Path | None = None) -> None:
        self.package = package
        self.own = own
        self._built: dict[frozenset[str], HeldOutSet] = {}

    def excluding(self, texts: Sequence[str] = ()) -> HeldOutSet:
        """The held-out set minus `texts` (the calibration texts), built on the first call for those texts."""
        key = frozenset(texts)
        if key not in self._built:
            self._built[key] = held_out_set(self.package, self.own, tuple(key))
        return self._built[key]


Reference = Runner | Sequence[Mapping[str, np.ndarray]]


class Candidate(Protocol):
    """What a report runs on the held-out feeds: a `Runner`, or `RecordedOutputs` computed elsewhere."""

    def run(
        self, feeds: Mapping[str, Any], outputs: str | Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """The outputs for `feeds` (all, or those named)."""
        ...


class RecordedOutputs:
    """A variant's outputs computed elsewhere (an emulated device), handed out as its `Runner` would have."""

    def __init__(self, feeds: Sequence[Feeds], outputs: Sequence[Mapping[str, np.ndarray]]) -> None:
        self._by_feed = {id(f): o for f, o in zip(feeds, outputs, strict=True)}

    def run(
        self, feeds: Mapping[str, Any], outputs: str | Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """The recorded outputs for `feeds` (one of the feeds this was made with)."""
        got = self._by_feed[id(feeds)]
        names = [outputs] if isinstance(outputs, str) else list(outputs or got)
        return {name: got[name] for name in names}


def reference_outputs(runner: Runner, feeds: Sequence[Feeds]) -> list[dict[str, np.ndarray]]:
    """The fp32 outputs for `feeds`, computed once and reused for every candidate."""
    return [runner.run(f) for f in feeds]


def _run_both(
    reference: Reference, candidate: Candidate, feeds: Sequence[Feeds], names: Sequence[str] | None
) -> list[tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray]]]:
    """(the candidate's outputs, fp32's) per input: the outputs `names` (None: all), fp32's recorded or run."""
    wanted = [reference.run(f, names) for f in feeds] if isinstance(reference, Runner) else reference
    return [(candidate.run(as_declared(candidate, f), names), w) for f, w in zip(feeds, wanted, strict=True)]


def as_declared(model: Candidate, feeds: Feeds) -> Feeds:
    """`feeds` with each float array in the float type `model` (a `Runner`) declares for it: a variant holding
    state in float16 (an fp16 generator's KV cache) takes the same inputs as fp32."""
    if not isinstance(model, Runner):
        return feeds
    declared = {t.name: t.dtype for t in model.inputs}
    return {
        name: value.astype(declared[name])
        if value.dtype.kind == "f" and declared.get(name, value.dtype.name) != value.dtype.name
        else value
        for name, value in feeds.items()
    }


def compare_variant(
    package: ModelPackage,
    candidate: Path | Candidate,
    feeds: Sequence[Feeds] | None = None,
    reference: Reference | None = None,
) -> AccuracyReport:
    """The task metric of the ONNX file `candidate` against the package's fp32 model on held-out inputs."""
    feeds = list(feeds) if feeds is not None else held_out_feeds(package)
    if not feeds:
        raise BadInputError("no held-out inputs to validate on; pass at least one sample")
    reference = reference or Runner(package.model_path(), "cpu")
    runner = Runner(candidate, "cpu") if isinstance(candidate, Path) else candidate
    task = task_for(package)
    return task.accuracy_report(_run_both(reference, runner, feeds, task.metric_outputs), feeds)


@dataclass(frozen=True)
class Latency:
    """Median latency in milliseconds per model, measured interleaved in one process."""

    median_ms: Mapping[str, float]
    runs: int
    threads: int
    shape: str

    def speedup(self, name: str, baseline: str = "fp32") -> float:
        """How many times faster `name` is than `baseline`."""
        return self.median_ms[baseline] / self.median_ms[name]


def latency_feeds(package: ModelPackage, batch: int = 1, seq: int = 128) -> dict[str, np.ndarray]:
    """Fixed-shape feeds for timing, `batch` rows: the task's `timing_feeds` (real tokens for text, `seq` long
    and capped at the model's max length; the preprocessing size for images; one second of waveform for audio)."""
    return task_for(package).timing_feeds(batch, seq)


def measure_latency(
    models: Mapping[str, Path | Runner],
    feeds: Feeds,
    runs: int = 30,
    warmup: int = 3,
    threads: int = 2,
) -> Latency:
    """Median latency of each model on the same feeds, one run of each in turn per round (so drift hits all alike)."""
    runners = {
        name: m if isinstance(m, Runner) else Runner(m, "cpu", threads=threads) for name, m in models.items()
    }
    own = {name: as_declared(runner, feeds) for name, runner in runners.items()}
    for name, runner in runners.items():
        for _ in range(warmup):
            runner.run(own[name])
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(runs):
        for name, runner in runners.items():
            times[name].append(timed(partial(runner.run, own[name])))
    shape = ", ".join(f"{k} {list(v.shape)}" for k, v in feeds.items())
    return Latency({name: round(float(np.median(t)), 3) for name, t in times.items()}, runs, threads, shape)
