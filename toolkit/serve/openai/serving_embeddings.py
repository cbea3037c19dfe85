"""OpenAI-compatible embeddings: ``POST /v1/embeddings`` over every served text model whose task serves embeddings
(`toolkit.tasks.base.ServesEmbeddings`: ``embed`` packages).

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from fastapi.responses import Response

from toolkit.errors import BadInputError
from toolkit.preprocess import l2_normalize
from toolkit.serve.bodies import decode_json_object
from toolkit.serve.engine import TextPiece, text_pieces
from toolkit.serve.errors import BodyTooLargeError
from toolkit.serve.models import PipelineModel, ServedModel, model_named
from toolkit.serve.openai.protocol import EmbeddingRequest, parse_embedding_request
from toolkit.serve.options import ServeOptions
from toolkit.serve.responses import ArrayJSONResponse
from toolkit.serve.state import ModelLabel, ServerState
from toolkit.tasks.base import ServesEmbeddings

__all__ = ["EmbeddingBatch", "EmbeddingModel", "embedding_models", "serve_embeddings"]


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

    def __init__(self, served: PipelineModel, task: ServesEmbeddings) -> None:
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
        vectors = self.task.embeddings(raw, feeds)
        if dimensions is None or dimensions == vectors.shape[-1]:
            return vectors
        return l2_normalize(vectors[:, :dimensions]).astype(np.float32, copy=False)


def embedding_models(models: Sequence[ServedModel]) -> dict[str, EmbeddingModel]:
    """The served packages whose task serves embeddings, by package name (their ``NAME-text`` models carry the
    task), each at its default version (the first the registry lists: fp32 when the package has it)."""
    found: dict[str, EmbeddingModel] = {}
    for model in models:
        if isinstance(model, PipelineModel) and isinstance(model.task, ServesEmbeddings):
            found.setdefault(model.engine.name, EmbeddingModel(model, model.task))
    return found


def _embeddings(vectors: np.ndarray, encoding_format: str) -> list[np.ndarray] | list[str]:
    """Each embedding as the body holds it: float64 rows (the float32 values as the floats a JSON list spells,
    rendered by `ArrayJSONResponse`), or base64 of the little-endian float32 bytes."""
    if encoding_format == "base64":
        return [base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") for v in vectors]
    return list(vectors.astype(np.float64))


def _prepare(
    models: Mapping[str, EmbeddingModel], options: ServeOptions, body: bytes
) -> tuple[EmbeddingRequest, EmbeddingModel, EmbeddingBatch]:
    """The checked request, its model and its batch (every limit checked before anything runs)."""
    request = parse_embedding_request(decode_json_object(body))
    model = model_named(models, request.model, "embedding")
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


async def serve_embeddings(
    state: ServerState, models: Mapping[str, EmbeddingModel], body: bytes, label: ModelLabel
) -> Response:
    """One ``/v1/embeddings`` body answered: its inputs' pieces through the model's engine, pooled."""
    parsed, model, batch = await state.decode(len(body), _prepare, models, state.options, body)
    label.model, label.version = model.name, model.served.version
    vectors = await state.run_pieces(
        model.served.engine,
        batch.pieces,
        lambda raw, feeds: model.vectors(raw, feeds, parsed.dimensions),
    )
    tokens = sum(batch.token_counts)
    return ArrayJSONResponse(
        {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": embedding}
                for i, embedding in enumerate(_embeddings(vectors, parsed.encoding_format))
            ],
            "model": model.name,
            "usage": {
                "prompt_tokens": tokens,
                "total_tokens": tokens,
                "truncated_inputs": list(batch.truncated),
            },
        },
        arrays=(vectors,),
    )
