"""OpenAI's ``tools`` and ``tool_choice`` for ``/v1/chat/completions``: the request's functions checked, passed to
the model's chat template as transformers passes them (``tools=[{"type": "function", "function": {...}}]``),
and the reply read back as ``tool_calls``.

``tool_choice`` ``"none"`` leaves the reply as text; ``"auto"`` (the default when tools are given) reads a
reply that is a call (a JSON object ``{"name", "arguments"|"parameters"}``, a list of them, or Hermes/Qwen's
``<tool_call>...</tool_call>`` blocks naming a given function) as ``tool_calls`` and any other reply as text;
a named function holds the reply to that function's parameters schema (the reply is the arguments) and
``"required"`` holds it to a list of calls of the given functions (one when ``parallel_tool_calls`` is false),
as vLLM does, so their arguments always parse.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from toolkit.decoding.grammar import OutputConstraint
from toolkit.errors import BadInputError

__all__ = ["ToolCall", "ToolRequest", "tool_request"]

_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_TAGGED = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)
_NO_PARAMETERS = {"type": "object", "properties": {}}
MAX_TOOLS = 128


@dataclass(frozen=True)
class ToolCall:
    """One call the model made: the function's name and its arguments as JSON text."""

    name: str
    arguments: str

    def openai(self) -> dict[str, Any]:
        """The call in OpenAI's ``tool_calls`` shape, with a fresh id."""
        return {
            "id": f"call_{uuid.uuid4().hex[:24]}",
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass(frozen=True)
class ToolRequest:
    """A request's tools: what the chat template gets, the reply's constraint (named or required choice) and
    how the reply is read (`choice`: ``none``, ``auto``, ``required`` or a function's name)."""

    tools: tuple[Mapping[str, Any], ...]
    choice: str
    named: bool = False
    parallel: bool = True

    @property
    def constraint(self) -> OutputConstraint | None:
        """The grammar a named or required choice holds the reply to (None: free text)."""
        if self.named:
            return OutputConstraint("json_schema", json.dumps(self._parameters(self.choice)))
        if self.choice != "required":
            return None
        calls = [
            {
                "type": "object",
                "properties": {"name": {"const": name}, "parameters": self._parameters(name)},
                "required": ["name", "parameters"],
                "additionalProperties": False,
            }
            for name in self._names()
        ]
        return OutputConstraint(
            "json_schema", json.dumps({"type": "array", "minItems": 1, "items": {"anyOf": calls}})
        )

    def _names(self) -> list[str]:
        return [t["function"]["name"] for t in self.tools]

    def _parameters(self, name: str) -> Mapping[str, Any]:
        function = next(t["function"] for t in self.tools if t["function"]["name"] == name)
        return function.get("parameters") or _NO_PARAMETERS

    def calls(self, text: str) -> list[ToolCall]:
        """The tool calls `text` (the model's reply) makes; none when it is a plain answer."""
        if self.choice == "none":
            return []
        if self.named:
            return [ToolCall(self.choice, text)] if _parses(text) else []
        found: list[Any] = []
        tagged = _TAGGED.findall(text)
        for piece in tagged or [text]:
            try:
                value = json.loads(piece)
            except ValueError:
                continue
            found.extend(value if isinstance(value, list) else [value])
        names = set(self._names())
        calls = []
        for call in found:
            if not isinstance(call, dict) or call.get("name") not in names:
                return []  # not (only) calls of the given functions: a plain answer
            arguments = call.get("arguments", call.get("parameters", {}))
            calls.append(
                ToolCall(call["name"], arguments if isinstance(arguments, str) else json.dumps(arguments))
            )
        return calls


def _parses(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _function(index: int, tool: Any) -> Mapping[str, Any]:
    where = f"tools[{index}]"
    if (
        not isinstance(tool, dict)
        or tool.get("type") != "function"
        or not isinstance(tool.get("function"), dict)
    ):
        raise BadInputError(
            f'\'{where}\' must be {{"type": "function", "function": {{"name": ..., "parameters": ...}}}}'
        )
    function = tool["function"]
    name = function.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise BadInputError(f"'{where}.function.name' must be 1-64 letters, digits, '_' or '-', got {name!r}")
    parameters = function.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise BadInputError(f"'{where}.function.parameters' must be a JSON Schema object")
    description = function.get("description")
    if description is not None and not isinstance(description, str):
        raise BadInputError(f"'{where}.function.description' must be a string")
    return tool


def tool_request(body: Mapping[str, Any]) -> ToolRequest | None:
    """The request's ``tools`` and ``tool_choice``, checked (one-line 400s naming the field); None without tools."""
    for legacy in ("functions", "function_call"):
        if body.get(legacy) is not None:
            raise BadInputError(
                f"'{legacy}' is not supported (it is deprecated); send 'tools' and 'tool_choice'"
            )
    tools, choice = body.get("tools"), body.get("tool_choice")
    if tools is None or tools == []:
        if choice not in (None, "none"):
            raise BadInputError("'tool_choice' needs 'tools'; send the functions the model may call")
        return None
    if not isinstance(tools, list) or len(tools) > MAX_TOOLS:
        raise BadInputError(f"'tools' must be a list of at most {MAX_TOOLS} functions")
    functions = tuple(_function(i, t) for i, t in enumerate(tools))
    names = [t["function"]["name"] for t in functions]
    if len(set(names)) != len(names):
        raise BadInputError("'tools' names a function twice; give each function a distinct name")
    parallel = body.get("parallel_tool_calls", True)
    if not isinstance(parallel, bool):
        raise BadInputError("'parallel_tool_calls' must be true or false")
    if choice is None:
        return ToolRequest(functions, "auto", parallel=parallel)
    if choice in ("none", "auto", "required"):
        return ToolRequest(functions, choice, parallel=parallel)
    named = choice.get("function") if isinstance(choice, dict) and choice.get("type") == "function" else None
    name = named.get("name") if isinstance(named, dict) else None
    if not isinstance(name, str):
        raise BadInputError(
            '\'tool_choice\' must be "none", "auto", "required" or {"type": "function", "function": {"name": ...}}'
        )
    if name not in names:
        raise BadInputError(f"'tool_choice' names {name!r}, which is not among 'tools' ({', '.join(names)})")
    return ToolRequest(functions, name, named=True)
