"""Chat templates: the tokenizer config's Jinja template, rendered in a sandbox the way transformers does, on a
budget.

A package's template is code from whoever made the package, run on every chat request, so rendering is
bounded (`TemplateBudget`): output size and time are checked at every piece of output, every call, filter,
``range`` step, string concatenation and every ``*``, ``**``, ``+`` and ``%``; an integer argument larger
than the output budget (``center(10**9)``, ``tojson(indent=10**9)``) is refused before it allocates;
``lipsum`` and ``include`` (the environment has no loader) are not available. Any failure of the template
is one `BadModelError` naming it; `raise_exception` in a template is the caller's `BadInputError`.
"""

from __future__ import annotations

import contextvars
import datetime
import json
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from toolkit.errors import BadInputError, BadModelError

__all__ = ["Message", "TemplateBudget", "render_chat"]

Message = Mapping[str, str]


@dataclass(frozen=True)
class TemplateBudget:
    """How much one rendering may produce (characters) and take (seconds)."""

    max_chars: int = 1024 * 1024
    timeout_s: float = 2.0


class _OverBudget(Exception):
    """The rendering went over its `TemplateBudget`."""


@dataclass(frozen=True)
class _Active:
    budget: TemplateBudget
    deadline: float


_ACTIVE: contextvars.ContextVar[_Active] = contextvars.ContextVar("chat_template_budget")
_FORMAT_WIDTH = re.compile(r"\d+")
_RANGE_CHECK_EVERY = 1024


def _check(result: Any = None) -> Any:
    """`result` if the rendering is still within its time and `result` within its size; else _OverBudget."""
    active = _ACTIVE.get()
    if time.monotonic() > active.deadline:
        raise _OverBudget(f"took over {active.budget.timeout_s:g} s")
    if isinstance(result, str | bytes | list | tuple | dict) and len(result) > active.budget.max_chars:
        raise _OverBudget(f"made a value of {len(result)} items, over {active.budget.max_chars}")
    return result


def _check_arguments(args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
    limit = _ACTIVE.get().budget.max_chars
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > limit:
            raise _OverBudget(f"passed {value} to a call, over the {limit}-character budget")


def _check_format(text: Any) -> None:
    """A %- or {}-format string whose widths alone would go over the budget is refused before it runs."""
    if isinstance(text, str):
        _check_arguments([int(w) for w in _FORMAT_WIDTH.findall(text)[:64]], {})


def _budgeted(function: Callable[..., Any]) -> Callable[..., Any]:
    def run(*args: Any, **kwargs: Any) -> Any:
        _check()
        _check_arguments(args[1:], kwargs)
        return _check(function(*args, **kwargs))

    for attribute in ("jinja_pass_arg",):  # keep how Jinja passes context/environment to the filter
        if hasattr(function, attribute):
            setattr(run, attribute, getattr(function, attribute))
    return run


def _range(*args: int) -> Iterator[int]:
    from jinja2.sandbox import safe_range

    for index, value in enumerate(safe_range(*args)):
        if index % _RANGE_CHECK_EVERY == 0:
            _check()
        yield value


def _raise(message: str) -> None:
    raise BadInputError(f"chat template: {message}")


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, **_: Any) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent)


def _joined(join: Callable[[Any], str]) -> Callable[[Any], str]:
    def run(seq: Any) -> str:
        return str(_check(join(seq)))

    return run


@lru_cache(maxsize=8)
def _compile(template: str) -> Any:
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class BudgetedEnvironment(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**", "+", "%"})

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            _check()
            if operator == "*":
                for count, other in ((left, right), (right, left)):
                    if isinstance(count, int) and isinstance(other, str | bytes | list | tuple):
                        _check_arguments([count * max(len(other), 1)], {})
            elif operator == "**" and isinstance(right, int) and isinstance(left, int) and abs(left) > 1:
                _check_arguments([right * abs(left).bit_length()], {})
            elif operator == "%":
                _check_format(left)
            return _check(super().call_binop(context, operator, left, right))

        def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
            _check()
            _check_arguments(args, kwargs)
            if getattr(__obj, "__name__", None) in ("format", "format_map"):
                _check_format(getattr(__obj, "__self__", None))
            return _check(super().call(__context, __obj, *args, **kwargs))

    env = BudgetedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.filters = {name: _budgeted(f) for name, f in env.filters.items()}
    env.globals.pop("lipsum", None)
    env.globals["range"] = _range
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = _strftime_now
    try:
        compiled = env.from_string(template)
    except jinja2.TemplateError as exc:
        raise BadModelError(
            f"the package's chat template does not parse ({exc}); fix chat_template in tokenizer_config.json"
        ) from None
    # `a ~ b` compiles to a call of the module's str_join, which no sandbox hook sees: budget it there
    namespace = compiled.root_render_func.__globals__
    for name in ("str_join", "markup_join"):
        if name in namespace:
            namespace[name] = _joined(namespace[name])
    return compiled


def render_chat(
    template: str | None,
    messages: Sequence[Message],
    special_tokens: Mapping[str, str | None],
    add_generation_prompt: bool = True,
    budget: TemplateBudget | None = None,
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> str:
    """The prompt text for `messages` ({"role", "content"} mappings) under the model's chat `template`,
    rendered within `budget` (default `TemplateBudget()`); `tools` (OpenAI's function list) reach the template
    as its ``tools`` variable, as transformers passes them. An assistant message that made ``tool_calls`` may
    have no content."""
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
            if key == "content" and message[key] is None and isinstance(message.get("tool_calls"), list):
                continue
            if not isinstance(message[key], str):
                raise BadInputError(
                    f"message {index}: '{key}' must be a string, got {type(message[key]).__name__}"
                )
    budget = budget or TemplateBudget()
    compiled = _compile(template)
    token = _ACTIVE.set(_Active(budget, time.monotonic() + budget.timeout_s))
    size = 0
    pieces: list[str] = []
    try:
        for piece in compiled.generate(
            messages=[dict(m) for m in messages],
            add_generation_prompt=add_generation_prompt,
            **({"tools": [dict(t) for t in tools]} if tools else {}),
            **{k: v for k, v in special_tokens.items() if v is not None},
        ):
            size += len(piece)
            if size > budget.max_chars:
                raise _OverBudget(f"rendered over {budget.max_chars} characters")
            _check()
            pieces.append(piece)
    except BadInputError:
        raise
    except _OverBudget as exc:
        raise BadModelError(
            f"the package's chat template went over its budget: it {exc}; fix chat_template in "
            "tokenizer_config.json"
        ) from None
    except Exception as exc:  # noqa: BLE001 - whatever the template's code raised (TypeError, RecursionError, ...)
        raise BadModelError(
            f"the package's chat template failed to render ({type(exc).__name__}: {exc}); fix chat_template in "
            "tokenizer_config.json"
        ) from None
    finally:
        _ACTIVE.reset(token)
    return "".join(pieces)
