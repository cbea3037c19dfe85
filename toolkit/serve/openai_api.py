"""OpenAI-compatible text generation: ``/v1/completions`` and ``/v1/chat/completions``, streamed as
server-sent events, over ``generate`` packages.

::

    GET  /v1/models                 the served generators
    POST /v1/completions            {"model", "prompt", "max_tokens", "temperature", "top_p", "stop", "seed",
                                     "stream", and the extensions "top_k", "repetition_penalty"}
    POST /v1/chat/completions       {"model", "messages", ...the same settings; "max_completion_tokens" too}
    POST /v2/models/M/generate      Triton's generate extension: {"text_input", "parameters": {"max_tokens",
    POST /v2/models/M/generate_stream    "temperature", "top_p", "top_k", "stop", "seed", ...}} -> {"model_name",
                                     "model_version", "text_output"} (server-sent events for generate_stream)

Each model has one worker thread doing step-level batching (`toolkit.generation.continuous`): a request joins
the running batch at the next step (up to `max_batch` rows) and leaves it when it finishes, each row with its
own settings, stop strings and limit; each stream gets its own row's text as it settles. ``temperature`` 0 is greedy; an omitted one takes the model's
generation_config. Errors are OpenAI's shape, ``{"error": {"message", "type", "code"}}``.

A prompt over `PROMPT_BYTES_PER_TOKEN` UTF-8 bytes per ``--max-request-tokens`` token is refused (413) before
it is tokenized; chat templates (on a `TemplateBudget`) and tokenizers run on a thread of their own, never on
the event loop. A row leaves its batch at the next step when its client disconnects (streamed or not) or,
for a request that does not stream, when ``--timeout-ms`` passes (504, counted in
``edge_timed_out_rows_total``). When a shutdown's grace period ends (`GenerationService.abort`), waiting
requests get 503 and running rows end: a stream with a last chunk whose finish_reason is ``"abort"`` (vLLM's
name) and ``[DONE]``, a whole answer with 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from toolkit.errors import BadInputError, EdgeError
from toolkit.generation import GENERATE_TASK, Generation, GenerationEvent, GenerationOptions, TextGenerator
from toolkit.generation.chat import TemplateBudget
from toolkit.generation.continuous import ContinuousBatch
from toolkit.generation.generator import Prompt, TokenPrompt
from toolkit.manifest import FP32_VARIANT, ModelPackage
from toolkit.runner import Runner
from toolkit.serve.access import require_api_key
from toolkit.serve.app import OFF_LOOP_BYTES, _log_internal, _read_body
from toolkit.serve.embeddings_api import embedding_models, mount_embeddings
from toolkit.serve.errors import (
    BodyTooLargeError,
    ClientGoneError,
    InferenceTimeoutError,
    ModelNotFoundError,
    QueueFullError,
    ServerClosingError,
    error_response,
    openai_error,
    status_for,
)
from toolkit.serve.metrics import UNKNOWN_MODEL, ServeMetrics
from toolkit.serve.models import LoadOptions, ModelRegistry
from toolkit.serve.options import ServeOptions
from toolkit.serve.protocol import decode_json_object
from toolkit.serve.rerank_api import mount_rerank, rerank_models

__all__ = [
    "GenerationService",
    "ServingApp",
    "build_serving_app",
    "create_openai_app",
    "mount_model_list",
    "mount_openai",
    "open_generators",
]

log = logging.getLogger(__name__)

_FINISH = {"eos": "stop", "stop": "stop", "length": "length"}
ABORTED = "abort"  # vLLM's finish_reason for a request the server stopped (a shutdown past its grace period)
# A prompt longer than this many UTF-8 bytes per token of --max-request-tokens cannot be within it for any
# tokenizer worth serving (byte-level BPE averages 3-5 bytes a token); refused before tokenizing it.
PROMPT_BYTES_PER_TOKEN = 32
_DONE = object()


@dataclass
class _Pending:
    """One request waiting for, or decoding in, a batch; events go to `events` on the server's loop. Its row
    ends at the next step once `abandoned` is set (the client left) or `deadline` (monotonic seconds; None:
    none) passes."""

    prompt: Any
    options: GenerationOptions
    loop: asyncio.AbstractEventLoop
    deadline: float | None = None
    events: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    abandoned: threading.Event = field(default_factory=threading.Event)

    def emit(self, item: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, item)
        except RuntimeError:  # the loop is closed: the server has stopped and nobody waits for this row
            self.abandoned.set()

    def expired(self) -> bool:
        """Whether the deadline has passed (the request is then answered 504)."""
        if self.deadline is None or time.monotonic() <= self.deadline:
            return False
        self.emit(
            InferenceTimeoutError(
                "no answer within --timeout-ms; ask for fewer tokens, stream the answer (streams have no "
                "deadline) or raise --timeout-ms"
            )
        )
        self.emit(_DONE)
        return True


class _Worker:
    """A thread that decodes one generator's requests with step-level batching: waiting requests join the
    running batch between steps (up to `max_batch` rows), finished ones leave it, and so do rows whose client
    left or whose deadline passed; `cut` ends every row (a shutdown past its grace period)."""

    def __init__(self, name: str, generator: TextGenerator, max_batch: int, metrics: ServeMetrics) -> None:
        self.name = name
        self.generator = generator
        self.max_batch = max_batch
        self.metrics = metrics
        self.waiting: queue.Queue[_Pending | None] = queue.Queue()
        self.batch = ContinuousBatch(generator)
        self.largest_batch = 0
        self.cut = False
        self.thread = threading.Thread(target=self._loop, name=f"generate-{name}", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        running: dict[int, _Pending] = {}
        keys = itertools.count()
        stopping = False
        while not (stopping and not running):
            while not stopping and len(running) < self.max_batch:
                try:
                    # block only when nothing is decoding
                    pending = self.waiting.get(block=not running)
                except queue.Empty:
                    break
                if pending is None:
                    stopping = True
                    break
                if pending.abandoned.is_set():  # its client left while it waited
                    self.metrics.observe_abandoned(self.name, 1)
                    continue
                if pending.expired():  # waited past its deadline: never prefilled
                    self.metrics.observe_timed_out(self.name, 1)
                    continue
                key = next(keys)
                try:
                    self.batch.add(key, pending.prompt, pending.options)
                except Exception as exc:  # one bad request fails alone; the running rows go on
                    log.error("generation for %s failed to start", self.name, exc_info=exc)
                    pending.emit(exc)
                    pending.emit(_DONE)
                    continue
                running[key] = pending
            self.largest_batch = max(self.largest_batch, len(running))
            if self.cut and running:
                for pending in running.values():
                    pending.emit(ServerClosingError("the server stopped before this request finished"))
                    pending.emit(_DONE)
                running.clear()
                self.batch = ContinuousBatch(self.generator)
            gone = {key for key, pending in running.items() if pending.abandoned.is_set()}
            late = {key for key, pending in running.items() if key not in gone and pending.expired()}
            if gone or late:  # free their slots and cache now, not at max_tokens
                self.batch.drop(gone | late)
                for key in gone | late:
                    del running[key]
                self.metrics.observe_abandoned(self.name, len(gone))
                self.metrics.observe_timed_out(self.name, len(late))
            if not running:
                continue
            try:
                events = self.batch.step()
            except Exception as exc:  # every running stream gets the error instead of hanging
                log.error("generation for %s failed", self.name, exc_info=exc)
                for pending in running.values():
                    pending.emit(exc)
                    pending.emit(_DONE)
                running.clear()
                self.batch = ContinuousBatch(self.generator)
                continue
            for event in events:
                pending = running[event.row]
                pending.emit(event)
                if event.generation is not None:
                    pending.emit(_DONE)
                    del running[event.row]

    def close(self) -> None:
        self.waiting.put(None)


class GenerationService:
    """The served generators by name, each with its batching worker."""

    def __init__(self, generators: Mapping[str, TextGenerator], options: ServeOptions | None = None) -> None:
        self.options = options or ServeOptions()
        batching = self.options.batching
        self.metrics = ServeMetrics()
        self.workers = {
            name: _Worker(name, g, batching.max_batch, self.metrics) for name, g in generators.items()
        }
        self.closing = False
        # chat templates and tokenizers run here, never on the event loop
        self.encoder = ThreadPoolExecutor(max_workers=2, thread_name_prefix="edge-tokenize")

    def names(self) -> tuple[str, ...]:
        """The model names clients pass as ``model``."""
        return tuple(self.workers)

    def worker(self, name: Any) -> _Worker:
        """The worker of model `name`, or a 404 naming the served ones."""
        if not isinstance(name, str):
            raise BadInputError(f"'model' must be a string naming a served model: {', '.join(self.workers)}")
        if name not in self.workers:
            raise ModelNotFoundError(
                f"model {name!r} is not served here; this server generates with: {', '.join(self.workers)}"
            )
        return self.workers[name]

    def _check_size(self, prompt: Any) -> None:
        """A 413 for a prompt too many bytes long to be within --max-request-tokens, before tokenizing it."""
        texts = (
            [prompt] if isinstance(prompt, str) else [m.get("content") for m in prompt if isinstance(m, dict)]
        )
        size = sum(len(t.encode("utf-8")) for t in texts if isinstance(t, str))
        limit = self.options.max_request_tokens * PROMPT_BYTES_PER_TOKEN
        if size > limit:
            raise BodyTooLargeError(
                f"the prompt is {size} bytes, over the {limit}-byte limit ({PROMPT_BYTES_PER_TOKEN} bytes per "
                f"token of the {self.options.max_request_tokens}-token limit); shorten it (or raise "
                "--max-request-tokens)"
            )

    @staticmethod
    def _encode(generator: TextGenerator, prompt: Prompt) -> list[int]:
        _text, ids = generator.encode(prompt, TemplateBudget())
        generator.check_length(ids)
        return ids

    async def submit(
        self, name: str, prompt: Any, options: GenerationOptions, stream: bool = False
    ) -> _Pending:
        """Check the prompt's size, tokenize it off the loop (one-line 400s and 413s happen here, not in the
        batch) and queue it; a request that does not stream gets the server's deadline (--timeout-ms)."""
        worker = self.worker(name)
        if self.closing:
            raise ServerClosingError("the server is shutting down; send the request to another replica")
        self._check_size(prompt)
        loop = asyncio.get_running_loop()
        ids = await loop.run_in_executor(self.encoder, self._encode, worker.generator, prompt)
        limit = self.options.max_request_tokens
        if len(ids) + options.max_new_tokens > limit:
            raise BodyTooLargeError(
                f"model '{name}': the prompt's {len(ids)} tokens plus max_tokens {options.max_new_tokens} are over "
                f"the {limit}-token limit; shorten the prompt, lower max_tokens (or raise --max-request-tokens)"
            )
        if worker.waiting.qsize() >= self.options.batching.max_queue:
            raise QueueFullError(
                f"model '{name}' has {worker.waiting.qsize()} requests waiting (the limit is "
                f"{self.options.batching.max_queue}, --max-queue); retry later"
            )
        timeout = self.options.timeout_s
        deadline = time.monotonic() + timeout if timeout is not None and not stream else None
        pending = _Pending(TokenPrompt(tuple(ids)), options, loop, deadline)
        worker.waiting.put(pending)
        return pending

    def close(self) -> None:
        """Stop the workers after their current batch."""
        for worker in self.workers.values():
            worker.close()
        self.encoder.shutdown(wait=False, cancel_futures=True)

    def abort(self) -> None:
        """Stop now (a shutdown past its grace period, or a second signal): take no more requests, answer every
        waiting one 503, end every running row at its next step (a stream with finish_reason "abort", a whole
        answer with 503), stop the workers."""
        self.closing = True
        for worker in self.workers.values():
            while True:
                try:
                    pending = worker.waiting.get_nowait()
                except queue.Empty:
                    break
                if pending is not None:
                    pending.emit(
                        ServerClosingError("the server was stopped; send the request to another replica")
                    )
                    pending.emit(_DONE)
            worker.cut = True
            worker.close()


def _number(body: Mapping[str, Any], key: str, kind: type) -> Any:
    value = body.get(key)
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (kind is int and not isinstance(value, int))
    ):
        raise BadInputError(f"'{key}' must be a {kind.__name__}, got {value!r}")
    return kind(value)


def _options(service_worker: _Worker, body: Mapping[str, Any]) -> GenerationOptions:
    """The request's settings over the model's defaults."""
    if body.get("n", 1) != 1:
        raise BadInputError("'n' must be 1 here; send several requests for several completions")
    for unsupported in ("presence_penalty", "frequency_penalty", "logprobs", "best_of"):
        if body.get(unsupported):
            raise BadInputError(
                f"'{unsupported}' is not supported by this server; drop it (repetition_penalty is)"
            )
    settings: dict[str, Any] = {
        "max_new_tokens": _number(body, "max_completion_tokens", int) or _number(body, "max_tokens", int),
        "top_p": _number(body, "top_p", float),
        "top_k": _number(body, "top_k", int),
        "repetition_penalty": _number(body, "repetition_penalty", float),
        "seed": _number(body, "seed", int),
    }
    temperature = _number(body, "temperature", float)
    if temperature is not None:
        if temperature < 0:
            raise BadInputError(f"'temperature' must be 0 (greedy) or more, got {temperature}")
        settings["do_sample"] = temperature > 0
        if temperature > 0:
            settings["temperature"] = temperature
    stop = body.get("stop")
    if stop is not None:
        settings["stop"] = (stop,) if isinstance(stop, str) else stop
    return service_worker.generator.options(**settings)


def _flag(body: Mapping[str, Any], key: str, where: str = "") -> bool:
    value = body.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise BadInputError(f"'{where}{key}' must be true or false, got a {type(value).__name__}")
    return value


def _streams(body: Mapping[str, Any]) -> bool:
    """The request's ``stream``, checked (a string "false" would otherwise read as true)."""
    return _flag(body, "stream")


def _include_usage(body: Mapping[str, Any]) -> bool:
    stream_options = body.get("stream_options")
    if stream_options is None:
        return False
    if not isinstance(stream_options, dict):
        raise BadInputError("'stream_options' must be an object like {\"include_usage\": true}")
    return _flag(stream_options, "include_usage", "stream_options.")


def _usage(generation: Generation) -> dict[str, int]:
    prompt = generation.timings.prompt_tokens
    completion = len(generation.token_ids)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def _events(pending: _Pending) -> AsyncIterator[GenerationEvent]:
    """The request's events until its generation ends; a consumer that stops early (the client left, its task
    was cancelled) marks the row abandoned, and the worker drops it at its next step."""
    try:
        while True:
            item = await pending.events.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        pending.abandoned.set()


def _sse(data: Any) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


async def _json_body(request: Request, options: ServeOptions) -> dict[str, Any]:
    raw = await _read_body(request, options.max_body_bytes, options.body_timeout_s)
    if len(raw) > OFF_LOOP_BYTES:  # an 8 MB prompt is parsed and checked while the loop answers others
        return await asyncio.get_running_loop().run_in_executor(None, decode_json_object, raw)
    return decode_json_object(raw)


async def _generation(pending: _Pending) -> Generation:
    async for event in _events(pending):
        if event.generation is not None:
            return event.generation
    raise ServerClosingError("the generation ended without a result; retry")


async def _disconnected(request: Request) -> None:
    """Returns once the client has disconnected (its body is read, so receive() waits for that alone)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _collect(request: Request, pending: _Pending) -> Generation:
    """The finished generation of a request that does not stream; a client that disconnects first ends its
    row at the next step (ClientGoneError, answered to nobody)."""
    result = asyncio.ensure_future(_generation(pending))
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({result, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not result.done():
            result.cancel()  # _events marks the row abandoned
    if not result.done() or result.cancelled():
        raise ClientGoneError("the client disconnected before its generation finished")
    return result.result()


def mount_model_list(app: FastAPI, names: Sequence[str]) -> None:
    """Add ``GET /v1/models``: every model the ``/v1`` routes answer to (generators, embedders, rerankers)."""

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {"id": name, "object": "model", "created": 0, "owned_by": "edge-toolkit"} for name in names
            ],
        }


def mount_openai(app: FastAPI, service: GenerationService) -> None:
    """Add the generation routes over `service` to `app` (``/v1/models`` is `mount_model_list`'s)."""

    async def handle(request: Request, chat: bool) -> Response:
        try:
            body = await _json_body(request, service.options)
            name = request.state.model = body.get("model")
            worker = service.worker(name)
            options = _options(worker, body)
            stream, include_usage = _streams(body), _include_usage(body)
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
            pending = await service.submit(str(name), prompt, options, stream)
        except EdgeError as exc:
            return openai_error(exc)
        ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        kind = "chat.completion" if chat else "text_completion"
        if stream:
            return StreamingResponse(
                _stream(
                    pending,
                    ident,
                    created,
                    str(name),
                    chat,
                    include_usage,
                ),
                media_type="text/event-stream",
            )
        try:
            generation = await _collect(request, pending)
        except Exception as exc:  # noqa: BLE001 - the worker's error (logged there) in OpenAI's shape
            return openai_error(exc)
        choice: dict[str, Any] = {"index": 0, "finish_reason": _FINISH[generation.finish_reason]}
        if chat:
            choice["message"] = {"role": "assistant", "content": generation.text}
        else:
            choice.update(text=generation.text, logprobs=None)
        return JSONResponse(
            {
                "id": ident,
                "object": kind,
                "created": created,
                "model": name,
                "choices": [choice],
                "usage": _usage(generation),
            }
        )

    async def triton_generate(request: Request, name: str, stream: bool) -> Response:
        try:
            body = await _json_body(request, service.options)
            worker = service.worker(name)
            parameters = body.get("parameters") or {}
            if not isinstance(parameters, dict):
                raise BadInputError("'parameters' must be a JSON object")
            options = _options(worker, parameters)
            prompt = body.get("text_input")
            if not isinstance(prompt, str):
                raise BadInputError("'text_input' must be a string")
            pending = await service.submit(name, prompt, options, stream)
        except EdgeError as exc:
            return JSONResponse({"error": str(exc)}, status_code=status_for(exc))
        version = worker.generator.runner.path.name
        if stream:

            async def events() -> AsyncIterator[str]:
                try:
                    async for event in _events(pending):
                        if event.text or event.generation is not None:
                            reply = {"model_name": name, "model_version": version, "text_output": event.text}
                            if event.generation is not None:
                                reply["finish_reason"] = _FINISH[event.generation.finish_reason]
                            yield _sse(reply)
                except (
                    ServerClosingError
                ):  # cut by a shutdown past its grace period: a last event all the same
                    yield _sse(
                        {
                            "model_name": name,
                            "model_version": version,
                            "text_output": "",
                            "finish_reason": ABORTED,
                        }
                    )
                except Exception as exc:  # noqa: BLE001 - headers are sent: the error (logged by the worker) is an event
                    yield _sse({"error": str(exc) if isinstance(exc, EdgeError) else type(exc).__name__})
                finally:  # as in _stream: a client that left frees its row at the next step
                    pending.abandoned.set()

            return StreamingResponse(events(), media_type="text/event-stream")
        try:
            generation = await _collect(request, pending)
        except Exception as exc:  # noqa: BLE001 - the worker's error (logged there) as a JSON error
            return error_response(exc)
        return JSONResponse(
            {
                "model_name": name,
                "model_version": version,
                "text_output": generation.text,
                "finish_reason": _FINISH[generation.finish_reason],
            }
        )

    async def counted(request: Request, answer: Awaitable[Response]) -> Response:
        """`answer`, counted in ``/metrics`` under the model the request named (``request.state.model``, set
        once the body is read; a stream is counted when its headers go out)."""
        started = time.perf_counter()
        code = 500
        try:
            response = await answer
            code = response.status_code
            return response
        except BaseException:
            code = 499  # the client went away (the task was cancelled)
            raise
        finally:
            model = getattr(request.state, "model", None)
            label = model if isinstance(model, str) and model in service.workers else UNKNOWN_MODEL
            service.metrics.observe_request(label, "", code, time.perf_counter() - started)

    @app.post("/v2/models/{name}/generate")
    async def generate(request: Request, name: str) -> Response:
        request.state.model = name
        return await counted(request, triton_generate(request, name, stream=False))

    @app.post("/v2/models/{name}/generate_stream")
    async def generate_stream(request: Request, name: str) -> Response:
        request.state.model = name
        return await counted(request, triton_generate(request, name, stream=True))

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await counted(request, handle(request, chat=False))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await counted(request, handle(request, chat=True))


async def _stream(
    pending: _Pending, ident: str, created: int, name: str, chat: bool, include_usage: bool
) -> AsyncIterator[str]:
    kind = "chat.completion.chunk" if chat else "text_completion"

    def chunk(text: str | None, finish: str | None, first: bool = False) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
        if chat:
            delta: dict[str, Any] = {"role": "assistant"} if first else {}
            if text is not None:
                delta["content"] = text
            choice["delta"] = delta
        else:
            choice.update(text=text or "", logprobs=None)
        return {"id": ident, "object": kind, "created": created, "model": name, "choices": [choice]}

    if chat:
        yield _sse(chunk("", None, first=True))
    try:
        async for event in _events(pending):
            if event.text:
                yield _sse(chunk(event.text, None))
            if event.generation is not None:
                yield _sse(chunk(None if chat else "", _FINISH[event.generation.finish_reason]))
                if include_usage:
                    yield _sse({**chunk(None, None), "choices": [], "usage": _usage(event.generation)})
    except ServerClosingError:  # cut by a shutdown past its grace period: the stream still ends properly
        yield _sse(chunk(None if chat else "", ABORTED))
    except Exception as exc:  # noqa: BLE001 - headers are sent: the error (logged by the worker) is an event
        message = str(exc) if isinstance(exc, EdgeError) else f"internal error: {type(exc).__name__}"
        yield _sse({"error": {"message": message, "type": "server_error", "code": None}})
    finally:  # closed while suspended at a yield (the client left): the row must not wait for the GC
        pending.abandoned.set()
    yield "data: [DONE]\n\n"


def create_openai_app(service: GenerationService) -> FastAPI:
    """A FastAPI app serving only the OpenAI-compatible routes (and a liveness probe), behind the service's
    API key when it has one."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        service.close()

    app = FastAPI(title="edge-toolkit", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    if service.options.api_key is not None:
        app.middleware("http")(require_api_key(service.options.api_key))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        detail = f"no endpoint {request.url.path}" if exc.status_code == 404 else str(exc.detail)
        return JSONResponse(
            {"error": {"message": detail, "type": "invalid_request_error", "code": None}},
            status_code=exc.status_code,
        )

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> Response:
        _log_internal(f"{request.method} {request.url.path}", exc)
        return openai_error(exc)

    @app.get("/v2/health/live")
    async def live() -> dict[str, Any]:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready() -> JSONResponse:
        if service.closing:
            return JSONResponse({"ready": False, "error": "the server is shutting down"}, status_code=503)
        return JSONResponse({"ready": True})

    @app.get("/metrics")
    async def prometheus() -> Response:
        body, content_type = service.metrics.render()
        return Response(body, media_type=content_type)

    mount_openai(app, service)
    mount_model_list(app, service.names())
    return app


def open_generators(
    paths: Sequence[str | Path], load: LoadOptions
) -> tuple[dict[str, TextGenerator], list[str | Path]]:
    """The ``generate`` packages among `paths` as generators by name (the first of `load.variants` they have,
    else fp32), and the other paths."""
    generators: dict[str, TextGenerator] = {}
    others: list[str | Path] = []
    for path in paths:
        package = ModelPackage.open(path)
        if package.manifest.task != GENERATE_TASK:
            others.append(path)
            continue
        if package.manifest.name in generators:
            raise BadInputError(
                f"several packages are named '{package.manifest.name}'; serve one of them, or rename one"
            )
        variant = next((v for v in load.variants if v in package.manifest.variants), FP32_VARIANT)
        runner = Runner(package.model_path(variant), config=load.config, threads=load.threads)
        generators[package.manifest.name] = TextGenerator(package, runner)
    return generators, others


@dataclass(frozen=True)
class ServingApp:
    """What `edge serve` (and each Ray replica) serves: the app, the tensor models' registry, the generators."""

    app: FastAPI
    registry: ModelRegistry | None
    generators: Mapping[str, TextGenerator]
    service: GenerationService | None = None

    def abort(self) -> None:
        """A forced shutdown of everything served: waiting requests are answered 503 now."""
        if self.registry is not None:
            self.app.state.edge.abort()
        if self.service is not None:
            self.service.abort()


def build_serving_app(paths: Sequence[str | Path], load: LoadOptions, options: ServeOptions) -> ServingApp:
    """Generate packages behind the OpenAI-compatible and Triton generate routes, every other package behind
    the KServe v2 app (`create_app`), embedders also behind ``/v1/embeddings``, rerankers behind ``/v1/rerank``;
    one app for all."""
    from toolkit.serve.app import create_app

    generators, others = open_generators(paths, load)
    registry = ModelRegistry.load(others, load) if others else None
    service = GenerationService(generators, options) if generators else None
    if registry is None:
        if service is None:
            raise BadInputError("no models to serve; pass at least one model package directory")
        return ServingApp(create_openai_app(service), None, generators, service)
    app = create_app(registry, options, metrics=service.metrics if service is not None else None)
    embedders = embedding_models(list(registry))
    if embedders:
        mount_embeddings(app, embedders)
    rerankers = rerank_models(list(registry))
    if rerankers:
        mount_rerank(app, rerankers)
    if service is not None:
        mount_openai(app, service)
    if service is not None or embedders or rerankers:
        mount_model_list(app, [*generators, *embedders, *rerankers])
    return ServingApp(app, registry, generators, service)
