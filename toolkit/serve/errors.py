"""Errors of the inference server, each placed in edge-toolkit's one exception tree with its HTTP status.

::

    EdgeError
     ├── BadInputError                400  malformed JSON, wrong input name / shape / datatype
     │    ├── ModelNotFoundError      404  no such model or version
     │    ├── WrongRouteError         400  the model is served by other routes (a generator's KServe infer)
     │    ├── BodyTooLargeError       413  request body over --max-body-mb, or rows/tokens over
     │    │                                --max-request-rows / --max-request-tokens
     │    ├── BodyTimeoutError        408  the body did not arrive within --body-timeout-s
     │    └── UnauthorizedError       401  --api-key is set and the request has no matching bearer token
     ├── BadModelError                500  the model itself failed (a bug or a broken package)
     ├── QueueFullError               503  the model's queue holds --max-queue requests already
     ├── ServerClosingError           503  the server is shutting down
     ├── ClientGoneError              499  the client disconnected before its answer (nginx's code; only logged)
     └── InferenceTimeoutError        504  no answer within --timeout-ms (or the request's own timeout)

504 rather than 503 for timeouts so a client can tell "the server is overloaded, retry" (503, answered at
once) from "the request waited and gave up" (504). `status_for` reads the table, nearest class first.

`public_message` is what a client sees of an error: onnxruntime's source paths and graph node names are
cut out (they are logged; the server's own routes, which a `WrongRouteError` names, stay), as are object
addresses (``<_io.BytesIO object at 0x...>``), and the text is made safe to encode whatever the request held.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

from toolkit.errors import BadInputError, BadModelError, EdgeError

__all__ = [
    "STATUS_CODES",
    "BodyTimeoutError",
    "BodyTooLargeError",
    "ClientGoneError",
    "InferenceTimeoutError",
    "ModelNotFoundError",
    "QueueFullError",
    "ServerClosingError",
    "UnauthorizedError",
    "WrongRouteError",
    "cohere_error",
    "error_response",
    "json_error",
    "openai_error",
    "public_message",
    "status_for",
]


if TYPE_CHECKING:
    from starlette.responses import Response


class ModelNotFoundError(BadInputError):
    """The request names a model or version this server does not serve."""


class WrongRouteError(BadInputError):
    """The model is served, but not by this route; the message names the routes that serve it."""


class BodyTooLargeError(BadInputError):
    """The request body is larger than the server accepts."""


class BodyTimeoutError(BadInputError):
    """The request body did not arrive in time (shorter than its Content-Length, or a stalled upload)."""


class UnauthorizedError(BadInputError):
    """The server requires an API key and the request did not carry the right one."""


class ClientGoneError(EdgeError):
    """The client closed the connection before the server could answer."""


class QueueFullError(EdgeError):
    """The model's request queue is full; the client should retry later."""


class ServerClosingError(EdgeError):
    """The server is shutting down and takes no new work."""


class InferenceTimeoutError(EdgeError):
    """The request was not answered within its timeout."""


STATUS_CODES: dict[type[BaseException], int] = {
    ModelNotFoundError: 404,
    BodyTooLargeError: 413,
    BodyTimeoutError: 408,
    UnauthorizedError: 401,
    ClientGoneError: 499,
    BadInputError: 400,
    QueueFullError: 503,
    ServerClosingError: 503,
    InferenceTimeoutError: 504,
    BadModelError: 500,
    EdgeError: 400,
}


def status_for(exc: BaseException) -> int:
    """The HTTP status of an exception: its nearest class in `STATUS_CODES`, else 500."""
    for cls in type(exc).__mro__:
        if cls in STATUS_CODES:
            return STATUS_CODES[cls]
    return 500


# onnxruntime's messages carry its build tree's source paths and the graph's node names; neither helps a client.
_ORT_SOURCE = re.compile(r"\S*/onnxruntime/\S*?\.(?:cc|cpp|h)(?::\d+)?(?: \S+)?")
_NODE_NAME = re.compile(r"""(?:node\.? ?)?Name:\s*'[^']*'""", re.IGNORECASE)
_ABSOLUTE_PATH = re.compile(r"(?<![\w:/])/(?:[\w.+-]+/)+[\w.+-]+")
_OBJECT_REPR = re.compile(r"<([\w.]+) object at 0x[0-9a-fA-F]+>")
_MAX_MESSAGE = 1000


def public_message(exc: BaseException) -> str:
    """The one-line text a client gets for `exc`: no internal paths or node names, always encodable."""
    try:
        text = str(exc) if isinstance(exc, EdgeError) else f"internal error: {type(exc).__name__}"
    except Exception:  # noqa: BLE001 - a __str__ that raises must not turn an error answer into a crash
        text = f"internal error: {type(exc).__name__}"
    if isinstance(exc, EdgeError) and not isinstance(exc, (ModelNotFoundError, WrongRouteError)):
        text = _ORT_SOURCE.sub("", text)
        text = _NODE_NAME.sub("", text)
        text = _ABSOLUTE_PATH.sub("<path>", text)
    text = _OBJECT_REPR.sub(r"<\1>", " ".join(text.split()))  # an address says nothing to a client
    if len(text) > _MAX_MESSAGE:
        text = text[: _MAX_MESSAGE - 3] + "..."
    # a lone surrogate (echoed from the request) cannot be UTF-8 encoded: show it escaped instead
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def json_error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """``{"error": message}`` as ASCII JSON (any string encodes), with `status` and `headers`."""
    from starlette.responses import Response

    body = json.dumps({"error": message}, ensure_ascii=True).encode("ascii")
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def _headers(status: int) -> dict[str, str] | None:
    if status == 503:
        return {"Retry-After": "1"}
    if status == 401:
        return {"WWW-Authenticate": 'Bearer realm="edge-toolkit"'}
    return None


def error_response(exc: BaseException) -> Response:
    """``{"error": message}`` with the exception's status (Retry-After on 503, WWW-Authenticate on 401)."""
    status = status_for(exc)
    return json_error(status, public_message(exc), _headers(status))


def openai_error(exc: BaseException) -> Response:
    """OpenAI's error shape, ``{"error": {"message", "type", "code"}}``, with the exception's status and
    headers as `error_response` gives them."""
    from starlette.responses import Response

    status = status_for(exc)
    kind = "invalid_request_error" if status < 500 else "server_error"
    code = "model_not_found" if status == 404 else None
    error = {"message": public_message(exc), "type": kind, "code": code}
    body = json.dumps({"error": error}, ensure_ascii=True).encode("ascii")
    return Response(body, status_code=status, media_type="application/json", headers=_headers(status))


def cohere_error(exc: BaseException) -> Response:
    """Cohere's error shape, ``{"message": ...}``, with the exception's status and headers as `error_response`
    gives them."""
    from starlette.responses import Response

    status = status_for(exc)
    body = json.dumps({"message": public_message(exc)}, ensure_ascii=True).encode("ascii")
    return Response(body, status_code=status, media_type="application/json", headers=_headers(status))
