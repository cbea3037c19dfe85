"""Constrained decoding: a row's output held to a JSON Schema, any JSON object, a regular expression or a Lark
grammar by a token mask applied to its logits before the choice.

The engine is llguidance (the optional ``grammar`` extra; vLLM and onnxruntime-genai use it too): its mask
costs ~20 us a token on a 32k vocabulary where outlines-core's costs ~270 us (benchmarks/grammar_engines.py),
it compiles Lark grammars as well as JSON Schema and regexes, and it reads the package's tokenizer.json as it is
(xgrammar needs torch). Each row has its own `RowGrammar`, so rows with different constraints, or none, share a
batch and each decodes exactly as it would alone.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from toolkit.errors import BadInputError, first_line

__all__ = ["CONSTRAINT_KINDS", "GrammarEngine", "OutputConstraint", "RowGrammar", "constraint_from"]

INSTALL_HINT = "pip install 'edge-toolkit[grammar]' (llguidance)"
# JSON exactly as json.dumps writes it by default: free whitespace would let a random or weak model spend its
# whole budget on spaces and newlines inside a valid document.
_JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def _json_schema(llg: Any, source: str) -> str:
    return str(llg.LLMatcher.grammar_from_json_schema(source, overrides=_JSON_OPTIONS))


# each kind's source text -> llguidance's grammar text; `source` is what the caller passed, normalized
_GRAMMARS: dict[str, Callable[[Any, str], str]] = {
    "json_schema": _json_schema,
    "json_object": lambda llg, _source: _json_schema(llg, '{"type": "object"}'),
    "regex": lambda llg, source: str(llg.LLMatcher.grammar_from_regex(source)),
    "grammar": lambda llg, source: str(llg.LLMatcher.grammar_from_lark(source)),
}
CONSTRAINT_KINDS = tuple(_GRAMMARS)


@dataclass(frozen=True)
class OutputConstraint:
    """What a row's text must match: `kind` (one of `CONSTRAINT_KINDS`) and its `source` (a JSON Schema as
    JSON text, a regex, a Lark grammar; empty for ``json_object``)."""

    kind: str
    source: str = ""

    def __post_init__(self) -> None:
        if self.kind not in _GRAMMARS:
            raise BadInputError(f"unknown output constraint {self.kind!r}; use one of {', '.join(_GRAMMARS)}")


def constraint_from(
    json_schema: Mapping[str, Any] | str | None = None,
    json_object: bool = False,
    regex: str | None = None,
    grammar: str | None = None,
) -> OutputConstraint | None:
    """The one constraint among the library's keyword arguments (None when none is given)."""
    given = {
        "json_schema": json_schema,
        "json_object": True if json_object else None,
        "regex": regex,
        "grammar": grammar,
    }
    chosen = [(k, v) for k, v in given.items() if v is not None]
    if len(chosen) > 1:
        raise BadInputError(
            f"pass one of json_schema, json_object, regex, grammar; got {' and '.join(k for k, _ in chosen)}"
        )
    if not chosen:
        return None
    kind, value = chosen[0]
    if kind == "json_schema":
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError as exc:
                raise BadInputError(f"json_schema is not JSON: {first_line(exc)}") from exc
        if not isinstance(value, Mapping):
            raise BadInputError(f"json_schema must be a JSON object (a schema), got {type(value).__name__}")
        return OutputConstraint(kind, json.dumps(value))
    if kind != "json_object" and (not isinstance(value, str) or not value):
        raise BadInputError(f"{kind} must be a non-empty string, got {value!r}")
    return OutputConstraint(kind, value if isinstance(value, str) else "")


def _llguidance() -> Any:
    try:
        import llguidance
    except ImportError as exc:
        raise BadInputError(
            f"constrained decoding needs llguidance, which is not installed; {INSTALL_HINT}"
        ) from exc
    return llguidance


class RowGrammar:
    """One row's matcher: `mask` the row's logits to the tokens the constraint allows next, then `advance`
    with the token chosen."""

    def __init__(self, matcher: Any, words: int, vocab: int) -> None:
        self._matcher = matcher
        self._bits = np.zeros(words, dtype=np.int32)
        self._vocab = vocab

    def mask(self, logits: np.ndarray) -> np.ndarray:
        """`logits` [1, vocab] with every token the constraint forbids at -inf (a copy)."""
        self._matcher.unsafe_compute_mask_ptr(self._bits.ctypes.data, self._bits.nbytes)
        allowed = np.unpackbits(self._bits.view(np.uint8), bitorder="little")
        width = logits.shape[-1]
        keep = np.zeros(width, dtype=bool)
        known = min(width, self._vocab)
        keep[:known] = allowed[:known].astype(bool)
        return np.where(keep, logits, np.float32(-np.inf)).astype(np.float32, copy=False)

    def advance(self, token: int) -> None:
        """Take the chosen `token` (one the mask allowed)."""
        if not self._matcher.consume_token(token):
            raise BadInputError(
                f"the output constraint failed: {first_line(Exception(self._matcher.get_error()))}"
            )

    @property
    def finished(self) -> bool:
        """Whether the constraint admits nothing more (only an end of sequence)."""
        return bool(self._matcher.is_stopped())


class GrammarEngine:
    """llguidance's view of one tokenizer (built from its tokenizer.json on first use, ~0.1-1 s, then shared):
    makes each constrained row's `RowGrammar`."""

    def __init__(self, tokenizer_json: Callable[[], str], eos_ids: tuple[int, ...]) -> None:
        self._tokenizer_json = tokenizer_json
        self._eos_ids = list(eos_ids)
        self._tokenizer: Any = None
        self._lock = threading.Lock()

    def _llg_tokenizer(self) -> Any:
        llg = _llguidance()
        with self._lock:
            if self._tokenizer is None:
                self._tokenizer = llg.LLTokenizer(self._tokenizer_json(), eos_token=self._eos_ids or None)
        return self._tokenizer

    def row(self, constraint: OutputConstraint) -> RowGrammar:
        """A fresh matcher for `constraint`; a BadInputError naming the constraint when it does not compile."""
        llg = _llguidance()
        tokenizer = self._llg_tokenizer()
        try:
            grammar = _GRAMMARS[constraint.kind](llg, constraint.source)
        except ValueError as exc:
            raise BadInputError(f"{constraint.kind} is not valid: {first_line(exc)}") from exc
        matcher = llg.LLMatcher(tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise BadInputError(
                f"{constraint.kind} is not valid: {first_line(Exception(matcher.get_error()), 300)}; fix it"
            )
        return RowGrammar(matcher, (tokenizer.vocab_size + 31) // 32, tokenizer.vocab_size)
