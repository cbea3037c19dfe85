"""The PyTorch original of a package, as a baseline `toolkit.bench.run_bench` times in the same run.

`toolkit.bench` knows a baseline only as its `Baseline` protocol; the CLI passes `load_torch_baseline` to
`run_bench` (importing this module inside ``edge bench``), so ``import toolkit.bench`` stays free of torch,
transformers and `converters`. torch itself is imported only when a baseline is loaded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from converters.hf import detect_task, load_hf_model
from converters.sources import resolve_source
from toolkit.errors import BadInputError, EdgeError
from toolkit.manifest import ModelPackage

__all__ = ["TorchBaseline", "load_torch_baseline"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TorchBaseline:
    """A loaded PyTorch model in eval mode, how long loading took, and torch's thread count."""

    model: Any
    load_ms: float
    source: str
    threads: int

    def caller(self, feeds: Mapping[str, np.ndarray]) -> Callable[[], Any]:
        """A zero-argument call running the model on `feeds` under ``torch.inference_mode``."""
        import torch

        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items()}
        model = self.model

        def call() -> Any:
            with torch.inference_mode():
                return model(**tensors)

        return call


def load_torch_baseline(package: ModelPackage, threads: int | None) -> TorchBaseline:
    """Load the package's source model with PyTorch; a one-line EdgeError says why when it cannot be."""
    source = package.manifest.source
    ref = source.recipe or source.ref
    try:
        import torch
    except ImportError as exc:
        raise BadInputError(
            f"--baseline torch needs torch and transformers ({exc.name} is missing); "
            "install them with pip install 'edge-toolkit[convert]'"
        ) from None
    if threads is not None:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    try:
        resolved = resolve_source(ref)
        model = load_hf_model(resolved.model_dir, detect_task(resolved.model_dir, package.manifest.task))
    except EdgeError as exc:
        raise BadInputError(f"the package's source '{ref}' cannot be loaded with PyTorch: {exc}") from None
    load_ms = (time.perf_counter() - started) * 1e3
    return TorchBaseline(model, load_ms, str(resolved.model_dir), torch.get_num_threads())
