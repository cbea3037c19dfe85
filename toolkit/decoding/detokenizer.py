"""Incremental detokenization with stop strings: text pieces whose concatenation is the full text.

Each step decodes the row's generated ids and releases only the part that is settled: never a trailing
U+FFFD (half of a multi-byte character whose other bytes are still to come), never text that could be the
start of a stop string, never text a later token rewrote. At the end, `finish` releases the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

__all__ = ["IncrementalDetokenizer"]

Decode = Callable[[Sequence[int]], str]
_REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """One row's text as tokens arrive; `stopped` once a stop string shows (the text is cut before it)."""

    def __init__(self, decode: Decode, stop: Sequence[str] = ()) -> None:
        self._decode = decode
        self._stop = tuple(stop)
        self._ids: list[int] = []
        self._emitted = 0
        self.text = ""
        self.stopped = False

    def add(self, token: int) -> str:
        """Take one generated token; returns the newly settled text (possibly empty)."""
        if self.stopped:
            return ""
        self._ids.append(int(token))
        self.text = self._decode(self._ids)
        cut = self._stop_at(self.text)
        if cut is not None:
            self.text = self.text[:cut]
            self.stopped = True
            return self._release(len(self.text))
        settled = len(self.text.rstrip(_REPLACEMENT)) if self.text.endswith(_REPLACEMENT) else len(self.text)
        return self._release(settled - self._held_for_stop(self.text[:settled]))

    def finish(self) -> str:
        """The text not released yet (everything is settled once generation ends)."""
        return self._release(len(self.text))

    def _release(self, upto: int) -> str:
        if upto <= self._emitted:
            return ""
        piece = self.text[self._emitted : upto]
        self._emitted = upto
        return piece

    def _stop_at(self, text: str) -> int | None:
        found = [i for i in (text.find(s, max(0, self._emitted - len(s))) for s in self._stop) if i >= 0]
        return min(found) if found else None

    def _held_for_stop(self, text: str) -> int:
        """How many trailing characters could begin a stop string (held back until it is decided)."""
        held = 0
        for stop in self._stop:
            for size in range(min(len(stop) - 1, len(text)), held, -1):
                if text.endswith(stop[:size]):
                    held = size
                    break
        return held
