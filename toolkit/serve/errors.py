"""Errors of the inference server, each placed in edge-toolkit's one exception tree with its HTTP status.

::

    EdgeError
     ├── BadInputError                400  malformed JSON, wrong input name / shape / datatype
     │    ├── ModelNotFoundError      404  no such model or version
     │    └── BodyTooLargeError       413  request body over --max-body-mb
     ├── BadModelError                500  the model itself failed (a bug or a broken package)
     ├── QueueFullError               503  the model's queue holds --max-queue requests already
     ├── ServerClosingError           503  the server is shutting down
     └── InferenceTimeoutError        504  no answer within --timeout-ms (or the request's own timeout)

504 rather than 503 for timeouts so a client can tell "the server is overloaded, retry" (503, answered at
once) from "the request waited and gave up" (504). `status_for` reads the table, nearest class first.
"""

from __future__ import annotations

from toolkit.errors import BadInputError, BadModelError, EdgeError

__all__ = [
    "STATUS_CODES",
    "BodyTooLargeError",
    "InferenceTimeoutError",
    "ModelNotFoundError",
    "QueueFullError",
    "ServerClosingError",
    "status_for",
]


class ModelNotFoundError(BadInputError):
    """The request names a model or version this server does not serve."""


class BodyTooLargeError(BadInputError):
    """The request body is larger than the server accepts."""


class QueueFullError(EdgeError):
    """The model's request queue is full; the client should retry later."""


class ServerClosingError(EdgeError):
    """The server is shutting down and takes no new work."""


class InferenceTimeoutError(EdgeError):
    """The request was not answered within its timeout."""


STATUS_CODES: dict[type[BaseException], int] = {
    ModelNotFoundError: 404,
    BodyTooLargeError: 413,
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
