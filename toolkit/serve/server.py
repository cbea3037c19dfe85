"""Run the app with uvicorn: bind first (clear errors, port 0 works), report readiness, shut down gracefully.

On SIGTERM or SIGINT uvicorn stops accepting connections, lets in-flight requests finish (up to
``graceful_timeout_s``), then the app's lifespan drains the batch queues. Requests still running when the
grace period ends are cut by `on_cut` (the app answers each: a stream ends with its last chunk, the others
get a JSON 503) and given `CUT_ANSWER_S` to send that answer before uvicorn cancels them; `ServerRun.cut`
says how many there were. uvicorn re-raises the signal once it is done; the handlers installed here only
note it, so the caller chooses the exit code. A second SIGINT or SIGTERM forces the exit: `on_force` answers every waiting
request (the app's JSON 503), uvicorn stops waiting, and `ServerRun.forced` tells the caller not to wait
for a model run still on a worker thread either.

With `TLSFiles`, uvicorn serves HTTPS on the same socket.
"""

from __future__ import annotations

import asyncio
import math
import signal
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from toolkit.errors import BadInputError

__all__ = ["CUT_ANSWER_S", "STOP_SIGNALS", "ServerRun", "TLSFiles", "bind", "run_server", "url_for"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
CUT_ANSWER_S = 2.0  # after the grace period: time the cut requests have to send their last chunk or 503


@dataclass(frozen=True)
class ServerRun:
    """How a server run ended: the URL it served, the signal that stopped it (None: it stopped itself), whether
    a second signal forced it, and how many requests were still running when its grace period ended."""

    url: str
    signal: str | None
    forced: bool = False
    cut: int = 0


@dataclass(frozen=True)
class TLSFiles:
    """A PEM certificate (chain) and its private key: the server speaks HTTPS with them."""

    certfile: Path
    keyfile: Path

    def __post_init__(self) -> None:
        for what, path in (("--ssl-certfile", self.certfile), ("--ssl-keyfile", self.keyfile)):
            if not Path(path).is_file():
                raise BadInputError(f"{what} '{path}' is not a file; pass a PEM file")

    def context(self) -> ssl.SSLContext:
        """A server-side TLS context over the two files; a BadInputError when they do not load or match."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(str(self.certfile), str(self.keyfile))
        except (ssl.SSLError, OSError) as exc:
            raise BadInputError(
                f"--ssl-certfile '{self.certfile}' and --ssl-keyfile '{self.keyfile}' do not load as a PEM "
                f"certificate and its key ({exc}); pass the pair your CA issued"
            ) from None
        return context


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


def url_for(sock: socket.socket, scheme: str = "http") -> str:
    """``http://host:port`` (or `scheme`) of a bound socket (IPv6 hosts in brackets)."""
    host, port = sock.getsockname()[:2]
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def run_server(
    app: Any,
    sock: socket.socket,
    *,
    on_ready: Callable[[str], None] | None = None,
    on_force: Callable[[], None] | None = None,
    on_cut: Callable[[], None] | None = None,
    graceful_timeout_s: float = 30.0,
    log_level: str = "warning",
    tls: TLSFiles | None = None,
) -> ServerRun:
    """Serve `app` on `sock` with uvicorn until SIGTERM/SIGINT; in-flight requests finish first, for up to
    `graceful_timeout_s` (then `on_cut`; a second signal: `on_force`, then exit at once)."""
    import uvicorn

    if tls is not None:
        tls.context()  # a bad pair is a one-line error here, not a traceback inside uvicorn
    url = url_for(sock, "https" if tls is not None else "http")

    class _Server(uvicorn.Server):
        loop: asyncio.AbstractEventLoop | None = None
        cut = 0

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            timer = asyncio.get_running_loop().call_later(graceful_timeout_s, self._cut)
            try:
                await super().shutdown(sockets)
            finally:
                timer.cancel()

        def _cut(self) -> None:
            self.cut = len(self.server_state.tasks)
            if self.cut and on_cut is not None:
                on_cut()

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            self.loop = asyncio.get_running_loop()
            await super().startup(sockets)
            if self.started and not self.should_exit and on_ready is not None:
                on_ready(url)

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if self.should_exit and not self.force_exit:
                # the second signal (uvicorn alone forces only on a second SIGINT): answer everyone now,
                # on the loop (a signal handler must not touch futures mid-iteration)
                if on_force is not None and self.loop is not None:
                    self.loop.call_soon_threadsafe(on_force)
                self.force_exit = True
                self._captured_signals.append(sig)
                return
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app,
        log_level=log_level,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=math.ceil(graceful_timeout_s + CUT_ANSWER_S),
        log_config=None,  # keep the process's logging setup (the CLI's); uvicorn's loggers propagate to it
        ssl_certfile=str(tls.certfile) if tls is not None else None,
        ssl_keyfile=str(tls.keyfile) if tls is not None else None,
    )
    caught: list[int] = []

    def note(signum: int, _frame: FrameType | None) -> None:
        caught.append(signum)

    previous = {sig: signal.signal(sig, note) for sig in STOP_SIGNALS}
    server = _Server(config)
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
    return ServerRun(
        url, signal.Signals(caught[0]).name if caught else None, forced=server.force_exit, cut=server.cut
    )
