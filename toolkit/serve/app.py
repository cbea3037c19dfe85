"""The composition root: one app from model packages. It opens the packages (`toolkit.serve.registry`: served
models by name and version, generators among them), builds the one scheduler, the generators' service, metrics
and state (`ServerState`), and mounts every protocol that has models to answer:

    GET  /v2/health/live                       200 {"live": true}
    GET  /v2/health/ready                      200 {"ready": true}; 503 while shutting down
    GET  /metrics                              Prometheus text format
    KServe v2 (`toolkit.serve.kserve`)         over every model (a generator: metadata and readiness; infer 400)
    POST /v1/embeddings                        over models whose task serves embeddings
    POST /v1/rerank, /v2/rerank, /rerank       over models whose task reranks (`toolkit.serve.rerank`)
    /v1/completions, /v1/chat/completions      over the generators (`toolkit.serve.openai`)
    /v2/models/M/generate[_stream]             over the generators (`toolkit.serve.triton`)
    GET  /v1/models                            whenever a /v1 route is served

`create_app` holds all state in the app it returns (no module globals) and needs nothing from uvicorn, so another
host (Ray Serve) can mount it; pass ``scheduler=`` to replace dynamic batching.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from toolkit.errors import BadInputError, EdgeError
from toolkit.serve.access import require_api_key
from toolkit.serve.batching import BatchingScheduler, Scheduler
from toolkit.serve.continuous import GenerationService
from toolkit.serve.errors import error_response, json_error, openai_error
from toolkit.serve.kserve.api_router import mount_kserve
from toolkit.serve.kserve.serving import SERVER_NAME
from toolkit.serve.metrics import ServeMetrics
from toolkit.serve.models import generator_models
from toolkit.serve.openai.api_router import mount_completions, mount_embeddings, mount_model_list
from toolkit.serve.openai.serving_embeddings import embedding_models
from toolkit.serve.options import ServeOptions
from toolkit.serve.registry import LoadOptions, ModelRegistry
from toolkit.serve.rerank.api_router import mount_rerank
from toolkit.serve.rerank.serving import rerank_models
from toolkit.serve.state import ServerState, log_internal
from toolkit.serve.triton.api_router import mount_generate

__all__ = ["ServingApp", "build_serving_app", "create_app"]


@dataclass(frozen=True)
class ServingApp:
    """What `edge serve` (and each Ray replica) serves: the app, its registry, and the generators' service
    (None: no generator served)."""

    app: FastAPI
    registry: ModelRegistry
    service: GenerationService | None = None

    def abort(self) -> None:
        """A forced shutdown of everything served: waiting requests are answered 503 now."""
        state: ServerState = self.app.state.edge
        state.abort()


def build_serving_app(paths: Sequence[str | Path], load: LoadOptions, options: ServeOptions) -> ServingApp:
    """Every package behind the KServe v2 routes, generators also behind the OpenAI-compatible and Triton
    generate routes, embedders behind ``/v1/embeddings``, rerankers behind ``/v1/rerank``; one app."""
    registry = ModelRegistry.load(paths, load)
    app = _compose(registry, options)
    return ServingApp(app, registry, app.state.edge.generation)


def create_app(
    registry: ModelRegistry,
    options: ServeOptions | None = None,
    *,
    scheduler: Scheduler | None = None,
    metrics: ServeMetrics | None = None,
) -> FastAPI:
    """The app over `registry`'s models; `scheduler` defaults to dynamic batching per `options.batching`."""
    return _compose(registry, options or ServeOptions(), scheduler, metrics)


def _compose(
    registry: ModelRegistry,
    options: ServeOptions,
    scheduler: Scheduler | None = None,
    metrics: ServeMetrics | None = None,
) -> FastAPI:
    """Build the state (one scheduler, the generators' service, one metrics) and the app, and mount every
    protocol that has models."""
    _check_workers(registry, options)
    metrics = metrics or ServeMetrics()
    generators = generator_models(registry)
    service = GenerationService(generators, options, metrics) if generators else None
    state = ServerState(
        registry,
        options,
        scheduler or BatchingScheduler(options.batching, observer=metrics),
        metrics,
        service,
    )
    # a server of generators alone answers unknown paths in OpenAI's shape, as its clients expect
    app = _app(state, kserve_shape=len(generators) < len(list(registry)))
    _mount_common(app, state)
    names = _mount_tensor_protocols(app, state, registry)
    if service is not None:
        mount_completions(app, state, service)
        mount_generate(app, state, service)
        names = [*service.names(), *names]
    if names:
        mount_model_list(app, names)
    return app


def _check_workers(registry: ModelRegistry, options: ServeOptions) -> None:
    if options.batching.workers > 1:
        bound = [e.name for e in registry.engines() if e.runner.config.io_binding]
        if bound:
            raise BadInputError(
                f"model '{bound[0]}' uses IO binding, whose device buffers one thread at a time may use; "
                "use --workers 1 or drop --io-binding"
            )


def _app(state: ServerState, kserve_shape: bool) -> FastAPI:
    """The FastAPI app holding `state`, closing it when the host stops, behind the API key when there is one;
    errors outside a route are the KServe shape when `kserve_shape` (tensor models are served), else OpenAI's."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        # The host has stopped sending requests (uvicorn drains connections first); finish what is queued.
        await state.aclose()

    app = FastAPI(title=SERVER_NAME, lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.edge = state
    if state.options.api_key is not None:
        app.middleware("http")(require_api_key(state.options.api_key))
    if kserve_shape:
        _kserve_errors(app)
    else:
        _openai_errors(app)
    _edge_errors(app)
    return app


def _kserve_errors(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        detail = exc.detail
        if exc.status_code == 404:
            detail = f"no endpoint {request.url.path}; the KServe v2 endpoints are under /v2 (see GET /v2)"
        elif exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}"
        return json_error(exc.status_code, str(detail))

    _internal_errors(app, error_response)


def _edge_errors(app: FastAPI) -> None:
    """The KServe routes' own errors (an unknown model's metadata): the KServe shape, whatever else is served."""

    @app.exception_handler(EdgeError)
    async def edge_error(_request: Request, exc: EdgeError) -> Response:
        return error_response(exc)


def _openai_errors(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        detail = f"no endpoint {request.url.path}" if exc.status_code == 404 else str(exc.detail)
        return JSONResponse(
            {"error": {"message": detail, "type": "invalid_request_error", "code": None}},
            status_code=exc.status_code,
        )

    _internal_errors(app, openai_error)


def _internal_errors(app: FastAPI, render: Callable[[BaseException], Response]) -> None:
    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> Response:
        log_internal(f"{request.method} {request.url.path}", exc)
        return render(exc)


def _mount_common(app: FastAPI, state: ServerState) -> None:
    """Liveness, readiness and the metrics: every app's."""

    @app.get("/v2/health/live")
    async def live() -> dict[str, Any]:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready() -> JSONResponse:
        if not state.ready:
            return JSONResponse({"ready": False, "error": "the server is shutting down"}, status_code=503)
        return JSONResponse({"ready": True})

    @app.get("/metrics")
    async def prometheus() -> Response:
        body, content_type = state.metrics.render()
        return Response(body, media_type=content_type)


def _mount_tensor_protocols(app: FastAPI, state: ServerState, registry: ModelRegistry) -> list[str]:
    """KServe v2 over every model, and the /v1 routes whose tasks the models serve; the /v1 names."""
    mount_kserve(app, state, registry)
    embedders = embedding_models(list(registry))
    if embedders:
        mount_embeddings(app, state, embedders)
    rerankers = rerank_models(list(registry))
    if rerankers:
        mount_rerank(app, state, rerankers)
    return [*embedders, *rerankers]
