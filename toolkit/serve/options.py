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
    """Server-wide limits: batching, per-request timeout (None: none), the request body size limit, how long
    a body may take to arrive, rows and tokens one request may hold, and the API key (None: no auth).

    ``max_request_rows`` bounds a request's batch dim; ``max_request_tokens`` bounds rows x sequence after
    tokenizing (text models) or the largest input's element count (raw models). Both keep what one small
    request can make the server allocate bounded; over either is a 413. ``truncate`` cuts an embedding
    input longer than the model's positions to them (sentence-transformers' behaviour); False refuses it (400).
    """

    batching: BatchOptions = field(default_factory=BatchOptions)
    timeout_s: float | None = 30.0
    max_body_bytes: int = 64 * 1024 * 1024
    body_timeout_s: float = 30.0
    max_request_rows: int = 64
    max_request_tokens: int = 8192
    truncate: bool = True
    api_key: str | None = field(default=None, repr=False)
    shutdown_timeout_s: float | None = None

    @property
    def grace_s(self) -> float:
        """How long a stop signal lets in-flight requests run before they are cut (``shutdown_timeout_s``;
        None: the request timeout plus 5 s, as Triton's --exit-timeout-secs bounds its drain)."""
        if self.shutdown_timeout_s is not None:
            return self.shutdown_timeout_s
        return (self.timeout_s or 30.0) + 5.0

    def __post_init__(self) -> None:
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise BadInputError(f"timeout must be positive (or None for none), got {self.timeout_s}")
        for name in ("max_body_bytes", "max_request_rows", "max_request_tokens"):
            if getattr(self, name) < 1:
                raise BadInputError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.shutdown_timeout_s is not None and self.shutdown_timeout_s < 0:
            raise BadInputError(f"shutdown_timeout_s must be 0 or more, got {self.shutdown_timeout_s}")
        if self.body_timeout_s <= 0:
            raise BadInputError(f"body_timeout_s must be positive, got {self.body_timeout_s}")
        if self.api_key is not None and len(self.api_key) < 16:
            raise BadInputError(
                "the API key must be at least 16 characters; make one with "
                "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
            )
