"""The one exception tree of edge-toolkit.

::

    EdgeError                      base: every error a user can cause or fix
     ├── BadInputError             wrong arguments, options, paths or feeds (name, dtype, shape)
     ├── BadModelError             not a model, a corrupt file, an unsupported graph or package
     ├── ProviderUnavailableError  a requested execution provider cannot run here (strict mode)
     ├── ExportError               exporting or validating a source model failed
     └── TargetError               an emulated device target could not be built or run (`edge target`)

Messages name the thing, the problem and the fix, on one line:
``input 'input_ids': expected int64 [batch, seq], got float32 [3]; cast it with .astype(np.int64)``.
The CLI prints ``error: <message>`` and exits with code 2; anything else escaping is a bug.
"""

from __future__ import annotations

__all__ = [
    "BadInputError",
    "BadModelError",
    "EdgeError",
    "ExportError",
    "ProviderUnavailableError",
    "TargetError",
    "first_line",
]


class EdgeError(Exception):
    """Base class: an error with a one-line, user-facing message."""


class BadInputError(EdgeError):
    """The caller passed something wrong: a path, an option, or a feed."""


class BadModelError(EdgeError):
    """The model or package is unreadable, corrupt or unsupported."""


class ProviderUnavailableError(EdgeError):
    """A requested execution provider could not be used and strict mode forbids falling back."""


class ExportError(EdgeError):
    """Exporting a source model to ONNX failed."""


class TargetError(EdgeError):
    """An emulated device target (qemu, its sysroot, its wheels) could not be prepared or run."""


def first_line(exc: BaseException, limit: int | None = None, default: str | None = None) -> str:
    """A foreign exception's message for one of ours: its first line (cut at `limit` characters), or
    `default` (else its type name) when it has none. The one translation every ``raise ... from`` uses."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else (default or type(exc).__name__)
