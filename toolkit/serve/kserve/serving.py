"""KServe v2 serving logic: model metadata and configuration, and an inference request from its body to its
encoded answer over the scheduler (limits checked before anything is tokenized or run)."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from toolkit.errors import BadInputError
from toolkit.inputs import sequence_axis
from toolkit.serve.batching import Scheduler
from toolkit.serve.errors import BodyTooLargeError, InferenceTimeoutError, QueueFullError
from toolkit.serve.kserve.protocol import (
    HEADER_LENGTH,
    EncodedBody,
    ResponseOutput,
    decode_request,
    encode_response,
    triton_type,
)
from toolkit.serve.models import Job, ServedModel
from toolkit.serve.options import ServeOptions
from toolkit.serve.registry import ModelRegistry
from toolkit.serve.state import ServerState
from toolkit.serve.tensors import InferenceRequest

__all__ = ["EXTENSIONS", "SERVER_NAME", "header_length", "infer", "model_config", "model_metadata"]

SERVER_NAME = "edge-toolkit"
EXTENSIONS = ("binary_tensor_data", "model_configuration")


def header_length(value: str | None) -> int | None:
    """The Inference-Header-Content-Length header as a number (None: absent)."""
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise BadInputError(f"{HEADER_LENGTH} must be an integer, got {value!r}") from None


def model_metadata(registry: ModelRegistry, model: ServedModel) -> dict[str, Any]:
    """The v2 model metadata: name, versions, platform, inputs and outputs."""
    return {
        "name": model.name,
        "versions": list(registry.versions(model.name)),
        "platform": model.platform,
        "inputs": [t.to_json() for t in model.inputs],
        "outputs": [t.to_json() for t in model.outputs],
    }


def model_config(state: ServerState, model: ServedModel) -> dict[str, Any]:
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


async def infer(state: ServerState, model: ServedModel, body: bytes, header: int | None) -> EncodedBody:
    """Decode, check and prepare the request (off the loop when large or media), run it through the scheduler
    under the tighter of the server's and the request's timeouts, and encode the answer."""
    options = state.options
    decoded, job = await state.decode(
        len(body), _decode_and_prepare, model, options, body, header, off_loop=model.prepare_off_loop
    )
    timeouts = [t for t in (options.timeout_s, decoded.timeout_s) if t is not None]
    try:
        raw = await _submit(state.scheduler, model, job, min(timeouts, default=None))
    except (QueueFullError, InferenceTimeoutError) as exc:
        raise type(exc)(f"model '{model.name}' {exc}") from None
    finally:
        job.cancel()  # answered or abandoned: a decode still running stops at its next clip or text
    result = job.finish(raw)
    return encode_response(
        model.name,
        model.version,
        [ResponseOutput(n, result[n], decoded.wants_binary(n)) for n in job.outputs],
        decoded.id,
    )


def _decode_and_prepare(
    model: ServedModel, options: ServeOptions, body: bytes, header: int | None
) -> tuple[InferenceRequest, Job]:
    """Decode the body, check the request's size against the limits, and turn it into the model's job."""
    decoded = decode_request(body, header)
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
