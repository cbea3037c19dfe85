"""The Open Inference Protocol (KServe v2) REST routes over a `ModelRegistry`.

Endpoints (``[/versions/V]``: also under a version; a version is a variant name, see `toolkit.serve.models`)::

    GET  /v2                                   server metadata: name, version, extensions
    GET  /v2/models/M[/versions/V]             model metadata: versions, platform, inputs, outputs
    GET  /v2/models/M[/versions/V]/ready       200 {"name", "ready": true}; 404 unknown
    GET  /v2/models/M[/versions/V]/config      Triton's model configuration (JSON), for tritonclient
    POST /v2/models/M[/versions/V]/infer       inference, JSON or Triton binary tensors (a generator: 400
                                               naming its generate routes)
    POST /v2/repository/index                  Triton's model repository index

(``/v2/health/live``, ``/v2/health/ready`` and ``/metrics`` are every app's: `toolkit.serve.app`.) Every error is
``{"error": "<one line>"}`` with the status of `toolkit.serve.errors.STATUS_CODES`: 400 malformed request or
wrong input, 401 missing or wrong API key, 404 unknown model or version (or path), 408 body not received in
time, 413 body, rows or tokens over the limit, 503 queue full or shutting down (with ``Retry-After``), 504
timeout, 500 a bug (logged with its type and message; the traceback with ``--debug``). A client that disconnects
is counted as 499. Rendering an error never raises: messages are ASCII-escaped JSON with internal paths cut out
(`public_message`).

Hostile clients are bounded: a body must arrive within ``body_timeout_s`` (408), bodies over 256 KB are decoded
and tokenized on a worker thread (the event loop keeps answering), JSON deeper than the interpreter's recursion
limit is a 400, and a request may hold at most ``max_request_rows`` rows and ``max_request_tokens`` tokens (413)
before anything is tokenized or run.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from toolkit.serve.bodies import read_body
from toolkit.serve.errors import error_response
from toolkit.serve.kserve.protocol import HEADER_LENGTH
from toolkit.serve.kserve.serving import (
    EXTENSIONS,
    SERVER_NAME,
    header_length,
    infer,
    model_config,
    model_metadata,
)
from toolkit.serve.registry import ModelRegistry
from toolkit.serve.state import ModelLabel, ServerState

__all__ = ["mount_kserve"]


def mount_kserve(app: FastAPI, state: ServerState, registry: ModelRegistry) -> None:
    """Add the KServe v2 routes over `registry` to `app`."""
    _mount_metadata(app, state, registry)
    _mount_infer(app, state, registry)


def _mount_metadata(app: FastAPI, state: ServerState, registry: ModelRegistry) -> None:
    @app.get("/v2")
    async def server_metadata() -> dict[str, Any]:
        from toolkit import __version__

        return {"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)}

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def metadata(name: str, version: str | None = None) -> dict[str, Any]:
        return model_metadata(registry, registry.get(name, version))

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(name: str, version: str | None = None) -> JSONResponse:
        model = registry.get(name, version)
        if state.closing:
            return JSONResponse({"name": model.name, "ready": False}, status_code=503)
        return JSONResponse({"name": model.name, "ready": True})

    @app.get("/v2/models/{name}/config")
    @app.get("/v2/models/{name}/versions/{version}/config")
    async def config(name: str, version: str | None = None) -> dict[str, Any]:
        return model_config(state, registry.get(name, version))

    @app.post("/v2/repository/index")
    async def repository_index() -> list[dict[str, Any]]:
        return [{"name": m.name, "version": m.version, "state": "READY"} for m in registry]


def _mount_infer(app: FastAPI, state: ServerState, registry: ModelRegistry) -> None:
    options = state.options

    @app.post("/v2/models/{name}/infer")
    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer_route(request: Request, name: str, version: str | None = None) -> Response:
        label = ModelLabel()

        async def work() -> Response:
            state.check_open()
            model = registry.get(name, version)
            label.model, label.version = model.name, model.version
            model.check_inferable()
            body = await read_body(request, options.max_body_bytes, options.body_timeout_s)
            encoded = await infer(state, model, body, header_length(request.headers.get(HEADER_LENGTH)))
            return Response(encoded.body, headers=encoded.headers())

        return await state.observed(label, f"inference on model {name!r}", work, error_response)
