"""`edge serve`: model packages behind the Open Inference Protocol (KServe v2 REST), with dynamic batching.

Layers, each usable alone: `protocol` (v2 messages, JSON and Triton binary tensors), `models` (served
models, the registry, and the `Engine` that merges, runs and splits batches), `batching` (per-engine
queues), `metrics` (Prometheus), `app` (`create_app`, FastAPI), `server` (uvicorn). fastapi, uvicorn and
prometheus_client are imported only by `app`, `server` and `metrics`; ``import toolkit`` imports none of this.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from toolkit.serve.batching import BatchingScheduler, DirectScheduler, DynamicBatcher, Scheduler
from toolkit.serve.errors import (
    BodyTooLargeError,
    InferenceTimeoutError,
    ModelNotFoundError,
    QueueFullError,
    ServerClosingError,
)
from toolkit.serve.models import Engine, LoadOptions, ModelRegistry, ServedModel
from toolkit.serve.options import BatchOptions, ServeOptions

if TYPE_CHECKING:
    from toolkit.serve.app import create_app
    from toolkit.serve.server import run_server

__all__ = [
    "BatchOptions",
    "BatchingScheduler",
    "BodyTooLargeError",
    "DirectScheduler",
    "DynamicBatcher",
    "Engine",
    "InferenceTimeoutError",
    "LoadOptions",
    "ModelNotFoundError",
    "ModelRegistry",
    "QueueFullError",
    "Scheduler",
    "ServeOptions",
    "ServedModel",
    "ServerClosingError",
    "create_app",
    "run_server",
]


def __getattr__(name: str) -> Any:
    # The web stack loads only when asked for, so the registry and protocol stay importable without it.
    if name == "create_app":
        from toolkit.serve.app import create_app

        return create_app
    if name == "run_server":
        from toolkit.serve.server import run_server

        return run_server
    raise AttributeError(f"module 'toolkit.serve' has no attribute {name!r}")
