"""OpenAI-compatible text generation: ``/v1/completions`` and ``/v1/chat/completions``, streamed as server-sent
events, over the generators' service (`toolkit.serve.continuous`).

Each request's ``n`` choices are ``n`` rows of one request, prefilled once, choice i seeded ``seed + i``.
``temperature`` 0 is greedy; an omitted one takes the model's generation_config. ``response_format`` and a required
or named ``tool_choice`` hold the reply to a grammar (`toolkit.decoding.grammar`). Errors are OpenAI's shape,
``{"error": {"message", "type", "code"}}``. A row cut by a shutdown past its grace period ends a stream with a last
chunk whose finish_reason is ``"abort"`` (vLLM's name) and ``[DONE]``, a whole answer with 503.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from toolkit.decoding import Generation, GenerationOptions
from toolkit.decoding.loop import TokenLogprob
from toolkit.errors import EdgeError
from toolkit.serve.bodies import read_json_body
from toolkit.serve.continuous import (
    ABORTED,
    FINISH_REASONS,
    GenerationService,
    Pending,
    collect,
    events,
    sse,
)
from toolkit.serve.errors import ServerClosingError, openai_error
from toolkit.serve.openai.protocol import CompletionRequest, completion_request
from toolkit.serve.openai.tools import ToolCall
from toolkit.serve.state import ModelLabel
from toolkit.tasks.generate import TextGenerator

__all__ = ["serve_completion"]


async def serve_completion(
    service: GenerationService, request: Request, chat: bool, label: ModelLabel
) -> Response:
    """One completions (`chat`: chat completions) request: checked, queued, answered whole or streamed; the
    model it names goes into `label` when it is served."""
    try:
        body = await read_json_body(request, service.options)
        name = body.get("model")
        if isinstance(name, str) and name in service.workers:
            label.model = name
        worker = service.worker(name)
        asked = completion_request(worker.generator, body, chat, service.options.max_n)
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
        generations = await collect(request, pending)
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


def _usage(generations: Sequence[Generation]) -> dict[str, int]:
    prompt = generations[0].timings.prompt_tokens if generations else 0
    completion = sum(len(g.token_ids) for g in generations)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


@dataclass(frozen=True)
class _Reply:
    """How one OpenAI request is answered: its id, route, choices' rendering (text or tool calls, log-probs)."""

    ident: str
    created: int
    model: str
    chat: bool
    request: CompletionRequest
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
        return "tool_calls" if self._calls(generation) else FINISH_REASONS[generation.finish_reason]

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


async def _stream(pending: Pending, reply: _Reply) -> AsyncIterator[str]:
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
        yield sse(
            reply.chunk(
                [
                    {**reply.delta(i, "", None), "delta": {"role": "assistant", "content": ""}}
                    for i in range(n)
                ]
            )
        )
    if tools is not None and named:  # the call is known from the start: its arguments stream as they come
        headers = [{"index": 0, **ToolCall(tools.choice, "").openai()} for _ in range(n)]  # an id each
        yield sse(
            reply.chunk(
                [{**reply.delta(i, None, None), "delta": {"tool_calls": [headers[i]]}} for i in range(n)]
            )
        )
    finished: list[Generation] = []
    try:
        async for choice, event in events(pending):
            generation = event.generation
            if (event.text or event.logprobs) and not buffered:
                delta = reply.delta(choice, event.text, None, event.logprobs, offsets[choice])
                if named:
                    delta["delta"] = {"tool_calls": [{"index": 0, "function": {"arguments": event.text}}]}
                yield sse(reply.chunk([delta]))
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
                yield sse(reply.chunk([delta]))
            yield sse(
                reply.chunk(
                    [reply.delta(choice, None if reply.chat else "", reply.finish_reason(generation))]
                )
            )
        if reply.request.include_usage:
            yield sse({**reply.chunk([]), "usage": _usage(finished)})
    except ServerClosingError:  # cut by a shutdown past its grace period: the stream still ends properly
        yield sse(reply.chunk([reply.delta(i, None if reply.chat else "", ABORTED) for i in range(n)]))
    except Exception as exc:  # noqa: BLE001 - headers are sent: the error (logged by the worker) is an event
        message = str(exc) if isinstance(exc, EdgeError) else f"internal error: {type(exc).__name__}"
        yield sse({"error": {"message": message, "type": "server_error", "code": None}})
    finally:  # closed while suspended at a yield (the client left): the row must not wait for the GC
        pending.abandoned.set()
    yield "data: [DONE]\n\n"
