"""Issue 14's cases against one source tree: what each answers, as a Markdown table.

Runs every case in subprocesses with ``PYTHONPATH=SOURCE`` (default: this checkout), so the same script
gives the table before and after a change (point it at an extracted older tree). Needs a converted MiniLM
package (``edge convert minilm -o out/minilm``); everything it writes goes under a temporary folder.

    python benchmarks/hardening_cases.py out/minilm                      # this checkout
    python benchmarks/hardening_cases.py out/minilm --source /tmp/base   # another tree

Figures (seconds, MB of server RSS) are from this machine and this run; they are not test assertions.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
ENTRY = "from toolkit.cli import main; main()"


def _env(source: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(source), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _edge(source: Path, *args: str, timeout: float = 300) -> str:
    done = subprocess.run(
        [sys.executable, "-c", ENTRY, *args],
        env=_env(source),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    traceback = any(line.startswith("Traceback") for line in lines)
    last = lines[-1][:110] if lines else ""
    return f"exit {done.returncode}{', traceback' if traceback else ''}: {last}"


def _package(base: Path, folder: Path, edit: Any = None) -> Path:
    copy = Path(shutil.copytree(base, folder, symlinks=True))
    if edit is not None:
        data = json.loads((copy / "edge.json").read_text(encoding="utf-8"))
        edit(data, copy)
        (copy / "edge.json").write_text(json.dumps(data), encoding="utf-8")
    return copy


def cli_cases(source: Path, minilm: Path, work: Path) -> list[tuple[str, str]]:
    """Broken packages through `edge info` / `edge run`."""
    rows = []

    def symlink(_data: dict[str, Any], folder: Path) -> None:
        (folder / "model.onnx").unlink()
        (folder / "model.onnx").symlink_to("/etc/passwd")

    def variant(data: dict[str, Any], _folder: Path) -> None:
        data["variants"]["other"] = {
            **data["variants"]["fp32"],
            "name": "other",
            "file": "../other/model.onnx",
        }

    shutil.copytree(minilm, work / "other")
    cases = [
        ("symlinked model.onnx -> /etc/passwd: edge info", symlink, ["info"]),
        (
            "variant file ../other/model.onnx: edge info --variant other",
            variant,
            ["info", "--variant", "other"],
        ),
        (
            "tokenizer /etc/passwd: edge run --text",
            lambda d, f: d["preprocessing"].__setitem__("tokenizer", "/etc/passwd"),
            ["run", "--text", "hi"],
        ),
        ('"variants": []: edge info', lambda d, f: d.__setitem__("variants", []), ["info"]),
        (
            "max_length -1: edge run --text",
            lambda d, f: d["preprocessing"].__setitem__("max_length", -1),
            ["run", "--text", "hi"],
        ),
        (
            "tokenizer.json not a tokenizer: edge run --text",
            lambda d, f: (f / "tokenizer.json").write_text("{}"),
            ["run", "--text", "hi"],
        ),
    ]
    for index, (what, edit, args) in enumerate(cases):
        package = _package(minilm, work / f"case{index}", edit)
        rows.append((what, _edge(source, args[0], str(package), *args[1:])))
    package = _package(minilm, work / "utf8")
    (package / "edge.json").write_bytes(b'{"format": 1, "name": "\xff"}')
    rows.append(("non-UTF-8 edge.json: edge info", _edge(source, "info", str(package))))
    return rows


def _staging(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.endswith((".staging", ".tmp"))]


def _size_mb(paths: list[Path]) -> float:
    total = 0
    for path in paths:
        files = path.rglob("*") if path.is_dir() else [path]
        total += sum(f.stat().st_size for f in files if f.is_file())
    return total / 1e6


def interrupt_cases(source: Path, minilm: Path, work: Path) -> list[tuple[str, str]]:
    """`edge quantize` killed while it stages its file."""
    rows = []
    for sig in (signal.SIGTERM, signal.SIGKILL):
        package = _package(minilm, work / f"quantize-{sig.name}")
        process = subprocess.Popen(
            [sys.executable, "-c", ENTRY, "quantize", str(package)],
            env=_env(source),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while not _staging(package) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        process.send_signal(sig)
        code = process.wait(timeout=120)
        left = _staging(package)
        answer = f"exit {code}, staging left: {len(left)} ({_size_mb(left):.0f} MB)"
        if sig == signal.SIGKILL:
            subprocess.run([sys.executable, "-c", ENTRY, "quantize", str(package)], env=_env(source), capture_output=True, timeout=600)  # fmt: skip
            answer += f"; after the next quantize: {sum(p.exists() for p in left)} of them left"
        rows.append((f"{sig.name} during edge quantize", answer))
    return rows


API_SNIPPET = """
import json, numpy as np, toolkit
model = toolkit.load(PACKAGE)
runner = model.runner
feeds = {"input_ids": np.array([[101, 2000, 102]]), "attention_mask": np.ones((1, 3), np.int64),
         "token_type_ids": np.zeros((1, 3), np.int64)}
def attempt(call):
    try:
        value = call()
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc)[:70]}"
    return f"returned {getattr(value, 'shape', None) or sorted(value)}"
print(json.dumps({
    "embed(generator of 3 texts)": attempt(lambda: model.embed(t for t in ["a", "b", "c"])),
    "embed(None)": attempt(lambda: model.embed(None)),
    "embed(123)": attempt(lambda: model.embed(123)),
    "Runner.run(ragged lists)": attempt(lambda: runner.run({**feeds, "input_ids": [[101, 2000], [101]]})),
    "Runner.run(a list, not a mapping)": attempt(lambda: runner.run([feeds["input_ids"]])),
    'Runner.run(feeds, outputs="last_hidden_state")': attempt(lambda: runner.run(feeds, outputs="last_hidden_state")),
}))
"""


def api_cases(source: Path, minilm: Path) -> list[tuple[str, str]]:
    """The pipelines and Runner.run given the wrong things."""
    code = API_SNIPPET.replace("PACKAGE", repr(str(minilm)))
    done = subprocess.run(
        [sys.executable, "-c", code], env=_env(source), capture_output=True, text=True, timeout=300
    )
    if done.returncode != 0:
        return [("API cases", f"script failed: {done.stderr.strip().splitlines()[-1]}")]
    return list(json.loads(done.stdout.strip().splitlines()[-1]).items())


class _Server:
    def __init__(self, source: Path, packages: list[Path], args: list[str], work: Path) -> None:
        self.out = work / "serve.out"
        self.err = work / "serve.err"
        command = [sys.executable, "-c", ENTRY, "serve", *map(str, packages), "--port", "0", *args]
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.process = subprocess.Popen(command, env=_env(source), stdout=out, stderr=err)
        deadline = time.monotonic() + 120
        while "serving on " not in self.out.read_text(encoding="utf-8"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(self.err.read_text(encoding="utf-8"))
            time.sleep(0.1)
        self.url = self.out.read_text(encoding="utf-8").split("serving on ", 1)[1].split()[0]
        self.port = int(self.url.rsplit(":", 1)[1])

    def rss_mb(self) -> float:
        return psutil.Process(self.process.pid).memory_info().rss / 2**20

    def call(
        self, method: str, path: str, body: bytes | None = None, timeout: float = 120
    ) -> tuple[int, str]:
        request = urllib.request.Request(self.url + path, data=body, method=method, headers={"Content-Type": "application/json"})  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, response.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode("utf-8", "replace")

    def metric(self, code: str) -> float:
        _, text = self.call("GET", "/metrics")
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("edge_requests_total{") and f'code="{code}"' in line
        )

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()


def _texts(texts: list[str]) -> bytes:
    return json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}]}).encode()  # fmt: skip


def _ids(rows: list[list[int]], shape: list[int] | None = None) -> bytes:
    flat = [v for row in rows for v in row]
    shape = shape or [len(rows), len(rows[0])]
    inputs = [
        {"name": n, "datatype": "INT64", "shape": shape, "data": data}
        for n, data in (
            ("input_ids", flat),
            ("attention_mask", [1] * len(flat)),
            ("token_type_ids", [0] * len(flat)),
        )
    ]
    return json.dumps({"inputs": inputs}).encode()


def _answer(status: int, text: str) -> str:
    try:
        message = json.loads(text).get("error", "")
    except (ValueError, AttributeError):
        message = f"(not JSON) {text[:40]!r}"
    return f"{status} {message[:90]}".strip()


def _slow(server: _Server, path: str, wait: float) -> str:
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n".encode() + b'{"inputs": [')  # fmt: skip
    sock.settimeout(wait)
    started = time.perf_counter()
    try:
        response = http.client.HTTPResponse(sock)
        response.begin()
        return f"{response.status} after {time.perf_counter() - started:.1f} s"
    except TimeoutError:
        return f"no answer after {wait:.0f} s"
    finally:
        sock.close()


def server_cases(source: Path, minilm: Path, work: Path) -> list[tuple[str, str]]:
    """One `edge serve` of MiniLM with default limits (80 MB bodies, for the large-body case)."""
    name = json.loads((minilm / "edge.json").read_text(encoding="utf-8"))["name"]
    server = _Server(source, [minilm], ["--max-body-mb", "80"], work)
    text_path, raw_path = f"/v2/models/{name}-text/infer", f"/v2/models/{name}/infer"
    rows = []
    try:
        long_text = " ".join(["word"] * 300)
        for what, texts in (("256 texts x 256 tokens (389 KB)", [long_text] * 256), ("20,000 empty strings", [""] * 20_000)):  # fmt: skip
            before, started = server.rss_mb(), time.perf_counter()
            status, text = server.call("POST", text_path, _texts(texts))
            seconds = time.perf_counter() - started
            rows.append(
                (
                    what,
                    f"{_answer(status, text)[:60]} in {seconds:.1f} s, RSS +{server.rss_mb() - before:.0f} MB",
                )
            )
        for what, body in (
            ('BYTES "\\ud800"', b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["\\ud800"]}]}'),
            ("input name with a lone surrogate", b'{"inputs": [{"name": "\\udfff", "datatype": "BYTES", "shape": [1], "data": ["x"]}]}'),
            ("100,000 nested [", b"[" * 100_000),
        ):  # fmt: skip
            errors_500 = server.metric("500")
            status, text = server.call("POST", text_path, body)
            rows.append(
                (what, f"{_answer(status, text)} (500s counted: +{server.metric('500') - errors_500:.0f})")
            )
        rows.append(
            (
                "negative token id [[101, -5, 102]]",
                _answer(*server.call("POST", raw_path, _ids([[101, -5, 102]]))),
            )
        )
        rows.append(("shape [1, 0]", _answer(*server.call("POST", raw_path, _ids([[]], [1, 0])))))
        status, text = server.call("POST", raw_path, _ids([[101] + [2000] * 600 + [102]]))
        rows.append(
            (
                "602 tokens (past 512 positions): has '/onnxruntime' or 'Name:'",
                f"{status} {'yes' if '/onnxruntime' in text or 'Name:' in text else 'no'}",
            )
        )
        rows.append(("body shorter than Content-Length", _slow(server, raw_path, 40)))
        # a client gone mid-upload
        codes = {code: server.metric(code) for code in ("499", "500")}
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(f"POST {raw_path} HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n".encode() + b"{")
        time.sleep(0.3)
        sock.close()
        time.sleep(1.0)
        rows.append(
            (
                "client disconnects mid-upload",
                ", ".join(f"{c}: +{server.metric(c) - n:.0f}" for c, n in codes.items()),
            )
        )
        # a ~60 MB JSON body; the worst /v2/health/live latency while it is read and parsed
        body = _ids([[7] * 1_700_000] * 4)
        latencies: list[float] = []
        done = threading.Event()

        def probe() -> None:
            while not done.is_set():
                started = time.perf_counter()
                server.call("GET", "/v2/health/live")
                latencies.append(time.perf_counter() - started)
                time.sleep(0.05)

        thread = threading.Thread(target=probe)
        thread.start()
        status, text = server.call("POST", raw_path, body)
        done.set()
        thread.join()
        rows.append(
            (
                f"{len(body) / 1e6:.0f} MB JSON body",
                f"{_answer(status, text)[:50]}; worst /v2/health/live {max(latencies):.2f} s",
            )
        )
        status, _ = server.call("GET", "/v2")
        rows.append(("GET /v2 with no credentials", f"{status}"))
    finally:
        server.stop()
    rows.append(
        (
            "--api-key option",
            _edge(source, "serve", str(minilm), "--port", "0", "--api-key", "x" * 8, timeout=120),
        )
    )
    return rows


def main() -> None:
    """Print the table of cases for one source tree."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", type=Path, help="a converted MiniLM package (edge convert minilm -o DIR)")
    parser.add_argument(
        "--source", type=Path, default=ROOT, help="the source tree to test (default: this checkout)"
    )
    args = parser.parse_args()
    package, source = args.package.resolve(), args.source.resolve()
    with tempfile.TemporaryDirectory(prefix="hardening-") as folder:
        work = Path(folder)
        os.chdir(work)  # `python -c` puts the working directory first on sys.path: keep checkouts off it
        rows = []
        for group, run in (
            ("cli", lambda: cli_cases(source, package, work / "cli")),
            ("api", lambda: api_cases(source, package)),
            ("server", lambda: server_cases(source, package, work)),
            ("interrupts", lambda: interrupt_cases(source, package, work / "interrupts")),
        ):
            (work / "cli").mkdir(exist_ok=True)
            (work / "interrupts").mkdir(exist_ok=True)
            for case, answer in run():
                rows.append((group, case, answer))
                print(f"{group:<10} {case:<60} {answer}", file=sys.stderr, flush=True)
    print(f"| group | case | answer ({source}) |\n|---|---|---|")
    for group, case, answer in rows:
        print(f"| {group} | {case} | {answer.replace('|', '/')} |")


if __name__ == "__main__":
    main()
