"""OpenAI request bodies, checked field by field (a wrong one is a one-line 400 naming it): completions and
chat completions (`completion_request`), embeddings (`parse_embedding_request`)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from toolkit.decoding import GenerationOptions
from toolkit.decoding.grammar import OutputConstraint, constraint_from
from toolkit.decoding.sampling import MAX_TOP_LOGPROBS
from toolkit.errors import BadInputError
from toolkit.serve.generation_params import choice_count, flag, generation_options, number
from toolkit.serve.openai.tools import ToolRequest, tool_request
from toolkit.tasks.generate import TextGenerator

__all__ = ["CompletionRequest", "EmbeddingRequest", "completion_request", "parse_embedding_request"]

_FORMATS = ("float", "base64")


def _per_choice(options: GenerationOptions, n: int) -> tuple[GenerationOptions, ...]:
    """One row's options per choice: choice i gets seed + i, so it equals a single request with that seed."""
    if options.seed is None:
        return (options,) * n
    return tuple(replace(options, seed=(options.seed + i) % 2**64) for i in range(n))


def _top_logprobs(body: Mapping[str, Any], chat: bool) -> int | None:
    """How many alternatives each token's log-probability comes with (None: no log-probabilities): chat's
    ``logprobs: true`` with ``top_logprobs``, the completions route's ``logprobs`` number."""
    if chat:
        top = number(body, "top_logprobs", int)
        if not flag(body, "logprobs"):
            if top is not None:
                raise BadInputError("'top_logprobs' needs 'logprobs': true")
            return None
        top, key = top or 0, "top_logprobs"
    else:
        top, key = number(body, "logprobs", int), "logprobs"
        if top is None:
            return None
    if not 0 <= top <= MAX_TOP_LOGPROBS:
        raise BadInputError(f"'{key}' must be an integer from 0 to {MAX_TOP_LOGPROBS}, got {top}")
    return int(top)


_FORMAT_HINT = (
    '{"type": "text"}, {"type": "json_object"} or {"type": "json_schema", "json_schema": {"name": ..., '
    '"schema": {...}}}'
)


def _response_format(body: Mapping[str, Any]) -> OutputConstraint | None:
    """The grammar OpenAI's ``response_format`` holds the reply to (a json_schema is always held to, strict
    or not)."""
    format_ = body.get("response_format")
    if format_ is None:
        return None
    kind = format_.get("type") if isinstance(format_, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return OutputConstraint("json_object")
    spec = format_.get("json_schema") if kind == "json_schema" and isinstance(format_, dict) else None
    if not isinstance(spec, dict):
        raise BadInputError(f"'response_format' must be {_FORMAT_HINT}")
    schema = spec.get("schema", {"type": "object"})
    if not isinstance(schema, dict):
        raise BadInputError("'response_format.json_schema.schema' must be a JSON Schema object")
    if not isinstance(spec.get("strict", False), bool | None):
        raise BadInputError("'response_format.json_schema.strict' must be true or false")
    return constraint_from(json_schema=schema)


@dataclass(frozen=True)
class CompletionRequest:
    """An OpenAI generation request, checked: its prompt, one options per choice, how it answers."""

    prompt: Any
    choices: tuple[GenerationOptions, ...]
    stream: bool
    include_usage: bool
    tools: ToolRequest | None


def completion_request(
    generator: TextGenerator, body: Mapping[str, Any], chat: bool, max_n: int
) -> CompletionRequest:
    """The request `body` of a chat (`chat`) or completions route, every field checked (one-line 400s)."""
    options = generation_options(generator, body)
    constraint = _response_format(body)
    tools = tool_request(body) if chat else None
    if not chat and body.get("tools") is not None:
        raise BadInputError("'tools' are for /v1/chat/completions; send messages there")
    if tools is not None and tools.constraint is not None:
        if constraint is not None:
            raise BadInputError(
                "'response_format' and a required or named 'tool_choice' both constrain the reply; send one"
            )
        constraint = tools.constraint
    options = replace(options, constraint=constraint, top_logprobs=_top_logprobs(body, chat))
    n = choice_count(body, max_n, "--max-n")
    if chat:
        prompt: Any = body.get("messages")
        if not isinstance(prompt, list):
            raise BadInputError('\'messages\' must be a list of {"role", "content"} objects')
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise BadInputError("'prompt' must be a string (one prompt per request)")
    return CompletionRequest(prompt, _per_choice(options, n), _streams(body), _include_usage(body), tools)


def _streams(body: Mapping[str, Any]) -> bool:
    """The request's ``stream``, checked (a string "false" would otherwise read as true)."""
    return flag(body, "stream")


def _include_usage(body: Mapping[str, Any]) -> bool:
    stream_options = body.get("stream_options")
    if stream_options is None:
        return False
    if not isinstance(stream_options, dict):
        raise BadInputError("'stream_options' must be an object like {\"include_usage\": true}")
    return flag(stream_options, "include_usage", "stream_options.")


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
