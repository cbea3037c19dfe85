"""Cohere-compatible reranking: ``POST /v1/rerank`` (also ``/v2/rerank``, Cohere's ClientV2, and ``/rerank``, as
infinity and Jina name it) over every served ``rerank`` package.

::

    POST /v1/rerank   {"model": NAME, "query": str, "documents": [str | {"text": str}],
                       "top_n": int, "return_documents": bool}
                      -> {"id", "results": [{"index", "relevance_score", "document": {"text"}}],
                          "meta": {"api_version": {"version": "1"}, "billed_units": {"search_units": 1}},
                          "model", "usage": {"prompt_tokens", "total_tokens"}}

`model` is the package's name (as in ``/v1/models``). Results are sorted best first, `top_n` of them (all
when absent); ``document`` is there only with ``return_documents: true``. ``relevance_score`` is what
`toolkit.Reranker` gives (``CrossEncoder.predict``'s score: the package's activation over the logit). Each
(query, document) pair is one row, cut to the model's positions longest-first as sentence-transformers does.

A request runs through the dynamic batching scheduler of its model's engine, the one its KServe route uses
(pairs from many clients share runs: a request's pairs go in pieces of like length, `text_pieces`), under the same body, row (documents) and token limits, API key and
request metrics; errors are Cohere's shape, ``{"message": "<one line>"}``.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from toolkit.errors import BadInputError
from toolkit.serve.app import ModelLabel, ServerState
from toolkit.serve.errors import BodyTooLargeError, ModelNotFoundError, cohere_error
from toolkit.serve.models import RawModel, ServedModel, TextPiece, text_pieces
from toolkit.serve.options import ServeOptions
from toolkit.serve.protocol import decode_json_object
from toolkit.tasks.rerank import RerankTask

__all__ = ["RERANK_ROUTES", "RerankRequest", "mount_rerank", "parse_rerank_request", "rerank_models"]

RERANK_ROUTES = ("/v1/rerank", "/v2/rerank", "/rerank")


@dataclass(frozen=True)
class RerankRequest:
    """A checked rerank body: the query, the documents' texts, how many results, and whether to echo documents."""

    model: str
    query: str
    documents: tuple[str, ...]
    top_n: int | None
    return_documents: bool


def _document(index: int, item: Any) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, dict) and isinstance(item.get("text"), str):
        return str(item["text"])
    raise BadInputError(f"'documents[{index}]' must be a string or an object with a string 'text'")


def parse_rerank_request(body: Mapping[str, Any]) -> RerankRequest:
    """The body's fields checked for type and range (strings already valid Unicode: `decode_json_object`); a wrong
    one is a BadInputError naming it."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadInputError("'model' must be the name of a served rerank model (see GET /v1/models)")
    query = body.get("query")
    if not isinstance(query, str) or not query:
        raise BadInputError("'query' must be a non-empty string")
    documents = body.get("documents")
    if not isinstance(documents, list) or not documents:
        raise BadInputError("'documents' must be a non-empty list of strings or {\"text\": ...} objects")
    top_n = body.get("top_n")
    if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1):
        raise BadInputError(f"'top_n' must be a positive integer, got {top_n!r:.40}")
    return_documents = body.get("return_documents", False)
    if not isinstance(return_documents, bool):
        raise BadInputError("'return_documents' must be true or false")
    texts = tuple(_document(i, item) for i, item in enumerate(documents))
    return RerankRequest(model, query, texts, top_n, return_documents)


@dataclass(frozen=True)
class RerankModel:
    """One served ``rerank`` package as the rerank route sees it: its KServe raw model (whose engine and queue it
    shares) and the task that tokenizes pairs and scores them."""

    served: RawModel
    task: RerankTask

    @property
    def name(self) -> str:
        """The package's name."""
        return self.served.engine.name

    def pieces(self, request: RerankRequest, options: ServeOptions) -> tuple[list[TextPiece], int]:
        """The pairs tokenized, in pieces of like length (`text_pieces`), and their token count; over the row or
        token limit is a 413."""
        rows = len(request.documents)
        if rows > options.max_request_rows:
            raise BodyTooLargeError(
                f"model '{self.name}': the request holds {rows} documents, over the {options.max_request_rows}-row "
                "limit; split them over several requests (or raise --max-request-rows)"
            )
        pairs = self.task.pair_rows(request.query, request.documents)
        counts = [len(ids) for ids, _ in pairs]
        if rows * max(counts) > options.max_request_tokens:
            raise BodyTooLargeError(
                f"model '{self.name}': the request holds {rows * max(counts)} tokens (documents x longest pair), "
                f"over the {options.max_request_tokens}-token limit; send fewer or shorter documents per request "
                "(or raise --max-request-tokens)"
            )
        return text_pieces(self.task.data, pairs, options.batching.max_batch), sum(counts)


def rerank_models(models: Sequence[ServedModel]) -> dict[str, RerankModel]:
    """The served ``rerank`` packages by name, each at its default version (the first the registry lists)."""
    found: dict[str, RerankModel] = {}
    for model in models:
        if isinstance(model, RawModel) and isinstance(model.task, RerankTask):
            found.setdefault(model.name, RerankModel(model, model.task))
    return found


def _results(request: RerankRequest, scores: np.ndarray) -> list[dict[str, Any]]:
    order = np.argsort(-scores, kind="stable")[: request.top_n]
    results = []
    for i in order:
        result: dict[str, Any] = {"index": int(i), "relevance_score": float(scores[i])}
        if request.return_documents:
            result["document"] = {"text": request.documents[i]}
        results.append(result)
    return results


def mount_rerank(app: FastAPI, models: Mapping[str, RerankModel]) -> None:
    """Add `RERANK_ROUTES` over `models` to `app`, a KServe app from `create_app` (its state
    holds the scheduler, limits and metrics the routes share)."""
    state: ServerState = app.state.edge
    options = state.options

    def prepare(body: bytes) -> tuple[RerankRequest, RerankModel, list[TextPiece], int]:
        request = parse_rerank_request(decode_json_object(body))
        model = models.get(request.model)
        if model is None:
            raise ModelNotFoundError(
                f"model {request.model!r} is not a rerank model served here; "
                f"rerank models: {', '.join(models) or 'none'}"
            )
        return (request, model, *model.pieces(request, options))

    async def handle(body: bytes, label: ModelLabel) -> Response:
        parsed, model, pieces, tokens = await state.decode(len(body), prepare, body)
        label.model, label.version = model.name, model.served.version
        scores = await state.run_pieces(
            model.served.engine, pieces, lambda raw, _feeds: model.task.finish(raw)
        )
        return JSONResponse(
            {
                "id": str(uuid.uuid4()),
                "results": _results(parsed, scores),
                "meta": {"api_version": {"version": "1"}, "billed_units": {"search_units": 1}},
                "model": model.name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    async def rerank(request: Request) -> Response:
        return await state.answer(request, handle, cohere_error)

    for path in RERANK_ROUTES:
        app.post(path)(rerank)
