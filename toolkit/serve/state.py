"""What one app serves with (`ServerState`, on ``app.state.edge``), and the one shell every route's request
passes through: counted in /metrics under its model, its failure answered in the route's error shape with its
status (500s logged), a client that left counted as 499.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from toolkit.serve.batching import Scheduler
from toolkit.serve.bodies import OFF_LOOP_BYTES, read_body
from toolkit.serve.continuous import GenerationService
from toolkit.serve.engine import Feeds, ModelEngine, Outputs, TextPiece
from toolkit.serve.errors import ServerClosingError, status_for
from toolkit.serve.metrics import UNKNOWN_MODEL, ServeMetrics
from toolkit.serve.options import ServeOptions
from toolkit.serve.registry import ModelRegistry

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

__all__ = ["ModelLabel", "ServerState", "log_internal"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")


@dataclass
class ModelLabel:
    """The model and version a request is counted under in /metrics (unknown until the request names one)."""

    model: str = UNKNOWN_MODEL
    version: str = ""


def log_internal(what: str, exc: BaseException) -> None:
    """A 500: its type and message at error level; the traceback too when debug logging is on (--debug)."""
    log.error(
        "%s failed: %s: %s",
        what,
        type(exc).__name__,
        exc,
        exc_info=exc if log.isEnabledFor(logging.DEBUG) else None,
    )


@dataclass
class ServerState:
    """Everything one app serves with: the registry and the tensor models' scheduler, the generators' service
    (None: none), the limits, the metrics, and whether it is closing."""

    registry: ModelRegistry
    options: ServeOptions
    scheduler: Scheduler
    metrics: ServeMetrics
    generation: GenerationService | None = None
    closing: bool = False
    decoder: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=2, thread_name_prefix="edge-decode")
    )

    def check_open(self) -> None:
        """A 503 once shutdown has begun."""
        if self.closing:
            raise ServerClosingError("the server is shutting down; send the request to another replica")

    @property
    def ready(self) -> bool:
        """Whether requests are taken (false once any part has begun shutting down)."""
        return not (self.closing or (self.generation is not None and self.generation.closing))

    async def decode(self, size: int, work: Callable[..., _T], *args: Any, off_loop: bool = False) -> _T:
        """`work(*args)`: on a worker thread for bodies over `OFF_LOOP_BYTES` or when `off_loop` (media to decode;
        the event loop keeps answering health checks and other clients), inline for small ones."""
        if off_loop or size > OFF_LOOP_BYTES:
            return await asyncio.get_running_loop().run_in_executor(self.decoder, work, *args)
        return work(*args)

    async def run_pieces(
        self, engine: ModelEngine, pieces: Sequence[TextPiece], finish: Callable[[Outputs, Feeds], np.ndarray]
    ) -> np.ndarray:
        """Queue a request's pieces on `engine` together (each batches with other requests' pieces of like length)
        and return `finish`'s rows of every piece in the request's order."""
        raws = await asyncio.gather(
            *(self.scheduler.submit(engine, p.feeds, len(p.rows), self.options.timeout_s) for p in pieces)
        )
        done = [finish(raw, piece.feeds) for raw, piece in zip(raws, pieces, strict=True)]
        rows = np.empty((sum(len(p.rows) for p in pieces), *done[0].shape[1:]), dtype=done[0].dtype)
        for piece, values in zip(pieces, done, strict=True):
            rows[list(piece.rows)] = values
        return rows

    async def observed(
        self,
        label: ModelLabel,
        what: str,
        work: Callable[[], Awaitable[Response]],
        render_error: Callable[[BaseException], Response],
    ) -> Response:
        """The one shell of every route: `work`'s response, or its failure as `render_error`'s answer with its
        status (a 500 logged as `what` failing); counted in /metrics under `label` (which `work` fills in once
        it knows the model) either way, a cancelled request (the client left) as 499."""
        started = time.perf_counter()
        code = 500
        try:
            response = await work()
            code = response.status_code
            return response
        except Exception as exc:  # noqa: BLE001 - every failure becomes the route's error shape with its status
            code = status_for(exc)
            if code == 500:
                log_internal(what, exc)
            elif code == 499:
                log.info("%s: %s", what, exc)
            return render_error(exc)
        except BaseException:
            code = 499  # the client went away (the task was cancelled)
            raise
        finally:
            self.metrics.observe_request(label.model, label.version, code, time.perf_counter() - started)

    async def answer(
        self,
        request: Request,
        handle: Callable[[bytes, ModelLabel], Awaitable[Response]],
        render_error: Callable[[BaseException], Response],
    ) -> Response:
        """One POST of a JSON route over the tensor models (``/v1/embeddings``, ``/v1/rerank``): its body read
        within the limits and `handle`d, which names the model in its `ModelLabel` once it knows it."""
        label = ModelLabel()

        async def work() -> Response:
            self.check_open()
            body = await read_body(request, self.options.max_body_bytes, self.options.body_timeout_s)
            return await handle(body, label)

        return await self.observed(label, f"{request.method} {request.url.path}", work, render_error)

    async def aclose(self) -> None:
        """A graceful end (the host has stopped sending requests): finish what is queued, then stop."""
        self.closing = True
        await self.scheduler.aclose()
        self.decoder.shutdown(wait=False, cancel_futures=True)
        if self.generation is not None:
            self.generation.close()

    def abort(self) -> None:
        """A forced shutdown: take no more work and answer every waiting request 503 now."""
        self.closing = True
        self.scheduler.abort(
            ServerClosingError("the server was stopped; send the request to another replica")
        )
        if self.generation is not None:
            self.generation.abort()
