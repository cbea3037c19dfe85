"""One probe for GPU tests: can this provider actually create a session here? (Listed is not enough.)"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from toolkit.providers import probe_provider

__all__ = ["needs", "skip_reason"]


def skip_reason(provider: str) -> str | None:
    """Why tests needing `provider` must skip here, or None when a tiny session on it works."""
    reason = probe_provider(provider)
    return None if reason is None else f"{provider} cannot create a session here: {reason}"


def needs(provider: str) -> pytest.MarkDecorator:
    """Mark a test with the provider's marker and skip it, with onnxruntime's reason, where it cannot run."""
    reason = skip_reason(provider)
    marker = getattr(pytest.mark, provider)

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        return marker(pytest.mark.skipif(reason is not None, reason=reason or "")(func))

    return decorate
