"""Issue 21's generation rows against one source tree, and a soak of streamed completions.

Builds the tests' tiny random Llama with 2,048 positions (`tests/long_llama.py`: its eos logit zeroed, so
greedy decoding never stops early; needs torch and transformers, from this checkout's converters), then runs each case against `edge serve`
with ``PYTHONPATH=SOURCE`` (default: this checkout), so the same script gives the table before and after a
change (point --source at an older tree). The soak sends N streamed completions from 16 client threads,
every fourth client disconnecting after 3 chunks, and prints the server's RSS every 250 requests and the
p50/p99 latency of the requests that stayed.

    python benchmarks/generate_hardening.py                      # cases, this checkout
    python benchmarks/generate_hardening.py --source /work/main  # cases, another tree
    python benchmarks/generate_hardening.py --soak 2000          # the soak instead

A case whose server passes 2 GB of RSS is stopped there (reported as such). Figures (seconds, MB) are from
this machine and this run; they are not test assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
from hardening_cases import _env, _Server

ROOT = Path(__file__).resolve().parent.parent
ENTRY = "from toolkit.cli import main; main()"
RSS_CAP_MB = 2048
NAME = "long-llama"


def build_package(source: Path, folder: Path) -> Path:
    """The tiny random Llama of the tests (2,048 positions, eos logit 0), converted by `source`'s converters
    (a package the tree under test can read)."""
    script = (
        f"import sys; sys.path.insert(0, {str(ROOT / 'tests')!r}); from pathlib import Path; "
        f"from long_llama import build_long_llama; print(build_long_llama(Path({str(folder)!r}), {NAME!r}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=_env(source),
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return Path(done.stdout.strip().splitlines()[-1])


def hostile_copy(package: Path, folder: Path) -> Path:
    """The same package named hostile-chat, its chat template rendering gigabytes."""
    import shutil

    copy = Path(shutil.copytree(package, folder / "hostile"))
    data = json.loads((copy / "edge.json").read_text(encoding="utf-8"))
    data["name"] = "hostile-chat"
    data["generation"]["chat_template"] = "{{ messages|tojson(indent=10**9) }}"
    (copy / "edge.json").write_text(json.dumps(data), encoding="utf-8")
    return copy


class Server(_Server):
    """hardening_cases' `edge serve` of `packages` from `source` (one thread per model), with a watchdog
    that stops it past RSS_CAP_MB."""

    def __init__(self, source: Path, packages: list[Path], args: list[str], work: Path) -> None:
        work.mkdir(parents=True, exist_ok=True)
        super().__init__(source, packages, ["--threads", "1", *args], work)
        self.peak_mb = self.rss_mb()
        self.capped = False
        threading.Thread(target=self._watch, daemon=True).start()

    def rss_mb(self) -> float:
        try:
            return psutil.Process(self.process.pid).memory_info().rss / 2**20
        except psutil.NoSuchProcess:
            return 0.0

    def _watch(self) -> None:
        while self.process.poll() is None:
            rss = self.rss_mb()
            self.peak_mb = max(self.peak_mb, rss)
            if rss > RSS_CAP_MB:
                self.capped = True
                self.process.kill()
            time.sleep(0.05)

    def call(  # bodies as JSON values, the content type returned too
        self, path: str, body: Any = None, raw: bytes | None = None, timeout: float = 120
    ) -> tuple[int, str, str]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        request = urllib.request.Request(self.url + path, data, {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return (
                    response.status,
                    response.headers.get("content-type", ""),
                    response.read().decode("utf-8", "replace"),
                )
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers.get("content-type", ""), exc.read().decode("utf-8", "replace")
        except (OSError, urllib.error.URLError) as exc:
            return 0, "", f"no answer ({type(exc).__name__})"

    def tracebacks(self) -> int:
        return self.err.read_text(encoding="utf-8", errors="replace").count("Traceback")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(timeout=10)


def _open(port: int, body: dict[str, Any], path: str = "/v1/completions") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=120)
    data = json.dumps(body).encode()
    # Connection: close, so reading to the end stops at the answer's end, not at the server's keep-alive timeout
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n"
        "Connection: close\r\n\r\n"
    )
    sock.sendall(head.encode() + data)
    return sock


def _await_chunks(sock: socket.socket, chunks: int) -> None:
    """Read a streamed answer until `chunks` server-sent events have arrived (a client about to leave)."""
    seen = b""
    while seen.count(b"data: ") < chunks:
        seen += sock.recv(65536)


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except OSError:  # a reset ends the answer as a close does; what arrived is what the client got
        return data
    return data


def _short(status: int, kind: str, text: str) -> str:
    try:
        error = json.loads(text).get("error")
        message = error.get("message") if isinstance(error, dict) else error
    except (ValueError, AttributeError):
        message = None
    shown = message if message is not None else ("(text/plain) " if "json" not in kind else "") + text[:40]
    return f"{status} {str(shown)[:80]!s}".replace("\n", " ")


def _timed(call: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    result = call()
    return result, time.perf_counter() - started


class _Rows(list[tuple[str, str, str]]):
    """The table's rows, each also printed to stderr as it comes (a case that hangs leaves the others)."""

    def append(self, row: tuple[str, str, str]) -> None:
        print(" | ".join(row), file=sys.stderr, flush=True)
        super().append(row)


def cases(source: Path, package: Path, hostile: Path, work: Path) -> list[tuple[str, str, str]]:
    """Each row's request against a server of `source`: (row, case, answer)."""
    rows = _Rows()
    help_text = subprocess.run(
        [sys.executable, "-c", ENTRY, "serve", "--help"], env={**os.environ, "PYTHONPATH": str(source)},
        capture_output=True, text=True, timeout=120, cwd=work,
    ).stdout  # fmt: skip
    server = Server(source, [package, hostile], [], work / "main")
    completions = "/v1/completions"

    # row 1
    body = {"model": NAME, "prompt": "hello there", "max_tokens": 2000, "temperature": 0, "stream": True}
    streams = [_open(server.port, body) for _ in range(32)]
    for sock in streams:
        _await_chunks(sock, 3)
    for sock in streams:
        sock.close()
    (status, _kind, _text), took = _timed(
        lambda: server.call(completions, {"model": NAME, "prompt": "hi", "max_tokens": 8})
    )
    metrics = server.call("/metrics")[2]
    cancelled = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith(("edge_abandoned_rows_total{", "edge_timed_out_rows_total{"))
    )
    rows.append(
        (
            "1",
            "8-token request after 32 abandoned 2000-token streams",
            f"{status} after {took:.2f} s; /metrics cancelled rows: {cancelled:g}",
        )
    )

    # rows 2 and 15
    bad = [
        ("'model': []", completions, {"model": [], "prompt": "hi"}),
        ("'seed': -1", completions, {"model": NAME, "prompt": "hi", "seed": -1, "max_tokens": 2}),
        (
            "'stream_options': 'yes'",
            completions,
            {"model": NAME, "prompt": "hi", "stream_options": "yes", "max_tokens": 2},
        ),
        (
            "lone surrogate in the prompt",
            completions,
            {"model": NAME, "prompt": "hi \ud800", "max_tokens": 2},
        ),
        (
            "lone surrogate in chat content",
            "/v1/chat/completions",
            {"model": NAME, "messages": [{"role": "user", "content": "a\udfff"}], "max_tokens": 2},
        ),
        (
            "'role': 5",
            "/v1/chat/completions",
            {"model": NAME, "messages": [{"role": 5, "content": "hi"}], "max_tokens": 2},
        ),
        (
            "Triton 'seed': -1",
            f"/v2/models/{NAME}/generate",
            {"text_input": "hi", "parameters": {"seed": -1, "max_tokens": 2}},
        ),
        (
            "'stream': 'false'",
            completions,
            {"model": NAME, "prompt": "hi", "stream": "false", "max_tokens": 2},
        ),
    ]
    for label, path, payload in bad:
        before = server.tracebacks()
        status, kind, text = server.call(path, raw=json.dumps(payload).encode())
        time.sleep(0.2)
        rows.append(
            (
                "2" if "stream'" not in label else "15",
                label,
                _short(status, kind, text) + ("; traceback logged" if server.tracebacks() > before else ""),
            )
        )
    for constant in ("NaN", "Infinity"):
        raw = f'{{"model": "{NAME}", "prompt": "hi", "max_tokens": 4, "temperature": {constant}}}'.encode()
        status, kind, text = server.call(completions, raw=raw)
        rows.append(("15", f"'temperature': {constant}", _short(status, kind, text)))

    # row 3
    for path in ("/v2/health/ready", "/metrics"):
        status, kind, _text = server.call(path)
        rows.append(("3", f"GET {path} (generate package alone)", f"{status} {kind.split(';')[0]}"))
    metrics = server.call("/metrics")[2]
    rows.append(
        (
            "3",
            "/v1 requests in /metrics",
            "counted" if f'model="{NAME}"' in metrics and "edge_requests_total" in metrics else "not counted",
        )
    )

    # row 4
    rss = server.rss_mb()
    probe: list[float] = []

    def health() -> None:
        while not done.is_set():
            (_s, took_probe) = _timed(lambda: server.call("/v2/health/live", timeout=60))
            probe.append(took_probe)
            time.sleep(0.05)

    done = threading.Event()
    watcher = threading.Thread(target=health)
    watcher.start()
    (status, kind, text), took = _timed(
        lambda: server.call(completions, {"model": NAME, "prompt": "x" * 8_000_000})
    )
    done.set()
    watcher.join()
    rows.append(
        (
            "4",
            "8 MB prompt",
            f"{_short(status, kind, text)} after {took:.2f} s; +{server.peak_mb - rss:.0f} MB peak; slowest health probe {max(probe, default=0):.2f} s",
        )
    )

    # row 11
    greedy = server.call(
        completions, {"model": NAME, "prompt": "The quick brown fox", "max_tokens": 16, "temperature": 0}
    )
    tiny = server.call(
        completions, {"model": NAME, "prompt": "The quick brown fox", "max_tokens": 16, "temperature": 1e-300}
    )
    same = (
        tiny[0] == 200
        and json.loads(tiny[2])["choices"][0]["text"] == json.loads(greedy[2])["choices"][0]["text"]
    )
    rows.append(
        (
            "11",
            "'temperature': 1e-300",
            f"{tiny[0]}, {'the same text as greedy' if same else 'not the greedy text'}",
        )
    )

    # row 12
    alone = _timed(
        lambda: server.call(completions, {"model": NAME, "prompt": "hi", "max_tokens": 64, "temperature": 0})
    )[1]
    with ThreadPoolExecutor(2) as pool:
        heavy = pool.submit(
            lambda: _timed(
                lambda: server.call(
                    completions,
                    {"model": NAME, "prompt": "hi", "max_tokens": 64, "stop": ["q" * 40] * 10_000},
                )
            )
        )
        time.sleep(0.3)
        shared = _timed(
            lambda: server.call(
                completions, {"model": NAME, "prompt": "hi", "max_tokens": 64, "temperature": 0}
            )
        )[1]
        (heavy_answer, heavy_s) = heavy.result()
    rows.append(
        (
            "12",
            "10,000 stop strings of 40 chars",
            f"{_short(*heavy_answer)} after {heavy_s:.2f} s; a 64-token neighbour {shared:.2f} s (alone {alone:.2f} s)",
        )
    )

    # row 14
    rss = server.rss_mb()
    server.peak_mb = rss
    (status, kind, text), took = _timed(
        lambda: server.call(
            "/v1/chat/completions",
            {"model": "hostile-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
            timeout=60,
        )
    )
    capped = " (stopped at the 2 GB cap)" if server.capped else ""
    rows.append(
        (
            "14",
            "template {{ messages|tojson(indent=10**9) }}",
            f"{_short(status, kind, text)} after {took:.2f} s; +{server.peak_mb - rss:.0f} MB peak{capped}",
        )
    )
    server.stop()

    # row 10
    if "--shutdown-timeout-s" in help_text:
        args = ["--timeout-ms", "0", "--shutdown-timeout-s", "2"]
    else:  # the grace period is --timeout-ms + 5 s; generation has no deadline
        args = ["--timeout-ms", "1000"]
    server = Server(source, [package], args, work / "sigterm")
    body = {"model": NAME, "prompt": "hello there", "max_tokens": 2000, "temperature": 0}
    socks = [_open(server.port, {**body, "stream": True}) for _ in range(8)] + [
        _open(server.port, body) for _ in range(24)
    ]
    time.sleep(1.0)
    server.process.send_signal(signal.SIGTERM)
    answers = [_read_all(sock) for sock in socks]
    code = server.process.wait(timeout=120)
    ended = sum(
        b'"finish_reason": "' in a.split(b"data: [DONE]")[0][-400:] and b"data: [DONE]" in a
        for a in answers[:8]
    )
    statuses: dict[str, int] = {}
    for answer in answers[8:]:
        head = answer.split(b"\r\n", 1)[0].decode(errors="replace")[9:12] or "none"
        kind = "json" if b"application/json" in answer[:400] else "text"
        key = f"{head} {kind}"
        statuses[key] = statuses.get(key, 0) + 1
    log = server.err.read_text(encoding="utf-8", errors="replace")
    last = [line for line in log.splitlines() if line.startswith("stopped")]
    rows.append((
        "10", "SIGTERM with 8 streams and 24 requests running past the grace period",
        f"{ended}/8 streams end with finish_reason and [DONE]; others: {statuses}; exit {code}; "
        f"{log.count('Traceback')} tracebacks, {len(log.splitlines())} log lines; says: {(last or ['-'])[-1][:90]}",
    ))  # fmt: skip
    return rows


def soak(source: Path, package: Path, work: Path, total: int) -> None:
    """`total` streamed completions from 16 threads, every fourth client leaving after 3 chunks."""
    server = Server(source, [package], [], work / "soak")
    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(total))
    rss_lines: list[str] = [f"{0:>5} requests: {server.rss_mb():.0f} MB"]

    def client() -> None:
        for index in counter:
            body = {
                "model": NAME,
                "prompt": f"request {index}: the lazy dog " * (index % 5 + 1),
                "max_tokens": 32,
                "stream": True,
                "temperature": 0,
            }
            leaves = index % 4 == 3
            started = time.perf_counter()
            sock = _open(server.port, body)
            if leaves:
                _await_chunks(sock, 3)
                sock.close()
            else:
                answer = _read_all(sock)
                sock.close()
                if b"data: [DONE]" not in answer:
                    raise RuntimeError(f"request {index}: {answer[-200:]!r}")
                with lock:
                    latencies.append(time.perf_counter() - started)
            if (index + 1) % 250 == 0:
                with lock:
                    rss_lines.append(f"{index + 1:>5} requests: {server.rss_mb():.0f} MB")

    started = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        for future in [pool.submit(client) for _ in range(16)]:
            future.result()
    wall = time.perf_counter() - started
    metrics = server.call("/metrics")[2]
    cancelled = [
        line
        for line in metrics.splitlines()
        if line.startswith(("edge_abandoned_rows_total{", "edge_timed_out_rows_total{"))
    ]
    server.stop()
    latencies.sort()
    print(
        f"soak: {total} streamed completions (max_tokens 32), 16 clients, every 4th leaves after 3 chunks; {wall:.1f} s"
    )
    print("\n".join(sorted(rss_lines, key=lambda line: int(line.split()[0]))))
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    print(f"{len(latencies)} stayed: p50 {statistics.median(latencies) * 1e3:.0f} ms, p99 {p99 * 1e3:.0f} ms")
    print("cancelled rows:", "; ".join(cancelled) or "none counted")


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:  # no /proc: not Linux
        return platform.processor() or platform.machine()
    return platform.processor() or platform.machine()


def main() -> None:
    """Print the table of cases (or the soak's figures) for one source tree."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--source", type=Path, default=ROOT, help="the source tree to run (default: this checkout)"
    )
    parser.add_argument(
        "--soak", type=int, default=0, help="run the soak of this many streamed completions instead"
    )
    args = parser.parse_args()
    source = args.source.resolve()
    print(f"CPU: {_cpu()}, {os.cpu_count()} cores; source {source}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="generate-hardening-") as folder:
        work = Path(folder)
        os.chdir(work)  # `python -c` puts the working directory first on sys.path: keep checkouts off it
        package = build_package(source, work / "build")
        if args.soak:
            soak(source, package, work, args.soak)
            return
        rows = cases(source, package, hostile_copy(package, work), work)
    print(f"| row | case | answer ({source}) |\n|---|---|---|")
    for row, case, answer in rows:
        print(f"| {row} | {case} | {answer.replace('|', '/')} |")


if __name__ == "__main__":
    main()
