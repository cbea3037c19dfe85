"""Cohere-compatible reranking: ``POST /v1/rerank`` (also ``/v2/rerank``, Cohere's ClientV2, and ``/rerank``, as
infinity and Jina name it) over every served model whose task
reranks (`toolkit.tasks.base.ServesRerank`: ``rerank`` packages).

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
from fastapi.responses import JSONResponse, Response

from toolkit.serve.bodies import decode_json_object
from toolkit.serve.engine import TextPiece, text_pieces
from toolkit.serve.errors import BodyTooLargeError
from toolkit.serve.models import RawModel, ServedModel, model_named
from toolkit.serve.options import ServeOptions
from toolkit.serve.rerank.protocol import RerankRequest, parse_rerank_request
from toolkit.serve.state import ModelLabel, ServerState
from toolkit.tasks.base import ServesRerank

__all__ = ["RerankModel", "rerank_models", "serve_rerank"]


@dataclass(frozen=True)
class RerankModel:
    """One served ``rerank`` package as the rerank route sees it: its KServe raw model (whose engine and queue it
    shares) and the task that tokenizes pairs and scores them."""

    served: RawModel
    task: ServesRerank

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
    """The served packages whose task reranks, by name, each at its default version (the first the registry
    lists)."""
    found: dict[str, RerankModel] = {}
    for model in models:
        if isinstance(model, RawModel) and isinstance(model.task, ServesRerank):
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


def _prepare(
    models: Mapping[str, RerankModel], options: ServeOptions, body: bytes
) -> tuple[RerankRequest, RerankModel, list[TextPiece], int]:
    request = parse_rerank_request(decode_json_object(body))
    model = model_named(models, request.model, "rerank")
    return (request, model, *model.pieces(request, options))


async def serve_rerank(
    state: ServerState, models: Mapping[str, RerankModel], body: bytes, label: ModelLabel
) -> Response:
    """One rerank body answered: its pairs' pieces through the model's engine, scored and sorted."""
    parsed, model, pieces, tokens = await state.decode(len(body), _prepare, models, state.options, body)
    label.model, label.version = model.name, model.served.version
    scores = await state.run_pieces(
        model.served.engine, pieces, lambda raw, _feeds: model.task.relevance_scores(raw)
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
