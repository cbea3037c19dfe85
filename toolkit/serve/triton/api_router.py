"""Triton's generate extension routes: ``POST /v2/models/M/generate`` and ``/v2/models/M/generate_stream``."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import Response

from toolkit.serve.continuous import GenerationService
from toolkit.serve.errors import error_response
from toolkit.serve.state import ModelLabel, ServerState
from toolkit.serve.triton.serving import triton_generate

__all__ = ["mount_generate"]


def mount_generate(app: FastAPI, state: ServerState, service: GenerationService) -> None:
    """Add the generate routes over `service`'s generators (counted under the model when it is served)."""

    async def generate_route(request: Request, name: str, stream: bool) -> Response:
        label = ModelLabel()
        if name in service.workers:
            label.model = name
        return await state.observed(
            label,
            f"{request.method} {request.url.path}",
            lambda: triton_generate(service, request, name, stream),
            error_response,
        )

    @app.post("/v2/models/{name}/generate")
    async def generate(request: Request, name: str) -> Response:
        return await generate_route(request, name, stream=False)

    @app.post("/v2/models/{name}/generate_stream")
    async def generate_stream(request: Request, name: str) -> Response:
        return await generate_route(request, name, stream=True)
