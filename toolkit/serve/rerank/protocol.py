"""The rerank routes' request body (Cohere's shape), checked field by field."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from toolkit.errors import BadInputError

__all__ = ["RerankRequest", "parse_rerank_request"]


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
