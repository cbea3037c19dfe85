"""Up-front checks of what callers hand the pipelines and `Runner.run`: one line at the top of each method.

Each helper takes what a user may reasonably pass (any iterable of texts, a generator included; a mapping
of feeds; one output name or several) and returns the one form the code below it needs, or raises a
`BadInputError` naming the argument, what it got and what to pass instead. They consume an iterable once,
so a generator is read exactly once, here.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.errors import BadInputError

__all__ = [
    "check_finite_number",
    "feed_array",
    "feed_mapping",
    "is_finite_number",
    "item_list",
    "output_names",
    "text_list",
]


def is_finite_number(value: object) -> bool:
    """Whether `value` is an int or float (not a bool) within float range: not NaN, inf or 10**400."""
    # a comparison, not math.isfinite: JSON's 10**400 is an int that isfinite cannot take; NaN fails it
    return isinstance(value, int | float) and not isinstance(value, bool) and abs(value) <= sys.float_info.max


def check_finite_number(name: str, value: object) -> None:
    """A BadInputError naming `name` unless `value` is a finite number (`is_finite_number`)."""
    if is_finite_number(value):
        return
    # an int past float range may have more digits than Python prints
    shown = "an integer past float range" if type(value) is int else repr(value)[:40]
    raise BadInputError(f"{name} must be a finite number, got {shown}")


def _kind(value: Any) -> str:
    return "None" if value is None else type(value).__name__


def text_list(texts: Iterable[str], what: str = "texts") -> list[str]:
    """`texts` (a list, tuple, generator or any iterable of str) as a list; a single string or a non-string
    item is a BadInputError."""
    if isinstance(texts, str | bytes):
        raise BadInputError(
            f"{what} must be a list of strings, got a single {_kind(texts)}; wrap it as [text]"
        )
    if isinstance(texts, np.ndarray):
        texts = texts.tolist()
    if not isinstance(texts, Iterable):
        raise BadInputError(f"{what} must be a list (or any iterable) of strings, got {_kind(texts)}")
    items = list(texts)
    for position, item in enumerate(items):
        if not isinstance(item, str):
            raise BadInputError(
                f"{what}[{position}] is {_kind(item)}, not a string; convert the {what} with str() first"
            )
    return items


def item_list(items: Iterable[Any], what: str, single: tuple[type, ...]) -> list[Any]:
    """`items` (images, clips: any iterable) as a list; one item of a `single` type, or a non-iterable,
    is a BadInputError telling the caller to wrap it."""
    if isinstance(items, single) or type(items).__module__.startswith("PIL"):
        raise BadInputError(f"{what} must be a list; wrap a single {what[:-1]} as [{what[:-1]}]")
    if not isinstance(items, Iterable) or isinstance(items, str | bytes | Mapping):
        raise BadInputError(f"{what} must be a list (or any iterable), got {_kind(items)}")
    return list(items)


def feed_mapping(feeds: Any) -> Mapping[str, Any]:
    """`feeds` checked to be a mapping of input names (str) to values."""
    if not isinstance(feeds, Mapping):
        raise BadInputError(
            f"feeds must be a mapping of input name to array, got {_kind(feeds)}; pass {{'input_ids': array, ...}}"
        )
    bad = [name for name in feeds if not isinstance(name, str)]
    if bad:
        raise BadInputError(f"feed names must be strings, got {_kind(bad[0])} {bad[0]!r}")
    return feeds


def feed_array(name: str, value: Any) -> np.ndarray:
    """One feed as a numpy array; ragged nesting or values numpy cannot hold is a BadInputError naming the input."""
    try:
        array = np.asarray(value)
    except (ValueError, TypeError, OverflowError) as exc:
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise BadInputError(
            f"input '{name}' cannot be made an array ({reason}); pass a rectangular numpy array"
        ) from None
    if array.dtype == object and not all(isinstance(v, str | bytes) for v in array.reshape(-1)):
        raise BadInputError(
            f"input '{name}' is ragged or mixes types (numpy made an object array); pass a rectangular numpy array"
        )
    return array


def output_names(outputs: str | Sequence[str] | None) -> list[str] | None:
    """Requested outputs as a list: one name (a str) or an iterable of names; None: every output."""
    if outputs is None:
        return None
    if isinstance(outputs, str):
        return [outputs]
    if isinstance(outputs, Path) or not isinstance(outputs, Iterable):
        raise BadInputError(f"outputs must be an output name or a list of names, got {_kind(outputs)}")
    names = list(outputs)
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise BadInputError(f"output names must be strings, got {_kind(bad[0])} {bad[0]!r}")
    return names
