"""Triton's generate extension over the generators' service: ``POST /v2/models/M/generate`` answers
``{"model_name", "model_version", "text_output", "finish_reason"}``, ``generate_stream`` the same as server-sent
events. The request is ``{"text_input", "parameters": {"max_tokens", "temperature", "top_p", "top_k", "stop",
"seed", ...}}`` (the OpenAI routes' settings, `toolkit.serve.generation_params`); errors are ``{"error"}``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from toolkit.errors import BadInputError, EdgeError
from toolkit.serve.bodies import read_json_body
from toolkit.serve.continuous import ABORTED, FINISH_REASONS, GenerationService, Pending, collect, events, sse
from toolkit.serve.errors import ServerClosingError, error_response, status_for
from toolkit.serve.generation_params import choice_count, generation_options

__all__ = ["triton_generate"]


async def triton_generate(service: GenerationService, request: Request, name: str, stream: bool) -> Response:
    """One generate (`stream`: generate_stream) request for model `name`."""
    try:
        body = await read_json_body(request, service.options)
        worker = service.worker(name)
        parameters = body.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise BadInputError("'parameters' must be a JSON object")
        options = generation_options(worker.generator, parameters)
        choice_count(parameters, 1, "the Triton generate route answers one text")
        prompt = body.get("text_input")
        if not isinstance(prompt, str):
            raise BadInputError("'text_input' must be a string")
        pending = await service.submit(name, prompt, options, stream)
    except EdgeError as exc:
        return JSONResponse({"error": str(exc)}, status_code=status_for(exc))
    version = worker.generator.runner.path.name
    if stream:
        return StreamingResponse(_stream(name, version, pending), media_type="text/event-stream")
    try:
        [generation] = await collect(request, pending)
    except Exception as exc:  # noqa: BLE001 - the worker's error (logged there) as a JSON error
        return error_response(exc)
    return JSONResponse(
        {
            "model_name": name,
            "model_version": version,
            "text_output": generation.text,
            "finish_reason": FINISH_REASONS[generation.finish_reason],
        }
    )


async def _stream(name: str, version: str, pending: Pending) -> AsyncIterator[str]:
    """The answer as server-sent events: each settled piece of text, the last with its finish_reason."""
    try:
        async for _choice, event in events(pending):
            if event.text or event.generation is not None:
                reply = {"model_name": name, "model_version": version, "text_output": event.text}
                if event.generation is not None:
                    reply["finish_reason"] = FINISH_REASONS[event.generation.finish_reason]
                yield sse(reply)
    except ServerClosingError:  # cut by a shutdown past its grace period: a last event all the same
        yield sse(
            {
                "model_name": name,
                "model_version": version,
                "text_output": "",
                "finish_reason": ABORTED,
            }
        )
    except Exception as exc:  # noqa: BLE001 - headers are sent: the error (logged by the worker) is an event
        yield sse({"error": str(exc) if isinstance(exc, EdgeError) else type(exc).__name__})
    finally:  # as in the OpenAI streams: a client that left frees its row at the next step
        pending.abandoned.set()
