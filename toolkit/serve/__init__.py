"""`edge serve`: model packages behind several protocols over one scheduler and one composition root.

The core, each module usable alone: `engine` (the `Engine` that merges, runs and splits batches), `batching`
(the scheduler: per-engine queues), `decoding` (encoder-decoders' decoding pipelines as engines and served
models), `continuous` (the generators' step-level batching), `tensors` (the request every served model
takes), `models` (the served-model adapters: request -> job), `registry` (which models each package serves,
by task family), `bodies` (request bodies within the limits), `state` (what an app serves with, and the one
metrics/limits shell of every route), `metrics` (Prometheus), `app` (the composition root: `create_app`,
`build_serving_app`), `server` (uvicorn), `ray_app` (Ray Serve). The protocols, one folder each (`api_router`
routes, `protocol` request parsing, `serving` the logic): `kserve` (Open Inference Protocol v2), `openai`
(completions, chat, embeddings, models, tools), `triton` (generate), `rerank` (Cohere). fastapi, uvicorn and
prometheus_client are imported only by the app, the routers, `server` and `metrics`; ``import toolkit``
imports none of this.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from toolkit.serve.batching import BatchingScheduler, DirectScheduler, DynamicBatcher, Scheduler
from toolkit.serve.engine import Engine
from toolkit.serve.errors import (
    BodyTooLargeError,
    InferenceTimeoutError,
    ModelNotFoundError,
    QueueFullError,
    ServerClosingError,
)
from toolkit.serve.models import ServedModel
from toolkit.serve.options import BatchOptions, ServeOptions
from toolkit.serve.registry import LoadOptions, ModelRegistry

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
