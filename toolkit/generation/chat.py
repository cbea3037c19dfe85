"""Chat templates: the tokenizer config's Jinja template, rendered in a sandbox the way transformers does."""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from toolkit.errors import BadInputError, BadModelError

__all__ = ["Message", "render_chat"]

Message = Mapping[str, str]


def _raise(message: str) -> None:
    raise BadInputError(f"chat template: {message}")


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


@lru_cache(maxsize=8)
def _compile(template: str) -> Any:
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, **_: Any) -> str:
        import json

        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(template)
    except jinja2.TemplateError as exc:
        raise BadModelError(
            f"the package's chat template does not parse ({exc}); fix chat_template in tokenizer_config.json"
        ) from None


def render_chat(
    template: str | None,
    messages: Sequence[Message],
    special_tokens: Mapping[str, str | None],
    add_generation_prompt: bool = True,
) -> str:
    """The prompt text for `messages` ({"role", "content"} mappings) under the model's chat `template`."""
    if template is None:
        raise BadInputError(
            "this model has no chat template (tokenizer_config.json has no chat_template); pass a plain prompt"
        )
    if isinstance(messages, str | bytes) or not messages:
        raise BadInputError('messages must be a non-empty list like [{"role": "user", "content": "Hi"}]')
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
            raise BadInputError(
                f'message {index} needs "role" and "content"; e.g. {{"role": "user", "content": "Hi"}}'
            )
        for key in ("role", "content"):
            if not isinstance(message[key], str):
                raise BadInputError(
                    f"message {index}: '{key}' must be a string, got {type(message[key]).__name__}"
                )
    import jinja2

    try:
        return str(
            _compile(template).render(
                messages=[dict(m) for m in messages],
                add_generation_prompt=add_generation_prompt,
                **{k: v for k, v in special_tokens.items() if v is not None},
            )
        )
    except jinja2.TemplateError as exc:
        raise BadModelError(f"the package's chat template failed to render ({exc})") from None
