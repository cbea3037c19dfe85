"""`edge serve` as a subprocess on 127.0.0.1 (port 0), for every test module that talks to a real server."""

from __future__ import annotations

import json
import os
import re
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STARTUP_S = 120.0


@dataclass
class ServeProcess:
    """A running `edge serve` process, its base URL and its stderr log."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path
    context: ssl.SSLContext | None = None

    @property
    def address(self) -> str:
        return self.url.split("://", 1)[1]

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def stop(self) -> int:
        """SIGTERM (a graceful drain), then SIGKILL if it is still running after 60 s; the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(timeout=10)


def start_serve(
    packages: Sequence[Path],
    args: Sequence[str],
    folder: Path,
    env: dict[str, str] | None = None,
    context: ssl.SSLContext | None = None,
) -> ServeProcess:
    """Start `edge serve PACKAGES --port 0 ARGS`, logging into `folder`; returns once it prints its URL."""
    folder.mkdir(parents=True, exist_ok=True)
    out, err = folder / "stdout.txt", folder / "stderr.txt"
    command = [sys.executable, "-c", "from toolkit.cli import main; main()", "serve"]
    command += [str(p) for p in packages] + ["--port", "0", *args]
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr, env={**os.environ, **(env or {})})
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        text = out.read_text(encoding="utf-8")
        if "serving on " in text:
            return ServeProcess(process, text.split("serving on ", 1)[1].split()[0], err, context)
        if process.poll() is not None:
            break
        time.sleep(0.1)
    process.kill()
    raise AssertionError(f"edge serve did not start: {err.read_text(encoding='utf-8')}")


def post_json(url: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    """POST `body` (JSON, or bytes as they are) to `url`: the status and the JSON answer, errors included."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json", **(headers or {})}
    )
    return _json_answer(request)


def get_json(url: str) -> tuple[int, Any]:
    """GET `url`: the status and the JSON answer, errors included."""
    return _json_answer(urllib.request.Request(url))


def _json_answer(request: urllib.request.Request) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def metric_sum(server: ServeProcess, name: str, model: str) -> float:
    """The sum of the server's /metrics samples `name` labelled with `model`."""
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=30) as response:
        text = response.read().decode()
    pattern = rf'^{name}\{{[^}}]*model="{re.escape(model)}"[^}}]*\}} (\S+)$'
    return sum(float(v) for v in re.findall(pattern, text, re.MULTILINE))
