"""Request bodies: read within the server's size and time limits, decompressed, and parsed as JSON.

A body must arrive within ``body_timeout_s`` (408); one over ``max_body_bytes`` after decompression is read to its
end, then refused (413); gzip and deflate (tritonclient's request compression) are inflated with the same bound.
Bodies over `OFF_LOOP_BYTES` are parsed on a worker thread, so the event loop keeps answering.
"""

from __future__ import annotations

import asyncio
import json
import sys
import zlib
from typing import TYPE_CHECKING, Any

from toolkit.errors import BadInputError
from toolkit.serve.errors import BodyTimeoutError, BodyTooLargeError, ClientGoneError
from toolkit.serve.options import ServeOptions

if TYPE_CHECKING:
    from starlette.requests import Request

__all__ = ["OFF_LOOP_BYTES", "decode_json_object", "read_body", "read_json_body"]

# Content-Encoding -> zlib wbits (tritonclient's request_compression_algorithm sends gzip or deflate).
_DECODINGS = {"gzip": 31, "deflate": 15, "identity": 0}

# Bodies larger than this are decoded and tokenized on a worker thread, not on the event loop.
OFF_LOOP_BYTES = 256 * 1024


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The body, at most `limit` bytes after decompression, within `timeout_s`; a larger one is read to its
    end, then refused; one that stops arriving is a BodyTimeoutError (408), a client gone a ClientGoneError."""
    from starlette.requests import ClientDisconnect

    try:
        return await asyncio.wait_for(_receive_body(request, limit), timeout_s)
    except TimeoutError:
        raise BodyTimeoutError(
            f"the request body did not arrive within {timeout_s:.3g} s "
            f"(Content-Length {request.headers.get('content-length', 'not given')}); send the whole body"
        ) from None
    except ClientDisconnect:
        raise ClientGoneError("the client disconnected while sending the body") from None


async def _receive_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
    # Read to the end even when too large: answering mid-upload would reset the client's connection
    # before it reads the 413.
    if size > limit:
        raise BodyTooLargeError(
            f"request body is {size} bytes (declared {declared or 'no length'}), over the {limit}-byte limit; "
            "send fewer rows per request or raise --max-body-mb"
        )
    return _decompressed(request, b"".join(chunks), limit)


def _decompressed(request: Request, body: bytes, limit: int) -> bytes:
    """The body inflated as its Content-Encoding says, still within `limit`."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in _DECODINGS:
        raise BadInputError(f"Content-Encoding {encoding!r} is not supported; send gzip, deflate or none")
    if not _DECODINGS[encoding]:
        return body
    inflater = zlib.decompressobj(_DECODINGS[encoding])
    try:
        body = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise BadInputError(f"request body is not valid {encoding} data ({exc})") from None
    if len(body) > limit:
        raise BodyTooLargeError(
            f"request body decompresses to over the {limit}-byte limit; send less or raise --max-body-mb"
        )
    return body


def _no_constant(name: str) -> Any:
    raise BadInputError(f"request JSON holds {name}, which is not a JSON number; send a finite number")


def _check_text(value: str, where: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadInputError(f"{where} holds a lone surrogate (\\ud800-\\udfff); send valid Unicode") from None


def decode_json_object(body: bytes) -> dict[str, Any]:
    """A JSON request body (the OpenAI and generate routes) as a dict: NaN and Infinity refused, every string
    valid Unicode (a lone surrogate escape would fail later, deep in tokenizing or rendering an answer)."""
    try:
        parsed = json.loads(body, parse_constant=_no_constant)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadInputError(f"request body is not JSON ({type(exc).__name__} at {_position(exc)})") from None
    except ValueError:  # Python parses no integer of more than sys.get_int_max_str_digits() digits
        raise BadInputError(
            f"request JSON holds an integer of more than {sys.get_int_max_str_digits()} digits; send a smaller one"
        ) from None
    except RecursionError:
        raise BadInputError(
            f"request JSON is nested deeper than the server parses (about {sys.getrecursionlimit()} levels)"
        ) from None
    if not isinstance(parsed, dict):
        raise BadInputError("request body must be a JSON object")
    pending: list[tuple[Any, str]] = [(parsed, "the request")]
    while pending:
        value, where = pending.pop()
        if isinstance(value, str):
            _check_text(value, where)
        elif isinstance(value, dict):
            for key, item in value.items():
                _check_text(key, where)
                name = json.dumps(key, ensure_ascii=True)[1:-1][:40]  # a key is client text: escaped, cut
                pending.append((item, f"'{name}'" if where == "the request" else f"{where}.{name}"))
        elif isinstance(value, list):
            pending.extend((item, f"{where}[{i}]") for i, item in enumerate(value))
    return parsed


def _position(exc: ValueError) -> str:
    return f"char {exc.pos}" if isinstance(exc, json.JSONDecodeError) else f"byte {getattr(exc, 'start', 0)}"


async def read_json_body(request: Request, options: ServeOptions) -> dict[str, Any]:
    """The body as one JSON object, read within `options`' limits."""
    raw = await read_body(request, options.max_body_bytes, options.body_timeout_s)
    if len(raw) > OFF_LOOP_BYTES:  # an 8 MB prompt is parsed and checked while the loop answers others
        return await asyncio.get_running_loop().run_in_executor(None, decode_json_object, raw)
    return decode_json_object(raw)
