"""The rerank routes: ``POST /v1/rerank``, ``/v2/rerank`` (Cohere's ClientV2) and ``/rerank`` (infinity's and
Jina's name), one handler (`toolkit.serve.rerank.serving`), errors in Cohere's shape."""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.responses import Response

from toolkit.serve.errors import cohere_error
from toolkit.serve.rerank.serving import RerankModel, serve_rerank
from toolkit.serve.state import ServerState

__all__ = ["RERANK_ROUTES", "mount_rerank"]

RERANK_ROUTES = ("/v1/rerank", "/v2/rerank", "/rerank")


def mount_rerank(app: FastAPI, state: ServerState, models: Mapping[str, RerankModel]) -> None:
    """Add `RERANK_ROUTES` over `models` (sharing their KServe models' scheduler, limits and metrics)."""

    async def rerank(request: Request) -> Response:
        return await state.answer(
            request, lambda body, label: serve_rerank(state, models, body, label), cohere_error
        )

    for path in RERANK_ROUTES:
        app.post(path)(rerank)
