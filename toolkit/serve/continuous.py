"""The generators' scheduler: one worker thread per served generator doing step-level batching
(`toolkit.decoding.continuous`), and the events of each request as the routes read them.

A request joins the running batch at the next step (up to `max_batch` rows) and leaves it when it finishes, each
row with its own settings, stop strings, limit and grammar; each stream gets its own row's text as it settles.
``n`` choices are ``n`` rows of one request, prefilled once. A prompt over `PROMPT_BYTES_PER_TOKEN` UTF-8 bytes
per ``--max-request-tokens`` token is refused (413) before it is tokenized; chat templates (on a
`TemplateBudget`) and tokenizers run on a thread of their own, never on the event loop. A row leaves its batch at
the next step when its client disconnects (streamed or not) or, for a request that does not stream, when
``--timeout-ms`` passes (504, counted in ``edge_timed_out_rows_total``). When a shutdown's grace period ends
(`GenerationService.abort`), waiting requests get 503 and running rows end.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from toolkit.decoding import Generation, GenerationEvent, GenerationOptions
from toolkit.decoding.continuous import ContinuousBatch
from toolkit.errors import BadInputError
from toolkit.serve.errors import (
    BodyTooLargeError,
    ClientGoneError,
    InferenceTimeoutError,
    ModelNotFoundError,
    QueueFullError,
    ServerClosingError,
)
from toolkit.serve.metrics import ServeMetrics
from toolkit.serve.models import GeneratorModel
from toolkit.serve.options import ServeOptions
from toolkit.tasks.generate import TextGenerator
from toolkit.tasks.generate.chat import TemplateBudget
from toolkit.tasks.generate.generator import Prompt, TokenPrompt

if TYPE_CHECKING:
    from starlette.requests import Request

__all__ = [
    "ABORTED",
    "FINISH_REASONS",
    "PROMPT_BYTES_PER_TOKEN",
    "GenerationService",
    "Pending",
    "collect",
    "events",
    "sse",
]

log = logging.getLogger(__name__)

FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length"}
ABORTED = "abort"  # vLLM's finish_reason for a request the server stopped (a shutdown past its grace period)
# A prompt longer than this many UTF-8 bytes per token of --max-request-tokens cannot be within it for any
# tokenizer worth serving (byte-level BPE averages 3-5 bytes a token); refused before tokenizing it.
PROMPT_BYTES_PER_TOKEN = 32
_DONE = object()


@dataclass
class Pending:
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
        self.waiting: queue.Queue[Pending | None] = queue.Queue()
        self.batch = ContinuousBatch(generator)
        self.largest_batch = 0
        self.cut = False
        self.thread = threading.Thread(target=self._loop, name=f"generate-{name}", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        running: dict[int, tuple[Pending, int]] = {}  # row key -> its request and choice index
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
    """The registry's generator models (`GeneratorModel`) by name, each with its batching worker."""

    def __init__(
        self,
        models: Iterable[GeneratorModel],
        options: ServeOptions | None = None,
        metrics: ServeMetrics | None = None,
    ) -> None:
        self.options = options or ServeOptions()
        batching = self.options.batching
        self.metrics = metrics or ServeMetrics()
        self.workers = {
            m.name: _Worker(m.name, m.generator, batching.max_batch, self.metrics) for m in models
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
    ) -> Pending:
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
        pending = Pending(TokenPrompt(tuple(ids)), choices, loop, deadline)
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


async def events(pending: Pending) -> AsyncIterator[tuple[int, GenerationEvent]]:
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


def sse(data: Any) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


async def _generations(pending: Pending) -> list[Generation]:
    """Every choice's finished generation, in choice order."""
    done: dict[int, Generation] = {}
    async for choice, event in events(pending):
        if event.generation is not None:
            done[choice] = event.generation
    if len(done) != len(pending.options):
        raise ServerClosingError("the generation ended without a result; retry")
    return [done[choice] for choice in range(len(done))]


async def _disconnected(request: Request) -> None:
    """Returns once the client has disconnected (its body is read, so receive() waits for that alone)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def collect(request: Request, pending: Pending) -> list[Generation]:
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
