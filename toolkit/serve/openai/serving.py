"""OpenAI-compatible text generation: ``/v1/completions`` and ``/v1/chat/completions``, streamed as
server-sent events, over ``generate`` packages.

::

    GET  /v1/models                 the served generators
    POST /v1/completions            {"model", "prompt", "max_tokens", "temperature", "top_p", "stop", "seed",
                                     "stream", "n", "logprobs" (k alternatives), "presence_penalty",
                                     "frequency_penalty", "response_format", and the extensions "top_k",
                                     "repetition_penalty"}
    POST /v1/chat/completions       {"model", "messages", ...the same settings; "max_completion_tokens",
                                     "logprobs": true with "top_logprobs", "tools" and "tool_choice" too}
    POST /v2/models/M/generate      Triton's generate extension: {"text_input", "parameters": {"max_tokens",
    POST /v2/models/M/generate_stream    "temperature", "top_p", "top_k", "stop", "seed", ...}} -> {"model_name",
                                     "model_version", "text_output"} (server-sent events for generate_stream)

Each model has one worker thread doing step-level batching (`toolkit.generation.continuous`): a request joins
the running batch at the next step (up to `max_batch` rows) and leaves it when it finishes, each row with its
own settings, stop strings, limit and grammar (``response_format``, a required or named ``tool_choice``:
`toolkit.generation.grammar`); each stream gets its own row's text as it settles. ``n`` choices are ``n`` rows
of one request, prefilled once, choice i seeded ``seed + i``. ``temperature`` 0 is greedy; an omitted one takes the model's
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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from toolkit.errors import BadInputError, EdgeError
from toolkit.generation import GENERATE_TASK, Generation, GenerationEvent, GenerationOptions, TextGenerator
from toolkit.generation.chat import TemplateBudget
from toolkit.generation.continuous import ContinuousBatch
from toolkit.generation.decoding import TokenLogprob
from toolkit.generation.generator import Prompt, TokenPrompt
from toolkit.generation.grammar import OutputConstraint, constraint_from
from toolkit.generation.sampling import MAX_TOP_LOGPROBS
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
from toolkit.serve.openai_tools import ToolCall, ToolRequest, tool_request
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
    """One request waiting for, or decoding in, a batch: one row per choice (OpenAI's ``n``), each with its
    options; `(choice, event)` pairs go to `events` on the server's loop. Its rows end at the next step once
    `abandoned` is set (the client left) or `deadline` (monotonic seconds; None: none) passes."""

    prompt: Any
    options: tuple[GenerationOptions, ...]
    loop: asyncio.AbstractEventLoop
    deadline: float | None = None
    events: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    abandoned: threading.Event = field(default_factory=threading.Event)
    running: int = 0  # its rows still decoding (the worker's count)

    def emit(self, item: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, item)
        except RuntimeError:  # the loop is closed: the server has stopped and nobody waits for this row
            self.abandoned.set()

    def fail(self, exc: BaseException) -> None:
        """End the request with `exc` (its answer or its stream's last event)."""
        self.emit(exc)
        self.emit(_DONE)

    def expired(self) -> bool:
        """Whether the deadline has passed (the worker then counts it and answers it with `time_out`)."""
        return self.deadline is not None and time.monotonic() > self.deadline

    def time_out(self) -> None:
        """Answer 504: the deadline passed."""
        self.fail(
            InferenceTimeoutError(
                "no answer within --timeout-ms; ask for fewer tokens, stream the answer (streams have no "
                "deadline) or raise --timeout-ms"
            )
        )


class _Worker:
    """A thread that decodes one generator's requests with step-level batching: waiting requests join the
    running batch between steps (up to `max_batch` rows; a request's ``n`` rows join together, so the batch
    may pass it by ``n - 1``), finished ones leave it, and so do rows whose client left or whose deadline
    passed; `cut` ends every row (a shutdown past its grace period)."""

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
        running: dict[int, tuple[_Pending, int]] = {}  # row key -> its request and choice index
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
                    self.metrics.observe_timed_out(self.name, 1)  # counted before the client hears of it
                    pending.time_out()
                    continue
                rows = {next(keys): options for options in pending.options}
                try:
                    self.batch.add_rows(rows, pending.prompt)
                except Exception as exc:  # one bad request fails alone; the running rows go on
                    log.error("generation for %s failed to start", self.name, exc_info=exc)
                    pending.fail(exc)
                    continue
                pending.running = len(rows)
                running.update({key: (pending, choice) for choice, key in enumerate(rows)})
            self.largest_batch = max(self.largest_batch, len(running))
            requests = {id(p): p for p, _ in running.values()}
            if self.cut and running:
                for pending in requests.values():
                    pending.fail(ServerClosingError("the server stopped before this request finished"))
                running.clear()
                self.batch = ContinuousBatch(self.generator)
            gone = {i for i, pending in requests.items() if pending.abandoned.is_set()}
            late = {i for i, pending in requests.items() if i not in gone and pending.expired()}
            if gone or late:  # free their slots and cache now, not at max_tokens
                ended = {key for key, (pending, _) in running.items() if id(pending) in gone | late}
                self.batch.drop(ended)
                for key in ended:
                    del running[key]
                self.metrics.observe_abandoned(self.name, len(gone))
                self.metrics.observe_timed_out(self.name, len(late))
                for i in late:
                    requests[i].time_out()
            if not running:
                continue
            try:
                events = self.batch.step()
            except Exception as exc:  # every running stream gets the error instead of hanging
                log.error("generation for %s failed", self.name, exc_info=exc)
                for pending in {id(p): p for p, _ in running.values()}.values():
                    pending.fail(exc)
                running.clear()
                self.batch = ContinuousBatch(self.generator)
                continue
            for event in events:
                pending, choice = running[event.row]
                pending.emit((choice, event))
                if event.generation is not None:
                    del running[event.row]
                    pending.running -= 1
                    if not pending.running:
                        pending.emit(_DONE)

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
    def _encode(
        generator: TextGenerator,
        prompt: Prompt,
        tools: Sequence[Mapping[str, Any]] | None,
        first: GenerationOptions,
    ) -> list[int]:
        _text, ids = generator.encode(prompt, TemplateBudget(), tools)
        generator.check_length(ids)
        if first.constraint is not None:  # compiled here once, so a bad schema is a 400 before it queues
            generator.grammars.row(first.constraint)
        return ids

    async def submit(
        self,
        name: str,
        prompt: Any,
        options: GenerationOptions | Sequence[GenerationOptions],
        stream: bool = False,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> _Pending:
        """Check the prompt's size, tokenize it off the loop (one-line 400s and 413s happen here, not in the
        batch) and queue it, one row per options (the choices of OpenAI's ``n``, sharing one prefill); a
        request that does not stream gets the server's deadline (--timeout-ms)."""
        choices = (options,) if isinstance(options, GenerationOptions) else tuple(options)
        worker = self.worker(name)
        if self.closing:
            raise ServerClosingError("the server is shutting down; send the request to another replica")
        self._check_size(prompt)
        loop = asyncio.get_running_loop()
        ids = await loop.run_in_executor(
            self.encoder, self._encode, worker.generator, prompt, tools, choices[0]
        )
        limit = self.options.max_request_tokens
        longest = max(o.max_new_tokens for o in choices)
        if len(choices) * (len(ids) + longest) > limit:
            rows = f"{len(choices)} choices of " if len(choices) > 1 else ""
            raise BodyTooLargeError(
                f"model '{name}': {rows}the prompt's {len(ids)} tokens plus max_tokens {longest} are over "
                f"the {limit}-token limit; shorten the prompt, lower max_tokens (or raise --max-request-tokens)"
            )
        if worker.waiting.qsize() >= self.options.batching.max_queue:
            raise QueueFullError(
                f"model '{name}' has {worker.waiting.qsize()} requests waiting (the limit is "
                f"{self.options.batching.max_queue}, --max-queue); retry later"
            )
        timeout = self.options.timeout_s
        deadline = time.monotonic() + timeout if timeout is not None and not stream else None
        pending = _Pending(TokenPrompt(tuple(ids)), choices, loop, deadline)
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
                    pending.fail(
                        ServerClosingError("the server was stopped; send the request to another replica")
                    )
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


# fields of OpenAI's requests this server does not act on, with the values that ask for nothing (accepted)
_UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "logit_bias": (None, {}),
    "best_of": (None, 1),
    "echo": (None, False),
    "suffix": (None, ""),
    "audio": (None,),
    "modalities": (None, ["text"]),
    "prediction": (None,),
    "web_search_options": (None,),
}


def _options(service_worker: _Worker, body: Mapping[str, Any]) -> GenerationOptions:
    """The request's settings over the model's defaults."""
    for key, off in _UNSUPPORTED.items():
        if body.get(key) not in off:
            raise BadInputError(f"'{key}' is not supported by this server; drop it")
    settings: dict[str, Any] = {
        "max_new_tokens": _number(body, "max_completion_tokens", int) or _number(body, "max_tokens", int),
        "top_p": _number(body, "top_p", float),
        "top_k": _number(body, "top_k", int),
        "repetition_penalty": _number(body, "repetition_penalty", float),
        "presence_penalty": _number(body, "presence_penalty", float),
        "frequency_penalty": _number(body, "frequency_penalty", float),
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


def _choice_count(body: Mapping[str, Any], limit: int, hint: str) -> int:
    """OpenAI's ``n``: how many completions of the prompt to make (1 to `limit`)."""
    n = body.get("n")
    if n is None:
        return 1
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= limit:
        raise BadInputError(f"'n' must be an integer from 1 to {limit} ({hint}), got {n!r}")
    return n


def _per_choice(options: GenerationOptions, n: int) -> tuple[GenerationOptions, ...]:
    """One row's options per choice: choice i gets seed + i, so it equals a single request with that seed."""
    if options.seed is None:
        return (options,) * n
    return tuple(replace(options, seed=(options.seed + i) % 2**64) for i in range(n))


def _top_logprobs(body: Mapping[str, Any], chat: bool) -> int | None:
    """How many alternatives each token's log-probability comes with (None: no log-probabilities): chat's
    ``logprobs: true`` with ``top_logprobs``, the completions route's ``logprobs`` number."""
    if chat:
        top = _number(body, "top_logprobs", int)
        if not _flag(body, "logprobs"):
            if top is not None:
                raise BadInputError("'top_logprobs' needs 'logprobs': true")
            return None
        top, key = top or 0, "top_logprobs"
    else:
        top, key = _number(body, "logprobs", int), "logprobs"
        if top is None:
            return None
    if not 0 <= top <= MAX_TOP_LOGPROBS:
        raise BadInputError(f"'{key}' must be an integer from 0 to {MAX_TOP_LOGPROBS}, got {top}")
    return top


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
class _Request:
    """An OpenAI generation request, checked: its prompt, one options per choice, how it answers."""

    prompt: Any
    choices: tuple[GenerationOptions, ...]
    stream: bool
    include_usage: bool
    tools: ToolRequest | None


def _request(service: GenerationService, worker: _Worker, body: Mapping[str, Any], chat: bool) -> _Request:
    """The request `body` of a chat (`chat`) or completions route, every field checked (one-line 400s)."""
    options = _options(worker, body)
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
    n = _choice_count(body, service.options.max_n, "--max-n")
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
    return _Request(prompt, _per_choice(options, n), _streams(body), _include_usage(body), tools)


class _TokenTexts:
    """Log-probabilities in OpenAI's shapes, each token as the text the tokenizer decodes it to alone (a byte
    of a longer character decodes to U+FFFD)."""

    def __init__(self, generator: TextGenerator, options: GenerationOptions) -> None:
        self._generator = generator
        self._options = options  # its stop strings hold text back as the stream's rows did
        self._tokenizer = generator.tokenizer

    def _text(self, token: int) -> str:
        return str(self._tokenizer.decode([token], skip_special_tokens=False))

    def _entry(self, token: int, logprob: float) -> dict[str, Any]:
        text = self._text(token)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    def chat(self, entries: Sequence[TokenLogprob]) -> dict[str, Any]:
        """Chat's ``logprobs``: {"content": [{"token", "logprob", "bytes", "top_logprobs"}]}."""
        return {
            "content": [
                {**self._entry(e.token, e.logprob), "top_logprobs": [self._entry(t, lp) for t, lp in e.top]}
                for e in entries
            ],
            "refusal": None,
        }

    def completion(self, entries: Sequence[TokenLogprob], offset: int | None = None) -> dict[str, Any]:
        """The completions route's ``logprobs``: tokens, token_logprobs, top_logprobs and text_offset, each
        token's offset being how much of the text had settled before it: `offset` for the one token of a
        stream's event, replayed through a detokenizer for a whole answer."""
        if offset is None:
            watcher = self._generator.detokenizer(self._options)
            offsets, settled = [], 0
            for entry in entries:
                offsets.append(settled)
                settled += len(watcher.add(entry.token))
        else:
            offsets = [offset] * len(entries)
        return {
            "tokens": [self._text(e.token) for e in entries],
            "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [{self._text(t): lp for t, lp in e.top} for e in entries],
            "text_offset": offsets,
        }


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


def _usage(generations: Sequence[Generation]) -> dict[str, int]:
    prompt = generations[0].timings.prompt_tokens if generations else 0
    completion = sum(len(g.token_ids) for g in generations)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def _events(pending: _Pending) -> AsyncIterator[tuple[int, GenerationEvent]]:
    """The request's (choice, event) pairs until every choice has ended; a consumer that stops early (the
    client left, its task was cancelled) marks the request abandoned, and the worker drops its rows at its
    next step."""
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


async def _generations(pending: _Pending) -> list[Generation]:
    """Every choice's finished generation, in choice order."""
    done: dict[int, Generation] = {}
    async for choice, event in _events(pending):
        if event.generation is not None:
            done[choice] = event.generation
    if len(done) != len(pending.options):
        raise ServerClosingError("the generation ended without a result; retry")
    return [done[choice] for choice in range(len(done))]


async def _disconnected(request: Request) -> None:
    """Returns once the client has disconnected (its body is read, so receive() waits for that alone)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _collect(request: Request, pending: _Pending) -> list[Generation]:
    """The finished generations (one per choice) of a request that does not stream; a client that disconnects
    first ends its rows at the next step (ClientGoneError, answered to nobody)."""
    result = asyncio.ensure_future(_generations(pending))
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
            asked = _request(service, worker, body, chat)
            tools = asked.tools.tools if asked.tools is not None else None
            pending = await service.submit(str(name), asked.prompt, asked.choices, asked.stream, tools)
        except EdgeError as exc:
            return openai_error(exc)
        reply = _Reply(
            f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}",
            int(time.time()),
            str(name),
            chat,
            asked,
            _TokenTexts(worker.generator, asked.choices[0]),
        )
        if asked.stream:
            return StreamingResponse(_stream(pending, reply), media_type="text/event-stream")
        try:
            generations = await _collect(request, pending)
        except Exception as exc:  # noqa: BLE001 - the worker's error (logged there) in OpenAI's shape
            return openai_error(exc)
        return JSONResponse(
            {
                "id": reply.ident,
                "object": "chat.completion" if chat else "text_completion",
                "created": reply.created,
                "model": name,
                "choices": [reply.choice(i, g) for i, g in enumerate(generations)],
                "usage": _usage(generations),
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
            _choice_count(parameters, 1, "the Triton generate route answers one text")
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
                    async for _choice, event in _events(pending):
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
            [generation] = await _collect(request, pending)
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


@dataclass(frozen=True)
class _Reply:
    """How one OpenAI request is answered: its id, route, choices' rendering (text or tool calls, log-probs)."""

    ident: str
    created: int
    model: str
    chat: bool
    request: _Request
    texts: _TokenTexts

    def _logprobs(self, entries: Sequence[TokenLogprob], offset: int | None = None) -> dict[str, Any] | None:
        if self.request.choices[0].top_logprobs is None:
            return None
        return self.texts.chat(entries) if self.chat else self.texts.completion(entries, offset)

    def _calls(self, generation: Generation) -> list[ToolCall]:
        tools = self.request.tools
        return tools.calls(generation.text) if tools is not None else []

    def finish_reason(self, generation: Generation) -> str:
        """OpenAI's finish_reason: ``tool_calls`` when the reply is calls, else stop or length."""
        return "tool_calls" if self._calls(generation) else _FINISH[generation.finish_reason]

    def message(self, generation: Generation) -> dict[str, Any]:
        """The assistant's message: its text, or its tool calls."""
        calls = self._calls(generation)
        if calls:
            return {"role": "assistant", "content": None, "tool_calls": [c.openai() for c in calls]}
        return {"role": "assistant", "content": generation.text}

    def choice(self, index: int, generation: Generation) -> dict[str, Any]:
        """A whole answer's choice `index`."""
        choice: dict[str, Any] = {"index": index, "finish_reason": self.finish_reason(generation)}
        logprobs = self._logprobs(generation.logprobs)
        if self.chat:
            choice.update(message=self.message(generation), logprobs=logprobs)
        else:
            choice.update(text=generation.text, logprobs=logprobs)
        return choice

    def chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        """A stream's event."""
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return {
            "id": self.ident,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }

    def delta(
        self,
        index: int,
        text: str | None,
        finish: str | None,
        entries: Sequence[TokenLogprob] = (),
        offset: int = 0,
    ) -> dict[str, Any]:
        """A stream's choice `index`: its new `text` (None: none), why it ended (None: it goes on), its tokens'
        log-probabilities."""
        choice: dict[str, Any] = {"index": index, "finish_reason": finish}
        logprobs = self._logprobs(entries, offset) if entries else None
        if self.chat:
            choice.update(delta={} if text is None else {"content": text}, logprobs=logprobs)
        else:
            choice.update(text=text or "", logprobs=logprobs)
        return choice


async def _stream(pending: _Pending, reply: _Reply) -> AsyncIterator[str]:
    """The request's server-sent events: each choice's text as it settles (a named tool's arguments as
    ``tool_calls`` deltas; a reply ``auto`` or ``required`` reads for calls whole, at its end), its
    log-probabilities beside it, a last event per choice with its finish_reason, the usage when asked, then
    ``[DONE]``."""
    n = len(reply.request.choices)
    tools = reply.request.tools
    named = tools is not None and tools.named
    buffered = (
        tools is not None and not named and tools.choice != "none"
    )  # calls known once the reply is whole
    offsets = [0] * n
    if reply.chat:
        yield _sse(
            reply.chunk(
                [
                    {**reply.delta(i, "", None), "delta": {"role": "assistant", "content": ""}}
                    for i in range(n)
                ]
            )
        )
    if tools is not None and named:  # the call is known from the start: its arguments stream as they come
        headers = [{"index": 0, **ToolCall(tools.choice, "").openai()} for _ in range(n)]  # an id each
        yield _sse(
            reply.chunk(
                [{**reply.delta(i, None, None), "delta": {"tool_calls": [headers[i]]}} for i in range(n)]
            )
        )
    finished: list[Generation] = []
    try:
        async for choice, event in _events(pending):
            generation = event.generation
            if (event.text or event.logprobs) and not buffered:
                delta = reply.delta(choice, event.text, None, event.logprobs, offsets[choice])
                if named:
                    delta["delta"] = {"tool_calls": [{"index": 0, "function": {"arguments": event.text}}]}
                yield _sse(reply.chunk([delta]))
                offsets[choice] += len(event.text)
            if generation is None:
                continue
            finished.append(generation)
            if buffered and reply.chat:
                answer = reply.message(generation)
                delta = reply.delta(choice, answer["content"], None, generation.logprobs)
                if answer["content"] is None:
                    calls = [{"index": i, **call} for i, call in enumerate(answer["tool_calls"])]
                    delta["delta"] = {"tool_calls": calls}
                yield _sse(reply.chunk([delta]))
            yield _sse(
                reply.chunk(
                    [reply.delta(choice, None if reply.chat else "", reply.finish_reason(generation))]
                )
            )
        if reply.request.include_usage:
            yield _sse({**reply.chunk([]), "usage": _usage(finished)})
    except ServerClosingError:  # cut by a shutdown past its grace period: the stream still ends properly
        yield _sse(reply.chunk([reply.delta(i, None if reply.chat else "", ABORTED) for i in range(n)]))
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
