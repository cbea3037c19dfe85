"""How the server batches, bounds and times out work: frozen option dataclasses, checked on creation."""

from __future__ import annotations

from dataclasses import dataclass, field

from toolkit.errors import BadInputError

__all__ = ["BatchOptions", "ServeOptions"]


@dataclass(frozen=True)
class BatchOptions:
    """Dynamic batching per served model.

    ``max_batch`` rows are merged at most (1 turns batching off: every request runs alone); a batch is
    sent once it is full or ``max_delay_ms`` after its oldest request arrived. ``max_queue`` requests may
    wait per model; one more is refused with 503. ``workers`` batches of one model run at once, each on
    its own thread over the model's one onnxruntime session.
    """

    max_batch: int = 32
    max_delay_ms: float = 5.0
    max_queue: int = 256
    workers: int = 1

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_queue", "workers"):
            if getattr(self, name) < 1:
                raise BadInputError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_delay_ms < 0:
            raise BadInputError(f"max_delay_ms must be 0 or more, got {self.max_delay_ms}")


@dataclass(frozen=True)
class ServeOptions:
    """Server-wide limits: batching, per-request timeout (None: none) and the request body size limit."""

    batching: BatchOptions = field(default_factory=BatchOptions)
    timeout_s: float | None = 30.0
    max_body_bytes: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise BadInputError(f"timeout must be positive (or None for none), got {self.timeout_s}")
        if self.max_body_bytes < 1:
            raise BadInputError(f"max_body_bytes must be at least 1, got {self.max_body_bytes}")
