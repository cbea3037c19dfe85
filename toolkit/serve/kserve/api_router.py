"""The HTTP app: Open Inference Protocol (KServe v2) REST endpoints over a `ModelRegistry`, on FastAPI.

Endpoints (``[/versions/V]``: also under a version; a version is a variant name, see `models`)::

    GET  /v2/health/live                       200 {"live": true}
    GET  /v2/health/ready                      200 {"ready": true}; 503 while shutting down
    GET  /v2                                   server metadata: name, version, extensions
    GET  /v2/models/M[/versions/V]             model metadata: versions, platform, inputs, outputs
    GET  /v2/models/M[/versions/V]/ready       200 {"name", "ready": true}; 404 unknown
    GET  /v2/models/M[/versions/V]/config      Triton's model configuration (JSON), for tritonclient
    POST /v2/models/M[/versions/V]/infer       inference, JSON or Triton binary tensors
    POST /v2/repository/index                  Triton's model repository index
    GET  /metrics                              Prometheus text format

Every error is ``{"error": "<one line>"}`` with the status of `toolkit.serve.errors.STATUS_CODES`:
400 malformed request or wrong input, 401 missing or wrong API key, 404 unknown model or version (or
path), 408 body not received in time, 413 body, rows or tokens over the limit, 503 queue full or shutting
down (with ``Retry-After``), 504 timeout, 500 a bug (logged with its type and message; the traceback with
``--debug``). A client that disconnects is counted as 499. Rendering an error never raises: messages are
ASCII-escaped JSON with internal paths cut out (`public_message`).

Hostile clients are bounded: a body must arrive within ``body_timeout_s`` (408), bodies over 256 KB are
decoded and tokenized on a worker thread (the event loop keeps answering), JSON deeper than the
interpreter's recursion limit is a 400, and a request may hold at most ``max_request_rows`` rows and
``max_request_tokens`` tokens (413) before anything is tokenized or run.

`create_app` holds all state in the app it returns (no module globals) and needs nothing from uvicorn,
so another host (Ray Serve) can mount it; pass ``scheduler=`` to replace dynamic batching.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from toolkit.errors import BadInputError, EdgeError
from toolkit.inputs import sequence_axis
from toolkit.serve.access import require_api_key
from toolkit.serve.batching import BatchingScheduler, Scheduler
from toolkit.serve.errors import (
    BodyTimeoutError,
    BodyTooLargeError,
    ClientGoneError,
    InferenceTimeoutError,
    QueueFullError,
    ServerClosingError,
    error_response,
    json_error,
    status_for,
)
from toolkit.serve.metrics import UNKNOWN_MODEL, ServeMetrics
from toolkit.serve.models import Feeds, Job, ModelEngine, ModelRegistry, Outputs, ServedModel, TextPiece
from toolkit.serve.options import ServeOptions
from toolkit.serve.protocol import (
    HEADER_LENGTH,
    InferenceRequest,
    ResponseOutput,
    decode_request,
    encode_response,
    triton_type,
)

__all__ = ["EXTENSIONS", "SERVER_NAME", "ModelLabel", "ServerState", "create_app", "error_response"]

log = logging.getLogger(__name__)

SERVER_NAME = "edge-toolkit"
EXTENSIONS = ("binary_tensor_data", "model_configuration")

# Content-Encoding -> zlib wbits (tritonclient's request_compression_algorithm sends gzip or deflate).
_DECODINGS = {"gzip": 31, "deflate": 15, "identity": 0}

_T = TypeVar("_T")

# Bodies larger than this are decoded and tokenized on a worker thread, not on the event loop.
OFF_LOOP_BYTES = 256 * 1024


@dataclass
class ModelLabel:
    """The model and version a request is counted under in /metrics (unknown until the request names one)."""

    model: str = UNKNOWN_MODEL
    version: str = ""


@dataclass
class ServerState:
    """Everything one app serves with; kept on ``app.state.edge``."""

    registry: ModelRegistry
    options: ServeOptions
    scheduler: Scheduler
    metrics: ServeMetrics
    closing: bool = False
    decoder: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=2, thread_name_prefix="edge-decode")
    )

    def check_open(self) -> None:
        """A 503 once shutdown has begun."""
        if self.closing:
            raise ServerClosingError("the server is shutting down; send the request to another replica")

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

    async def answer(
        self,
        request: Request,
        handle: Callable[[bytes, ModelLabel], Awaitable[Response]],
        render_error: Callable[[BaseException], Response],
    ) -> Response:
        """One POST of a JSON route (``/v1/embeddings``, ``/v1/rerank``): its body read within the limits and
        `handle`d, which names the model in its `ModelLabel` once it knows it; a failure is `render_error`'s
        answer with its status (a 500 logged), and the request is counted in /metrics either way."""
        started = time.perf_counter()
        label = ModelLabel()
        code = 500
        try:
            self.check_open()
            body = await _read_body(request, self.options.max_body_bytes, self.options.body_timeout_s)
            response = await handle(body, label)
            code = response.status_code
            return response
        except Exception as exc:  # noqa: BLE001 - every failure becomes the route's error shape with its status
            code = status_for(exc)
            if code == 500:
                _log_internal(f"{request.method} {request.url.path}", exc)
            return render_error(exc)
        except BaseException:
            code = 499  # the client went away (the task was cancelled)
            raise
        finally:
            self.metrics.observe_request(label.model, label.version, code, time.perf_counter() - started)

    def abort(self) -> None:
        """A forced shutdown: take no more work and answer every waiting request 503 now."""
        self.closing = True
        self.scheduler.abort(
            ServerClosingError("the server was stopped; send the request to another replica")
        )


async def _read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The body, at most `limit` bytes after decompression, within `timeout_s`; a larger one is read to its
    end, then refused; one that stops arriving is a BodyTimeoutError (408), a client gone a ClientGoneError."""
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
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in _DECODINGS:
        raise BadInputError(f"Content-Encoding {encoding!r} is not supported; send gzip, deflate or none")
    if _DECODINGS[encoding]:
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


def _header_length(request: Request) -> int | None:
    value = request.headers.get(HEADER_LENGTH)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise BadInputError(f"{HEADER_LENGTH} must be an integer, got {value!r}") from None


def _model_metadata(state: ServerState, model: ServedModel) -> dict[str, Any]:
    return {
        "name": model.name,
        "versions": list(state.registry.versions(model.name)),
        "platform": model.platform,
        "inputs": [t.to_json() for t in model.inputs],
        "outputs": [t.to_json() for t in model.outputs],
    }


def _model_config(state: ServerState, model: ServedModel) -> dict[str, Any]:
    """Triton's model configuration as JSON: dims without the batch dim when the model batches."""
    batched = model.batched
    max_batch = state.options.batching.max_batch if batched else 0

    def tensor(meta: Any) -> dict[str, Any]:
        dims = list(meta.shape[1:] if batched else meta.shape) or [1]
        return {"name": meta.name, "data_type": triton_type(meta.datatype), "dims": dims}

    config: dict[str, Any] = {
        "name": model.name,
        "platform": model.platform,
        "max_batch_size": max_batch,
        "input": [tensor(t) for t in model.inputs],
        "output": [tensor(t) for t in model.outputs],
    }
    if batched and max_batch > 1 and model.engine.requests_per_run is None:
        delay_us = int(state.options.batching.max_delay_ms * 1000)
        config["dynamic_batching"] = {"max_queue_delay_microseconds": delay_us}
    return config


def create_app(
    registry: ModelRegistry,
    options: ServeOptions | None = None,
    *,
    scheduler: Scheduler | None = None,
    metrics: ServeMetrics | None = None,
) -> FastAPI:
    """The KServe v2 app over `registry`; `scheduler` defaults to dynamic batching per `options.batching`."""
    options = options or ServeOptions()
    if options.batching.workers > 1:
        bound = [e.name for e in registry.engines() if e.runner.config.io_binding]
        if bound:
            raise BadInputError(
                f"model '{bound[0]}' uses IO binding, whose device buffers one thread at a time may use; "
                "use --workers 1 or drop --io-binding"
            )
    metrics = metrics or ServeMetrics()
    state = ServerState(
        registry, options, scheduler or BatchingScheduler(options.batching, observer=metrics), metrics
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        # The host has stopped sending requests (uvicorn drains connections first); finish what is queued.
        state.closing = True
        await state.scheduler.aclose()
        state.decoder.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title=SERVER_NAME, lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.edge = state

    if options.api_key is not None:
        app.middleware("http")(require_api_key(options.api_key))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        detail = exc.detail
        if exc.status_code == 404:
            detail = f"no endpoint {request.url.path}; the KServe v2 endpoints are under /v2 (see GET /v2)"
        elif exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}"
        return json_error(exc.status_code, str(detail))

    @app.exception_handler(EdgeError)
    async def edge_error(_request: Request, exc: EdgeError) -> Response:
        return error_response(exc)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> Response:
        _log_internal(f"{request.method} {request.url.path}", exc)
        return error_response(exc)

    @app.get("/v2/health/live")
    async def live() -> dict[str, Any]:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready() -> JSONResponse:
        if state.closing:
            return JSONResponse({"ready": False, "error": "the server is shutting down"}, status_code=503)
        return JSONResponse({"ready": True})

    @app.get("/v2")
    async def server_metadata() -> dict[str, Any]:
        from toolkit import __version__

        return {"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)}

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def model_metadata(name: str, version: str | None = None) -> dict[str, Any]:
        return _model_metadata(state, registry.get(name, version))

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(name: str, version: str | None = None) -> JSONResponse:
        model = registry.get(name, version)
        if state.closing:
            return JSONResponse({"name": model.name, "ready": False}, status_code=503)
        return JSONResponse({"name": model.name, "ready": True})

    @app.get("/v2/models/{name}/config")
    @app.get("/v2/models/{name}/versions/{version}/config")
    async def model_config(name: str, version: str | None = None) -> dict[str, Any]:
        return _model_config(state, registry.get(name, version))

    @app.post("/v2/repository/index")
    async def repository_index() -> list[dict[str, Any]]:
        return [{"name": m.name, "version": m.version, "state": "READY"} for m in registry]

    @app.get("/metrics")
    async def prometheus() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.post("/v2/models/{name}/infer")
    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(request: Request, name: str, version: str | None = None) -> Response:
        started = time.perf_counter()
        label = (UNKNOWN_MODEL, "")
        code = 500
        try:
            state.check_open()
            model = registry.get(name, version)
            label = (model.name, model.version)
            body = await _read_body(request, options.max_body_bytes, options.body_timeout_s)
            decoded, job = await state.decode(
                len(body),
                _decode_and_prepare,
                model,
                options,
                body,
                _header_length(request),
                off_loop=model.prepare_off_loop,
            )
            timeouts = [t for t in (options.timeout_s, decoded.timeout_s) if t is not None]
            try:
                raw = await _submit(state.scheduler, model, job, min(timeouts, default=None))
            except (QueueFullError, InferenceTimeoutError) as exc:
                raise type(exc)(f"model '{model.name}' {exc}") from None
            finally:
                job.cancel()  # answered or abandoned: a decode still running stops at its next clip or text
            result = job.finish(raw)
            encoded = encode_response(
                model.name,
                model.version,
                [ResponseOutput(n, result[n], decoded.wants_binary(n)) for n in job.outputs],
                decoded.id,
            )
            code = 200
            return Response(encoded.body, headers=encoded.headers())
        except Exception as exc:  # noqa: BLE001 - every failure becomes a JSON error with its status (500s logged)
            code = status_for(exc)
            if code == 500:
                _log_internal(f"inference on model {name!r}", exc)
            elif code == 499:
                log.info("inference on model %r: %s", name, exc)
            return error_response(exc)
        except BaseException:
            code = 499  # the client went away (the task was cancelled)
            raise
        finally:
            state.metrics.observe_request(*label, code, time.perf_counter() - started)

    return app


def _log_internal(what: str, exc: BaseException) -> None:
    """A 500: its type and message at error level; the traceback too when debug logging is on (--debug)."""
    log.error(
        "%s failed: %s: %s",
        what,
        type(exc).__name__,
        exc,
        exc_info=exc if log.isEnabledFor(logging.DEBUG) else None,
    )


def _decode_and_prepare(
    model: ServedModel, options: ServeOptions, body: bytes, header_length: int | None
) -> tuple[InferenceRequest, Job]:
    """Decode the body, check the request's size against the limits, and turn it into the model's job."""
    decoded = decode_request(body, header_length)
    if model.batched:
        rows = max((i.shape[0] for i in decoded.inputs if i.shape), default=0)
        if rows > options.max_request_rows:
            raise BodyTooLargeError(
                f"model '{model.name}': the request holds {rows} rows, over the {options.max_request_rows}-row "
                "limit; split it into several requests (or raise --max-request-rows)"
            )
    job = model.prepare(decoded)
    tokens = _tokens(model, job)
    if tokens > options.max_request_tokens:
        raise BodyTooLargeError(
            f"model '{model.name}': the request holds {tokens} tokens (rows x sequence), over the "
            f"{options.max_request_tokens}-token limit; send fewer or shorter texts per request "
            "(or raise --max-request-tokens)"
        )
    return decoded, job


async def _submit(
    scheduler: Scheduler, model: ServedModel, job: Job, timeout_s: float | None
) -> dict[str, Any]:
    """The job's outputs: its one run, or its runs (queued together) concatenated along the batch in order."""
    if not job.more_runs:
        return await scheduler.submit(model.engine, job.feeds, job.rows, timeout_s)
    runs = (job.feeds, *job.more_runs)
    outputs = await asyncio.gather(
        *(scheduler.submit(model.engine, feeds, len(next(iter(feeds.values()))), timeout_s) for feeds in runs)
    )
    return {name: np.concatenate([part[name] for part in outputs]) for name in outputs[0]}


def _tokens(model: ServedModel, job: Job) -> int:
    """The job's own count, else rows x sequence of its largest integer input that has a sequence axis (0: none
    has one)."""
    if job.tokens is not None:
        return job.tokens
    tokens = 0
    for spec in model.engine.inputs:
        array = job.feeds.get(spec.name)
        if array is None or not spec.dtype.startswith(("int", "uint")):
            continue
        axis = sequence_axis(spec)
        if axis is not None and array.ndim > axis:
            rows = int(array.shape[0]) if axis > 0 else 1
            tokens = max(tokens, rows * int(array.shape[axis]))
    return tokens
