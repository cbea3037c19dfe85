"""The OpenAI-compatible routes::

    GET  /v1/models                 every model the /v1 routes answer to (generators, embedders, rerankers)
    POST /v1/completions            {"model", "prompt", "max_tokens", "temperature", "top_p", "stop", "seed",
                                     "stream", "n", "logprobs" (k alternatives), "presence_penalty",
                                     "frequency_penalty", "response_format", and the extensions "top_k",
                                     "repetition_penalty"}
    POST /v1/chat/completions       {"model", "messages", ...the same settings; "max_completion_tokens",
                                     "logprobs": true with "top_logprobs", "tools" and "tool_choice" too}
    POST /v1/embeddings             `toolkit.serve.openai.serving_embeddings`

Each request passes through the server's one shell (`ServerState.observed`): counted in /metrics under the model
it names, errors in OpenAI's shape.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from toolkit.serve.continuous import GenerationService
from toolkit.serve.errors import openai_error
from toolkit.serve.openai.serving import serve_completion
from toolkit.serve.openai.serving_embeddings import EmbeddingModel, serve_embeddings
from toolkit.serve.state import ModelLabel, ServerState

__all__ = ["mount_completions", "mount_embeddings", "mount_model_list"]


def mount_model_list(app: FastAPI, names: Sequence[str]) -> None:
    """Add ``GET /v1/models``: every model the ``/v1`` routes answer to (generators, embedders, rerankers)."""

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {"id": name, "object": "model", "created": 0, "owned_by": "edge-toolkit"} for name in names
            ],
        }


def mount_completions(app: FastAPI, state: ServerState, service: GenerationService) -> None:
    """Add ``/v1/completions`` and ``/v1/chat/completions`` over `service`'s generators."""

    async def completion(request: Request, chat: bool) -> Response:
        label = ModelLabel()
        return await state.observed(
            label,
            f"{request.method} {request.url.path}",
            lambda: serve_completion(service, request, chat, label),
            openai_error,
        )

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await completion(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await completion(request, chat=True)


def mount_embeddings(app: FastAPI, state: ServerState, models: Mapping[str, EmbeddingModel]) -> None:
    """Add ``POST /v1/embeddings`` over `models` (sharing their KServe models' scheduler, limits and metrics)."""

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        return await state.answer(
            request, lambda body, label: serve_embeddings(state, models, body, label), openai_error
        )
