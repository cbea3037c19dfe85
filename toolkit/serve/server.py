"""Run the app with uvicorn: bind first (clear errors, port 0 works), report readiness, shut down gracefully.

On SIGTERM or SIGINT uvicorn stops accepting connections, lets in-flight requests finish (up to
``graceful_timeout_s``), then the app's lifespan drains the batch queues. uvicorn re-raises the signal
once it is done; the handlers installed here only note it, so the process ends with exit code 0 rather
than dying by the signal. A second Ctrl+C forces the exit.
"""

from __future__ import annotations

import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any

from toolkit.errors import BadInputError

__all__ = ["STOP_SIGNALS", "ServerRun", "bind", "run_server", "url_for"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass(frozen=True)
class ServerRun:
    """How a server run ended: the URL it served and the signal that stopped it (None: it stopped itself)."""

    url: str
    signal: str | None


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket on host:port (port 0: any free port); a BadInputError when it cannot bind."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise BadInputError(
            f"--host {host!r} does not resolve ({exc.strerror}); pass an address such as 127.0.0.1"
        ) from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise BadInputError(
            f"cannot listen on {host}:{port} ({exc.strerror}); pick another --port (0: any free one) or stop what uses it"
        ) from None
    sock.set_inheritable(True)
    return sock


def url_for(sock: socket.socket) -> str:
    """``http://host:port`` of a bound socket (IPv6 hosts in brackets)."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def run_server(
    app: Any,
    sock: socket.socket,
    *,
    on_ready: Callable[[str], None] | None = None,
    graceful_timeout_s: float = 30.0,
    log_level: str = "warning",
) -> ServerRun:
    """Serve `app` on `sock` with uvicorn until SIGTERM/SIGINT; in-flight requests finish first."""
    import uvicorn

    url = url_for(sock)

    class _Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started and not self.should_exit and on_ready is not None:
                on_ready(url)

    config = uvicorn.Config(
        app,
        log_level=log_level,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=int(graceful_timeout_s),
        log_config=None,  # keep the process's logging setup (the CLI's); uvicorn's loggers propagate to it
    )
    caught: list[int] = []

    def note(signum: int, _frame: FrameType | None) -> None:
        caught.append(signum)

    previous = {sig: signal.signal(sig, note) for sig in STOP_SIGNALS}
    try:
        _Server(config).run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
    return ServerRun(url, signal.Signals(caught[0]).name if caught else None)
