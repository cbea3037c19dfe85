"""The generation settings the OpenAI and Triton generate routes share, checked from a request's JSON (one-line
400s naming the field): OpenAI's sampling fields over the model's defaults, and ``n``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from toolkit.checks import check_finite_number
from toolkit.decoding import GenerationOptions
from toolkit.decoding.sampling import MAX_TEMPERATURE
from toolkit.errors import BadInputError
from toolkit.tasks.generate import TextGenerator

__all__ = ["choice_count", "flag", "generation_options", "number"]


def number(body: Mapping[str, Any], key: str, kind: type) -> Any:
    """`body[key]` as a `kind` (int or float; None when absent, a float finite); any other value is a
    BadInputError."""
    value = body.get(key)
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (kind is int and not isinstance(value, int))
    ):
        raise BadInputError(f"'{key}' must be a {kind.__name__}, got {value!r}")
    if kind is float:  # JSON's 1e400 parses as inf, and 10**400 has no float
        check_finite_number(f"'{key}'", value)
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


def generation_options(generator: TextGenerator, body: Mapping[str, Any]) -> GenerationOptions:
    """The request's settings over the model's defaults."""
    for key, off in _UNSUPPORTED.items():
        if body.get(key) not in off:
            raise BadInputError(f"'{key}' is not supported by this server; drop it")
    settings: dict[str, Any] = {
        "max_new_tokens": number(body, "max_completion_tokens", int) or number(body, "max_tokens", int),
        "top_p": number(body, "top_p", float),
        "top_k": number(body, "top_k", int),
        "repetition_penalty": number(body, "repetition_penalty", float),
        "presence_penalty": number(body, "presence_penalty", float),
        "frequency_penalty": number(body, "frequency_penalty", float),
        "seed": number(body, "seed", int),
    }
    temperature = number(body, "temperature", float)
    if temperature is not None:
        if not 0 <= temperature <= MAX_TEMPERATURE:
            raise BadInputError(
                f"'temperature' must be in [0, {MAX_TEMPERATURE:g}] (0: greedy), got {temperature}"
            )
        settings["do_sample"] = temperature > 0
        if temperature > 0:
            settings["temperature"] = temperature
    stop = body.get("stop")
    if stop is not None:
        settings["stop"] = (stop,) if isinstance(stop, str) else stop
    return generator.options(**settings)


def choice_count(body: Mapping[str, Any], limit: int, hint: str) -> int:
    """OpenAI's ``n``: how many completions of the prompt to make (1 to `limit`)."""
    n = body.get("n")
    if n is None:
        return 1
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= limit:
        raise BadInputError(f"'n' must be an integer from 1 to {limit} ({hint}), got {n!r}")
    return n


def flag(body: Mapping[str, Any], key: str, where: str = "") -> bool:
    """`body[key]` as true or false (False when absent); any other value is a BadInputError."""
    value = body.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise BadInputError(f"'{where}{key}' must be true or false, got a {type(value).__name__}")
    return value
