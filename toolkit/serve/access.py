"""Access control: an API key every route but health requires, as ``Authorization: Bearer <key>``.

The key comes from ``--api-key`` or the ``EDGE_API_KEY`` environment variable (`API_KEY_ENV`); the
comparison is constant-time (`hmac.compare_digest`), and a missing or wrong key is a 401 JSON error
with ``WWW-Authenticate: Bearer``. ``/v2/health/live`` and ``/v2/health/ready`` stay open so load
balancers and orchestrators can probe without the key.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from toolkit.serve.errors import UnauthorizedError, error_response

__all__ = ["API_KEY_ENV", "OPEN_PATHS", "require_api_key"]

API_KEY_ENV = "EDGE_API_KEY"
OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})

Middleware = Callable[[Request, Callable[[Request], Awaitable[Response]]], Awaitable[Response]]


def _bearer(request: Request) -> bytes | None:
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip().encode("utf-8", "surrogateescape")


def require_api_key(api_key: str) -> Middleware:
    """HTTP middleware answering 401 unless the request carries ``Authorization: Bearer <api_key>``."""
    expected = api_key.encode("utf-8")

    async def check(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if request.url.path in OPEN_PATHS:
            return await call_next(request)
        token = _bearer(request)
        if token is None or not hmac.compare_digest(token, expected):
            problem = "has no Authorization: Bearer header" if token is None else "has the wrong API key"
            return error_response(
                UnauthorizedError(f"the request {problem}; send Authorization: Bearer <the server's API key>")
            )
        return await call_next(request)

    return check
