"""OpenAI-compatible embeddings: ``POST /v1/embeddings`` over every served ``embed`` package.

::

    POST /v1/embeddings   {"model": NAME, "input": str | [str] | [int] | [[int]],
                           "encoding_format": "float" | "base64", "dimensions": int, "user": str}
                          -> {"object": "list", "data": [{"object": "embedding", "index", "embedding"}],
                              "model", "usage": {"prompt_tokens", "total_tokens", "truncated_inputs"}}

`model` is the package's name (as in ``/v1/models``). Texts go through the package's tokenizer; token
arrays are the model's own input ids, sent as they are (with the special tokens the model expects), and
checked against its vocabulary. An input longer than the model's positions is cut to them, as
sentence-transformers does, and its index is listed in ``usage.truncated_inputs``; with
``--no-truncate`` (`ServeOptions.truncate`) it is a 400 instead. ``dimensions`` keeps the first N
values and normalises them again (Matryoshka-trained models); ``base64`` is the little-endian float32
bytes, as OpenAI's client decodes them.

A request runs through the same dynamic batching scheduler as the KServe routes of its model (requests
from many clients share runs; a request's inputs are split by length into pieces that batch with other
requests' pieces of like length, rather than all padded to its longest), under the same body, row and token
limits, API key and request metrics; errors are OpenAI's shape, ``{"error": {"message", "type", "code"}}``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from toolkit.errors import BadInputError
from toolkit.preprocess import l2_normalize
from toolkit.serve.app import ModelLabel, ServerState
from toolkit.serve.errors import (
    BodyTooLargeError,
    ModelNotFoundError,
    openai_error,
)
from toolkit.serve.models import PipelineModel, ServedModel, TextPiece, text_pieces
from toolkit.serve.options import ServeOptions
from toolkit.serve.protocol import decode_json_object
from toolkit.tasks.embed import EmbedTask

__all__ = ["EmbeddingBatch", "embedding_models", "mount_embeddings", "parse_embedding_request"]

_FORMATS = ("float", "base64")


@dataclass(frozen=True)
class EmbeddingRequest:
    """A checked ``/v1/embeddings`` body: texts or token-id lists (one of the two), and the output settings."""

    model: str
    texts: tuple[str, ...] | None
    token_ids: tuple[tuple[int, ...], ...] | None
    encoding_format: str
    dimensions: int | None

    @property
    def count(self) -> int:
        """How many inputs the request holds."""
        return len(self.texts if self.texts is not None else self.token_ids or ())


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_embedding_request(body: Mapping[str, Any]) -> EmbeddingRequest:
    """The request's fields checked for type and range (its strings already valid Unicode: `decode_json_object`);
    a wrong one is a BadInputError naming it."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadInputError("'model' must be the name of a served embedding model (see GET /v1/models)")
    encoding_format = body.get("encoding_format")
    if encoding_format is None:
        encoding_format = "float"
    if encoding_format not in _FORMATS:
        raise BadInputError(f"'encoding_format' must be 'float' or 'base64', got {_short(encoding_format)}")
    dimensions = body.get("dimensions")
    if dimensions is not None and (not _is_int(dimensions) or dimensions < 1):
        raise BadInputError(f"'dimensions' must be a positive integer, got {_short(dimensions)}")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise BadInputError("'user' must be a string")
    data = body.get("input")
    problem = "'input' must be a string, a list of strings, a list of token ids or a list of token-id lists"
    texts: tuple[str, ...] | None = None
    token_ids: tuple[tuple[int, ...], ...] | None = None
    if isinstance(data, str):
        texts = (data,)
    elif isinstance(data, list) and data:
        if all(isinstance(item, str) for item in data):
            texts = tuple(data)
        elif all(_is_int(item) for item in data):
            token_ids = (tuple(data),)
        elif all(isinstance(item, list) for item in data):
            for i, item in enumerate(data):
                if not item or not all(_is_int(t) for t in item):
                    raise BadInputError(f"'input[{i}]' must be a non-empty list of integer token ids")
            token_ids = tuple(tuple(item) for item in data)
        else:
            raise BadInputError(f"{problem}, not a mix")
    else:
        raise BadInputError(f"{problem}; got {_short(data)}" if data != [] else "'input' is empty; send one")
    return EmbeddingRequest(model, texts, token_ids, encoding_format, dimensions)


def _short(value: Any) -> str:
    """A value as an error message shows it: JSON, cut to 40 characters (never an object's repr)."""
    text = json.dumps(value, ensure_ascii=True, default=lambda v: type(v).__name__)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass(frozen=True)
class EmbeddingBatch:
    """A request as the model's feeds: its pieces (rows of like length, each padded alone), each input's real
    token count, and which inputs were cut to the model's positions."""

    pieces: tuple[TextPiece, ...]
    token_counts: tuple[int, ...]
    truncated: tuple[int, ...]


class EmbeddingModel:
    """One served ``embed`` package as ``/v1/embeddings`` sees it: its KServe text model (whose engine and
    queue it shares) and the task that tokenizes and pools."""

    def __init__(self, served: PipelineModel, task: EmbedTask) -> None:
        self.served = served
        self.task = task
        self.name = served.engine.name
        self.dimension = int(served.outputs[0].shape[-1])

    def batch(self, request: EmbeddingRequest, options: ServeOptions) -> EmbeddingBatch:
        """Tokenize (texts) or check (token ids), cut to the model's positions (or refuse), and pad."""
        tokenizer = self.task.data.tokenizer
        limit = tokenizer.max_length
        rows: list[tuple[list[int], list[int]]] = []
        truncated: list[int] = []
        if request.texts is not None:
            for index, encoding in enumerate(tokenizer.encodings(request.texts)):
                if encoding.overflowing:
                    truncated.append(index)
                rows.append((encoding.ids, encoding.type_ids))
        else:
            vocab = tokenizer.vocab_size
            for index, ids in enumerate(request.token_ids or ()):
                bad = next((t for t in ids if not 0 <= t < vocab), None)
                if bad is not None:
                    raise BadInputError(
                        f"'input[{index}]': token id {bad} is outside the model's vocabulary [0, {vocab - 1}]; "
                        f"send ids from model '{self.name}''s tokenizer"
                    )
                if len(ids) > limit:
                    truncated.append(index)
                rows.append((list(ids[:limit]), [0] * min(len(ids), limit)))
        if truncated and not options.truncate:
            raise BadInputError(
                f"input {truncated[0]} is longer than model '{self.name}''s {limit} positions; shorten it "
                "(this server runs with --no-truncate)"
            )
        counts = tuple(len(ids) for ids, _ in rows)
        tokens = len(rows) * max(counts)
        if tokens > options.max_request_tokens:
            raise BodyTooLargeError(
                f"model '{self.name}': the request holds {tokens} tokens (inputs x longest), over the "
                f"{options.max_request_tokens}-token limit; send fewer or shorter inputs per request "
                "(or raise --max-request-tokens)"
            )
        pieces = text_pieces(self.task.data, rows, options.batching.max_batch)
        return EmbeddingBatch(tuple(pieces), counts, tuple(truncated))

    def vectors(
        self, raw: Mapping[str, np.ndarray], feeds: Mapping[str, np.ndarray], dimensions: int | None
    ) -> np.ndarray:
        """The pooled embeddings float32 [N, dim] of one piece, cut to `dimensions` and normalised again when asked."""
        vectors = self.task.serve(raw, feeds)["embedding"]
        if dimensions is None or dimensions == vectors.shape[-1]:
            return vectors
        return l2_normalize(vectors[:, :dimensions]).astype(np.float32, copy=False)


def embedding_models(models: Sequence[ServedModel]) -> dict[str, EmbeddingModel]:
    """The served ``embed`` packages by package name (their ``NAME-text`` models carry the task), each at its
    default version (the first the registry lists: fp32 when the package has it)."""
    found: dict[str, EmbeddingModel] = {}
    for model in models:
        if isinstance(model, PipelineModel) and isinstance(model.task, EmbedTask):
            found.setdefault(model.engine.name, EmbeddingModel(model, model.task))
    return found


def _encode(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return [float(v) for v in vector]


def mount_embeddings(app: FastAPI, models: Mapping[str, EmbeddingModel]) -> None:
    """Add ``POST /v1/embeddings`` over `models` to `app`, a KServe app from `create_app` (its state holds the
    scheduler, limits and metrics the route shares)."""
    state: ServerState = app.state.edge
    options = state.options

    def prepare(body: bytes) -> tuple[EmbeddingRequest, EmbeddingModel, EmbeddingBatch]:
        request = parse_embedding_request(decode_json_object(body))
        model = models.get(request.model)
        if model is None:
            raise ModelNotFoundError(
                f"model {request.model!r} is not an embedding model served here; "
                f"embedding models: {', '.join(models) or 'none'}"
            )
        if request.dimensions is not None and request.dimensions > model.dimension:
            raise BadInputError(
                f"'dimensions' {request.dimensions} is over model '{model.name}''s {model.dimension}; "
                f"ask for {model.dimension} or fewer"
            )
        if request.count > options.max_request_rows:
            raise BodyTooLargeError(
                f"model '{model.name}': the request holds {request.count} inputs, over the "
                f"{options.max_request_rows}-row limit; split it (or raise --max-request-rows)"
            )
        return request, model, model.batch(request, options)

    async def handle(body: bytes, label: ModelLabel) -> Response:
        parsed, model, batch = await state.decode(len(body), prepare, body)
        label.model, label.version = model.name, model.served.version
        vectors = await state.run_pieces(
            model.served.engine,
            batch.pieces,
            lambda raw, feeds: model.vectors(raw, feeds, parsed.dimensions),
        )
        tokens = sum(batch.token_counts)
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {"object": "embedding", "index": i, "embedding": _encode(v, parsed.encoding_format)}
                    for i, v in enumerate(vectors)
                ],
                "model": model.name,
                "usage": {
                    "prompt_tokens": tokens,
                    "total_tokens": tokens,
                    "truncated_inputs": list(batch.truncated),
                },
            }
        )

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        return await state.answer(request, handle, openai_error)
